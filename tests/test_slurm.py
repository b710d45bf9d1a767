"""qlaunch through a real local Slurm with cspflow's qadapters: jobs land in their partitions."""

from __future__ import annotations

import time

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_qlaunch_submits_through_slurm_and_partitions_match(settings, slurm_cluster, tmp_path):
    from jobflow import Flow

    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.store import get_jobstore
    from cspflow.testing.jobs import independent_flow, record
    from cspflow.testing.slurm import qlaunch, qlaunch_configs, qlaunch_env

    gpu_job = record("on-gpu")
    gpu_job.metadata["stage"] = "prerelax"
    submit_flow(Flow([independent_flow(2, stage="dft", name="cpu"), gpu_job]), settings)
    files = qlaunch_configs(settings, tmp_path)
    for cat in ("cpu", "gpu"):
        fworker = yaml.safe_load(files[cat][0].read_text())
        assert fworker["category"] == cat
        assert yaml.safe_load(files[cat][1].read_text())["partition"] == cat
    env = qlaunch_env(settings, tmp_path / "runs")
    for cat, n in (("cpu", 2), ("gpu", 1)):
        proc = qlaunch(files, cat, tmp_path / f"q_{cat}", env, "--nlaunches", str(n), "--sleep", "1",
                       mode="rapidfire")  # fmt: skip
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
