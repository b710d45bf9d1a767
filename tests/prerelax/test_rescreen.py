"""Re-screening with a newly promoted model: single points, re-relaxation, next selection."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _si(kind: str, a: float):
    from pymatgen.core import Lattice, Structure

    if kind == "diamond":
        s = Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"], [[0, 0, 0]])
        return s.get_primitive_structure()
    if kind == "sc":
        return Structure(Lattice.cubic(a), ["Si"], [[0, 0, 0]])
    return Structure(Lattice.cubic(a), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # bcc


def test_rescreen_relaxes_the_new_best_and_feeds_the_next_selection(db):
    from cspflow.mlip import load_model
    from cspflow.prerelax.select import select_candidates
    from cspflow.rescreen import rescreen_candidates, rescreen_job
    from cspflow.testing import insert_candidate

    # the old model ranked simple cubic first and diamond last (a wrong potential)
    rows = [
        ("sc", 2.55, -5.9),
        ("bcc", 3.08, -5.8),
        ("diamond", 5.50, -5.2),
        ("diamond", 5.38, -5.1),
    ]
    ids = []
    for kind, a, e in rows:
        s = _si(kind, a)
        cid = insert_candidate(db, s, status="prerelaxed", mlip_energy=e, mlip_structure=s,
                               campaign="rs", iteration=0)  # fmt: skip
        db.candidates.update_one({"candidate_id": cid}, {"$set": {"relaxed.mlip.model_id": "mace-old",
                                                                  "duplicate_of": None}})  # fmt: skip
        ids.append(cid)
    # not re-screened: a candidate with DFT, a duplicate, one of another campaign running now
    db.campaigns.insert_many([{"name": "rs", "state": "running"}, {"name": "busy", "state": "running"},
                              {"name": "old", "state": "completed"}])  # fmt: skip
    skip = [insert_candidate(db, _si("diamond", 5.45), status=st, mlip_energy=-5.0,
                             mlip_structure=_si("diamond", 5.45), campaign=camp)
            for st, camp in (("dft_done", "rs"), ("prerelaxed", "rs"), ("prerelaxed", "busy"))]  # fmt: skip
    # re-screened too: a candidate of an earlier (completed) campaign of the system
    old = insert_candidate(db, _si("bcc", 3.2), status="prerelaxed", mlip_energy=-5.95,
                           mlip_structure=_si("bcc", 3.2), campaign="old")  # fmt: skip
    db.candidates.update_one({"candidate_id": old}, {"$set": {"duplicate_of": None,
                                                              "relaxed.mlip.model_id": "mace-old"}})  # fmt: skip
    db.candidates.update_one(
        {"candidate_id": skip[0]}, {"$set": {"relaxed.dft": {"status": "converged"}}}
    )
    db.candidates.update_one({"candidate_id": skip[1]}, {"$set": {"duplicate_of": ids[0]}})
    for cid in skip[2:]:
        db.candidates.update_one({"candidate_id": cid}, {"$set": {"duplicate_of": None}})

    out = rescreen_candidates(db, "rs", "chgnet", next_iteration=1, top=2,
                              prerelax={"max_steps": 150}, chemsys="Si")  # fmt: skip
    chgnet_id = load_model("chgnet", device="cpu").model_id
    assert out["model_id"] == chgnet_id and out["n_single_points"] == 5
    assert out["n_other_campaigns"] == 1
    # CHGNet puts the two diamonds lowest: they are relaxed again and join iteration 1
    assert sorted(out["relaxed"]) == sorted(ids[2:]) and not out["failed"]
    # the old model's best of the system was the earlier campaign's bcc (-5.95 eV/atom)
    assert out["best"]["Si"] == {"old_best": old, "new_best": out["best"]["Si"]["new_best"]}
    kept = db.candidates.find_one({"candidate_id": old})
    (entry,) = kept["screenings"]  # one round, one entry
    assert entry["campaign"] == "rs" and entry["joins_iteration"] is None
    assert kept["campaign"] == "old"  # the owner stays the campaign that generated it
    assert entry["single_point_energy_per_atom"] > min(
        db.candidates.find_one({"candidate_id": c})["screenings"][-1]["single_point_energy_per_atom"]
        for c in ids[2:])  # fmt: skip
    assert kept["relaxed"]["mlip"]["model_id"] == "mace-old"  # single point only: not relaxed
    assert out["best"]["Si"]["new_best"] in ids[2:] and out["best_changed"] == ["Si"]
    for cid in ids:
        d = db.candidates.find_one({"candidate_id": cid})
        (entry,) = d["screenings"]
        assert entry["model_id"] == chgnet_id and entry["previous_model_id"] == "mace-old"
        assert entry["single_point_energy_per_atom"] < -4
        relaxed_again = cid in out["relaxed"]
        assert (d["relaxed"]["mlip"]["model_id"] == chgnet_id) is relaxed_again
        assert (entry["joins_iteration"] == 1) is relaxed_again
        assert entry["relaxed"] is relaxed_again
    for cid in skip:
        assert not db.candidates.find_one({"candidate_id": cid}).get("screenings")
    # iteration 1's selection sees them next to its own (here: no new) candidates
    # (the two diamonds relax into one structure: the higher copy is a duplicate, left out)
    unique = [
        c
        for c in out["relaxed"]
        if db.candidates.find_one({"candidate_id": c}).get("duplicate_of") is None
    ]
    assert len(unique) == 1
    picked = select_candidates("rs", 1, top_k=5, energy_window=1.0, db=db)
    assert picked.selected == unique
    print(f"re-screened {out['n_single_points']} candidates; relaxed again {len(out['relaxed'])}")

    # a re-relaxation that fails (here: not converged in 1 step) joins no selection, and the
    # candidate still says which model's relaxation it now holds
    again = rescreen_candidates(db, "rs", "chgnet", next_iteration=2, top=1,
                                prerelax={"max_steps": 1}, chemsys="Si")  # fmt: skip
    assert not again["relaxed"] and len(again["failed"]) == 1, again
    (bad,) = again["failed"]
    d = db.candidates.find_one({"candidate_id": bad})
    # append-only: the first round's single point stays, the failed relaxation is added
    assert len(d["screenings"]) == 2 and not d["screenings"][0]["relaxed"]
    assert [e["model_id"] for e in d["screenings"] if e["relaxed"]] == [chgnet_id]
    assert d["screenings"][-1]["joins_iteration"] is None

    # a round that promoted nothing re-screens nothing and says why
    from jobflow import run_locally

    j = rescreen_job({"promoted": False, "reason": "does not beat chgnet"}, "rs", 1)
    res = run_locally(j, log=False, ensure_success=True)
    assert res[j.uuid][1].output == {"skipped": "does not beat chgnet", "relaxed": []}
