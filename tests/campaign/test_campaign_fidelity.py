"""Two campaigns of one system on one database at two functionals (GPAW PBE, then LDA).

The LDA campaign generates the same structures as the PBE one (deduplicated: no new
candidate) and still runs its own DFT on them; each campaign gets a hull of its own fidelity
built from its own entries only, training frames and DFT duplicates never cross fidelities,
and ``results hull|top`` name and select the fidelity.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.gpaw]

BASE = {
    "compositions": ["Si"],
    "max_atoms": 2,
    "generate": {"per_iteration": 3, "sources": {"prototype": 1.0}, "seed": 3},
    "prerelax": {"model": "chgnet", "max_steps": 150, "batch_size": 4},
    "select": {"top_k": 2, "energy_window": 0.5},
    "stop": {"max_iterations": 1},
}
PBE = {**BASE, "name": "si-pbe", "dft": {"engine": "gpaw", "preset": "fast"}}
LDA = {**BASE, "name": "si-lda", "dft": {"engine": "gpaw", "preset": "fast", "gpaw": {"xc": "LDA"}}}


def _run(spec: dict, tmp_path, env) -> None:
    from cspflow.testing.cli import run_cli

    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_cli("campaign", "run", str(path), "--json", env=env, timeout=1200)


def test_pbe_then_lda_campaigns_keep_their_fidelities_apart(db, settings, tmp_path):
    from cspflow.learn.dataset import collect_frames
    from cspflow.schemas.candidate import CandidateDoc
    from cspflow.schemas.dft import DftSpec
    from cspflow.store import candidates, get_jobstore
    from cspflow.testing.cli import cli_env, run_cli

    env = cli_env(settings)
    pbe_key = DftSpec.model_validate(PBE["dft"]).fidelity().key
    lda_key = DftSpec.model_validate(LDA["dft"]).fidelity().key
    assert pbe_key.startswith("gpaw:PBE:fast:") and lda_key.startswith("gpaw:LDA:fast:")

    t0 = time.monotonic()
    _run(PBE, tmp_path, env)
    t_pbe = time.monotonic() - t0
    n_candidates = db.candidates.count_documents({})
    _run(LDA, tmp_path, env)
    t_lda = time.monotonic() - t0 - t_pbe
    print(f"\nPBE campaign {t_pbe:.0f} s, LDA campaign {t_lda:.0f} s")

    # the LDA campaign's generated structures were deduplicated against the PBE campaign's,
    # yet it ran its own DFT on the PBE campaign's candidates
    new_lda = db.candidates.count_documents({"campaign": "si-lda"})
    print(f"candidates: {n_candidates} after PBE, {new_lda} new of the LDA campaign")
    adopted = db.candidates.count_documents(
        {"campaign": "si-pbe", "relaxed.dft_by_fidelity.campaign": "si-lda"}
    )
    assert adopted >= 1
    lda_done = candidates.usable(db, "dft", fidelity=lda_key)
    pbe_done = candidates.usable(db, "dft", fidelity=pbe_key)
    assert lda_done and pbe_done
    both = {d["candidate_id"] for d in lda_done} & {d["candidate_id"] for d in pbe_done}
    assert both  # one structure, two levels of theory, both kept
    for cid in both:
        doc = candidates.get_many(db, [cid])[cid]
        e_pbe = candidates.energy_at(doc, "dft", pbe_key)
        e_lda = candidates.energy_at(doc, "dft", lda_key)
        assert e_pbe is not None and e_lda is not None
        assert e_lda < e_pbe - 0.3, (e_pbe, e_lda)  # LDA overbinds Si by ~0.5 eV/atom

    # two hulls, each from its own entries only
    hulls = {h["fidelity_key"]: h for h in db.hull.find({"chemsys": "Si"}, sort=[("version", 1)])}
    assert set(hulls) == {pbe_key, lda_key}
    for key, hull in hulls.items():
        for entry in hull["entries"]:
            doc = candidates.get_many(db, [entry["entry_id"]])[entry["entry_id"]]
            assert entry["energy_per_atom"] == candidates.energy_at(doc, "dft", key)
        assert hull["fidelity"]["key"] == key and hull["level"] == "dft"
    # the campaign records name the hull of their own fidelity
    for name, key in (("si-pbe", pbe_key), ("si-lda", lda_key)):
        camp = db.campaigns.find_one({"name": name})
        assert camp["iterations"][-1]["hull"]["fidelity_key"] == key

    # no DFT duplicate points across fidelities
    for doc in db.candidates.find({}, {"_id": 0}):
        CandidateDoc.model_validate(doc)
        for run in doc["relaxed"].get("dft_by_fidelity", []):
            if run.get("duplicate_of"):
                other = candidates.get_many(db, [run["duplicate_of"]])[run["duplicate_of"]]
                assert candidates.dft_result_at(other, run["fidelity"]["key"]) is not None

    # training frames of one fidelity carry that fidelity's labels only
    store = get_jobstore(settings)
    store.connect()
    try:
        for key in (pbe_key, lda_key):
            frames, _ = collect_frames(db, "Si", store=store, fidelity=key, ionic_steps=0)
            assert frames
            for atoms in frames:
                assert atoms.info["fidelity_key"] == key
                doc = candidates.get_many(db, [atoms.info["candidate_id"]])
                e = candidates.energy_at(doc[atoms.info["candidate_id"]], "dft", key)
                assert atoms.info["REF_energy"] / len(atoms) == pytest.approx(e, abs=1e-6)
    finally:
        store.close()

    # results: each campaign's own fidelity by default, --fidelity selects, unknown is one line
    for name, key in (("si-pbe", pbe_key), ("si-lda", lda_key)):
        hull = json.loads(run_cli("results", "hull", name, "--json", env=env).stdout)
        assert hull["fidelity_key"] == key
        top = json.loads(run_cli("results", "top", name, "--json", env=env).stdout)
        assert top["structures"] and all(r["fidelity_key"] == key for r in top["structures"])
    other = json.loads(
        run_cli("results", "hull", "si-pbe", "--fidelity", lda_key, "--json", env=env).stdout
    )
    assert other["fidelity_key"] == lda_key
    bad = subprocess.run(
        [sys.executable, "-m", "cspflow.cli.main", "results", "hull", "si-pbe", "--fidelity",
         "gpaw:XX"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: no Si hull at fidelity 'gpaw:XX'")
    assert pbe_key in bad.stderr and lda_key in bad.stderr
