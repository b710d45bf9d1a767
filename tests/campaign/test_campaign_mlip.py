"""An MLIP-only campaign (dft engine none) through FireWorks, then extended by one iteration."""

from __future__ import annotations

import json

import pytest
import yaml

from cspflow.testing.cli import cli_env, run_cli

pytestmark = pytest.mark.slow

SPEC = {
    "name": "si-mlip",
    "compositions": ["Si"],
    "max_atoms": 2,
    "generate": {"per_iteration": 3, "sources": {"prototype": 1.0}, "seed": 1},
    # three candidates in two prerelax jobs (2 + 1), one for each of two gpu workers
    "prerelax": {"model": "chgnet", "max_steps": 100, "batch_size": 2},
    "select": {"top_k": 2},
    "dft": {"engine": "none"},
    "stop": {"max_iterations": 1},
}


def test_mlip_only_campaign_then_extend(settings, db, tmp_path):
    spec = tmp_path / "si.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = cli_env(settings, CSPFLOW_LOCAL_GPU_WORKERS="2")
    out = json.loads(run_cli("campaign", "run", str(spec), "--json", env=env, timeout=900).stdout)
    assert out["state"] == "completed" and len(out["iterations"]) == 1
    # the iteration's two prerelax jobs ran side by side on the two gpu workers
    prerelax = [
        fw["fw_id"] for fw in db.fireworks.find({"name": {"$regex": "^prerelax si-mlip it0 batch"}})
    ]
    assert len(prerelax) == 2
    ran_on = {la["fworker"]["name"] for la in db.launches.find({"fw_id": {"$in": prerelax}})}
    assert len(ran_on) == 2 and all(name.endswith(("-gpu-local", "-gpu1-local")) for name in ran_on)
    first = out["iterations"][0]
    assert first["hull"]["level"] == "mlip"  # no DFT: the MLIP hull
    assert db.candidates.count_documents({"relaxed.dft": {"$exists": True}}) == 0
    best = out["top"]["structures"][0]
    assert (
        best["level"] == "mlip"
        and best["e_above_hull"] == 0.0
        and best["spacegroup"] == 227
        and best["spacegroup_symbol"] == "Fd-3m"
    )
    # every stored candidate fits the one declared document (no undeclared field, one type each)
    from cspflow.schemas.candidate import CandidateDoc

    for doc in db.candidates.find({}, {"_id": 0}):
        CandidateDoc.model_validate(doc)

    run_cli("campaign", "extend", "si-mlip", "--iterations", "1", env=env, timeout=900)
    out2 = json.loads(run_cli("campaign", "run", str(spec), "--json", env=env, timeout=900).stdout)
    assert [it["iteration"] for it in out2["iterations"]] == [0, 1]
    assert out2["state"] == "completed"
    assert db.candidates.count_documents({"campaign": "si-mlip", "iteration": 1}) >= 1
    # every firework of the extended campaign belongs to one workflow, all completed
    wf = db.workflows.find_one({"metadata.campaign": "si-mlip"})
    assert wf["state"] == "COMPLETED" and len(wf["nodes"]) > 8
