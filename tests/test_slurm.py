"""qlaunch through a real local Slurm with cspflow's qadapters: jobs land in their partitions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _configs(settings, tmp_path):
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text(yaml.safe_dump({"host": settings.db_uri.get_secret_value(), "uri_mode": True,
                                  "name": settings.db_name, "strm_lvl": "ERROR"}))  # fmt: skip
    files = {"launchpad": lp}
    for cat in ("cpu", "gpu"):
        fworker = yaml.safe_load((REPO / "fw_configs" / f"my_fworker_{cat}.yaml").read_text())
        assert fworker["category"] == cat
        (tmp_path / f"my_fworker_{cat}.yaml").write_text(yaml.safe_dump(fworker))
        qa = yaml.safe_load((REPO / "fw_configs" / f"my_qadapter_{cat}.yaml").read_text())
        assert qa["partition"] == cat
        qa["_fw_template_file"] = str(REPO / qa["_fw_template_file"])
        qa["walltime"] = "00:10:00"
        # a login shell (#!/bin/bash -l) resets PATH: activate the environment as users do
        qa["pre_rocket"] = f"source {BIN / 'activate'}"
        (tmp_path / f"my_qadapter_{cat}.yaml").write_text(yaml.safe_dump(qa))
        files[cat] = (tmp_path / f"my_fworker_{cat}.yaml", tmp_path / f"my_qadapter_{cat}.yaml")
    return files


def test_qlaunch_submits_through_slurm_and_partitions_match(settings, slurm_cluster, tmp_path):
    from jobflow import Flow

    from cspflow.scheduler import get_launchpad, submit_flow
    from cspflow.store import get_jobstore
    from cspflow.testing.jobs import independent_flow, record

    gpu_job = record("on-gpu")
    gpu_job.metadata["stage"] = "prerelax"
    submit_flow(Flow([independent_flow(2, stage="dft", name="cpu"), gpu_job]), settings)
    files = _configs(settings, tmp_path)
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        CSPFLOW_DB_URI=settings.db_uri.get_secret_value(),
        CSPFLOW_DB_NAME=settings.db_name,
        CSPFLOW_DATA_DIR=str(settings.data_dir),
        CSPFLOW_WORK_DIR=str(tmp_path / "runs"),
    )
    for cat, n in (("cpu", 2), ("gpu", 1)):
        fworker, qadapter = files[cat]
        launch_dir = tmp_path / f"q_{cat}"
        launch_dir.mkdir()
        proc = subprocess.run(
            [str(BIN / "qlaunch"), "-l", str(files["launchpad"]), "-w", str(fworker),
             "-q", str(qadapter), "--launch_dir", str(launch_dir), "rapidfire",
             "--nlaunches", str(n), "--sleep", "1"],
            env=env, capture_output=True, text=True, timeout=300, cwd=launch_dir,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    lp = get_launchpad(settings)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if lp.fireworks.count_documents({"state": "COMPLETED"}) == 3:
            break
        time.sleep(1)
    states = [f["state"] for f in lp.fireworks.find({}, {"state": 1})]
    scripts = "\n".join(p.read_text() for p in tmp_path.rglob("FW_submit.script"))
    errors = "\n".join(p.read_text()[-500:] for p in tmp_path.rglob("cspflow-*.err"))
    assert states == ["COMPLETED"] * 3, (states, errors)
    assert "#SBATCH --partition=gpu" in scripts and "#SBATCH --gres=gpu:1" in scripts
    assert "#SBATCH --partition=cpu" in scripts

    store = get_jobstore(settings)
    store.connect()
    outputs = {}
    for fw in lp.fireworks.find({}, {"fw_id": 1, "spec._category": 1}):
        job = lp.get_fw_by_id(fw["fw_id"]).tasks[0]["job"]
        outputs[job.uuid] = (fw["spec"]["_category"], store.get_output(job.uuid))
    for category, out in outputs.values():
        print(f"\n{out['tag']}: category {category} -> Slurm partition {out['slurm_partition']}, "
              f"CUDA_VISIBLE_DEVICES={out['cuda_visible_devices']}")  # fmt: skip
        assert out["slurm_partition"] == category
        if category == "gpu":
            assert out["cuda_visible_devices"] == "0"
