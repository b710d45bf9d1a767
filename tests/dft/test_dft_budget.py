"""Which campaign's DFT budget a run counts against.

A candidate of campaign B that campaign A re-screened may still be sent to DFT by B, or by A
when A selects it. The run counts for the campaign that ran it, once.
"""

from __future__ import annotations

from jobflow import run_locally
from pymatgen.core import Lattice, Structure

from cspflow.dft.stage import DftStageMaker
from cspflow.schemas.dft import DftSpec
from cspflow.store import get_jobstore
from cspflow.store.candidate_stats import dft_runs
from cspflow.testing import insert_candidate


def _cu(shift: float) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.62), ["Cu"], [[0, 0, 0]])
    s.translate_sites([0], [shift, 0, 0])
    return s


def _rescreened_by(db, cid: str, campaign: str) -> None:
    from cspflow.schemas.candidate import ScreeningDoc
    from cspflow.store import candidates

    entry = ScreeningDoc(campaign=campaign, model_id="m", relaxed=True, joins_iteration=1)
    candidates.add_screenings(db, {cid: entry})


def test_a_dft_run_counts_for_the_campaign_that_ran_it(db, settings, tmp_path):
    from cspflow.store import migrate

    # no VASP command here: each run is recorded as failed at once, which still uses the budget
    own = insert_candidate(db, _cu(0.01), mlip_energy=-3.0, campaign="B")
    taken = insert_candidate(db, _cu(0.02), mlip_energy=-3.0, campaign="B")
    legacy = insert_candidate(db, _cu(0.03), mlip_energy=-3.0, campaign="B")
    for cid in (own, taken):
        _rescreened_by(db, cid, "A")
    store = get_jobstore(settings)
    for campaign, cid in (("B", own), ("A", taken)):
        stage = DftStageMaker(settings=DftSpec(engine="vasp", potcar_spec=True))
        run_locally(stage.make([cid], campaign=campaign), store=store, root_dir=tmp_path / campaign)
    # a result an earlier release wrote, before results named their campaign: A had
    # re-screened the candidate into its iteration 1 (that release's `rescreen` record)
    db.candidates.update_one({"candidate_id": legacy}, {"$set": {
        "relaxed.dft": {"status": "failed", "engine": "vasp"}, "schema_version": 1,
        "rescreen": {"campaign": "A", "iteration": 1, "model_id": "m"}}})  # fmt: skip
    migrate.upgrade(db, force=True)  # what opening that database with this release does

    ran = {c["candidate_id"]: c["relaxed"]["dft"].get("campaign") for c in db.candidates.find()}
    print(f"\nrelaxed.dft.campaign: {ran}; dft_runs A={dft_runs(db, 'A')} B={dft_runs(db, 'B')}")
    # own: B only; taken: A only; legacy: named for A, which selected it; each counted once
    assert ran == {own: "B", taken: "A", legacy: "A"}
    assert dft_runs(db, "B") == 1
    assert dft_runs(db, "A") == 2
    assert dft_runs(db, "C") == 0
    assert db.candidates.find_one({"candidate_id": legacy})["screenings"][0]["joins_iteration"] == 1
