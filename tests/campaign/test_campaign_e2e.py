"""The campaign loop end to end through FireWorks on the embedded database with real GPAW.

One run covers: a two-iteration campaign (generate -> CHGNet -> select -> GPAW -> hull), the
runner killed with SIGKILL mid-way and resumed without redoing finished DFT, per-iteration
records, the hull, `results top --json`, `campaign status` and `lpad get_wflows`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.gpaw]

SPEC = {
    "name": "si-e2e",
    "compositions": ["Si"],
    "max_atoms": 2,
    "generate": {"per_iteration": 4, "sources": {"prototype": 0.5, "random_symmetric": 0.5},
                 "seed": 3},
    "prerelax": {"model": "chgnet", "max_steps": 150, "batch_size": 4},
    "select": {"top_k": 1, "energy_window": 0.2},
    "dft": {"engine": "gpaw", "preset": "fast"},
    "stop": {"max_iterations": 2, "patience": 2},
}  # fmt: skip


def cli_env(settings):
    env = dict(os.environ)
    env.update(CSPFLOW_DB_URI=settings.db_uri.get_secret_value(), CSPFLOW_DB_NAME=settings.db_name,
               CSPFLOW_DATA_DIR=str(settings.data_dir), CSPFLOW_WORK_DIR=str(settings.runs_dir))  # fmt: skip
    return env


def cspflow(*args, env, timeout=900, check=True):
    proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_iterations_killed_and_resumed(settings, db, tmp_path):
    spec = tmp_path / "si.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = cli_env(settings)
    t0 = time.monotonic()
    runner = subprocess.Popen(
        [sys.executable, "-m", "cspflow.cli.main", "campaign", "run", str(spec)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    first = None
    while time.monotonic() - t0 < 900 and runner.poll() is None:
        first = db.candidates.find_one({"relaxed.dft.status": "converged"})
        if first is not None:
            break
        time.sleep(1)
    assert first is not None, runner.stdout.read() if runner.poll() is not None else "no DFT result"
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    killed_at = time.monotonic() - t0
    before = {d["candidate_id"]: d["relaxed"]["dft"] for d in
              db.candidates.find({"relaxed.dft": {"$exists": True}}, {"candidate_id": 1, "relaxed.dft": 1})}  # fmt: skip

    resumed = cspflow("campaign", "run", str(spec), "--out", str(tmp_path / "out"), env=env)
    assert "resuming campaign si-e2e" in resumed.stderr
    print(
        f"\nkilled after {killed_at:.0f} s with {len(before)} DFT result(s) stored; "
        f"resumed run finished at {time.monotonic() - t0:.0f} s"
    )

    # nothing finished was redone: stored DFT results are untouched by the resumed run
    for cid, dft in before.items():
        if dft["status"] == "converged":
            now = db.candidates.find_one({"candidate_id": cid})["relaxed"]["dft"]
            assert now == dft, f"DFT of {cid} was redone"
    dft_runs = db.candidates.count_documents({"relaxed.dft": {"$exists": True}})
    assert dft_runs == 2  # top_k 1 x 2 iterations, each candidate once

    camp = db.campaigns.find_one({"name": "si-e2e"})
    assert camp["state"] == "completed" and "max_iterations" in camp["stop_reason"]
    assert [it["iteration"] for it in camp["iterations"]] == [0, 1]
    for it in camp["iterations"]:
        assert it["hull"]["level"] == "dft" and it["dft_runs_total"] >= 1
        assert sum(it["counts"].values()) >= 1

    hull = db.hull.find_one({"chemsys": "Si"}, sort=[("version", -1)])
    assert hull["level"] == "dft" and hull["version"] == 2
    (stable_id,) = hull["stable"]
    diamond = db.candidates.find_one({"candidate_id": stable_id})
    assert diamond["e_above_hull"] == 0.0
    from cspflow.schemas.candidate import CandidateDoc

    for doc in db.candidates.find({}, {"_id": 0}):  # DFT results included: every field declared
        CandidateDoc.model_validate(doc)
    from pymatgen.core import Structure

    relaxed = Structure.from_dict(diamond["relaxed"]["dft"]["structure"])
    assert relaxed.get_space_group_info(symprec=0.1)[1] == 227  # diamond
    assert -5.6 < diamond["energy_per_atom"]["dft"] < -5.0  # PBE Si, eV/atom
    assert (tmp_path / "out" / "hull.png").stat().st_size > 5000

    top = json.loads(cspflow("results", "top", "si-e2e", "--json", env=env).stdout)
    assert top["schema_version"] == 2  # spacegroup a number at every level
    assert top["structures"][0]["candidate_id"] == stable_id
    assert top["structures"][0]["spacegroup"] == 227
    assert top["structures"][0]["level"] == "dft" and top["structures"][0]["e_above_hull"] == 0.0
    status = json.loads(cspflow("campaign", "status", "si-e2e", "--json", env=env).stdout)
    assert status["workflow_state"] == "COMPLETED" and status["state"] == "completed"

    # the same campaign run without interruption, in a database of its own, ends with the same hull
    other = dict(
        env, CSPFLOW_DB_NAME=f"{settings.db_name}_ref", CSPFLOW_WORK_DIR=str(tmp_path / "ref")
    )
    cspflow("campaign", "run", str(spec), env=other)
    ref_db = db.client[f"{settings.db_name}_ref"]
    ref_hull = ref_db.hull.find_one({"chemsys": "Si"}, sort=[("version", -1)])
    try:

        def energies(h):
            return sorted(round(e["energy_per_atom"], 3) for e in h["entries"])

        assert ref_hull["level"] == hull["level"] and ref_hull["version"] == hull["version"]
        assert energies(ref_hull) == energies(hull)
        ref_stable = ref_db.candidates.find_one({"candidate_id": ref_hull["stable"][0]})
        assert ref_stable["energy_per_atom"]["dft"] == pytest.approx(
            diamond["energy_per_atom"]["dft"], abs=1e-3)  # fmt: skip
    finally:
        db.client.drop_database(f"{settings.db_name}_ref")

    lp_file = tmp_path / "lp.yaml"
    lp_file.write_text(yaml.safe_dump({"host": settings.db_uri.get_secret_value(),
                                       "uri_mode": True, "name": settings.db_name}))  # fmt: skip
    lpad = subprocess.run([str(Path(sys.executable).with_name("lpad")), "-l", str(lp_file),
                           "get_wflows", "-d", "more"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "campaign si-e2e" in lpad.stdout and '"state": "COMPLETED"' in lpad.stdout
