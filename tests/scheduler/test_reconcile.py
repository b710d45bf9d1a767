"""Lost runs: a worker killed mid-job, or its Slurm job cancelled, is found, rerun and completes.

Live workers are never taken for lost (their heartbeat is fresh, their process alive), and
``cspflow campaign status`` reports what was rerun and why.
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

PING_S = 1  # FireWorks heartbeat interval of the test workers (FW_config PING_TIME_SECS)


def cli(*args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "cspflow.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def env_for(settings, tmp_path: Path) -> dict[str, str]:
    fw_config = tmp_path / "FW_config.yaml"
    fw_config.write_text(f"PING_TIME_SECS: {PING_S}\n")
    from cspflow.scheduler.workers import worker_env

    return worker_env(settings, FW_CONFIG_FILE=str(fw_config))


def register(db, name: str) -> None:
    """A campaign record, so that `campaign status NAME` can report on the submitted flow."""
    from cspflow.campaign.state import register_campaign
    from cspflow.schemas.campaign import CampaignSpec

    register_campaign(
        db, CampaignSpec(name=name, compositions=["Si"], max_atoms=2, dft={"engine": "none"})
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def outcome(db, name_prefix: str) -> dict:
    fws = list(
        db.fireworks.find({}, {"fw_id": 1, "state": 1, "launches": 1, "archived_launches": 1})
    )
    effects = {
        e["tag"]: e["runs"] for e in db.test_effects.find({"tag": {"$regex": f"^{name_prefix}"}})
    }
    return {
        "fws": len(fws),
        "completed": sum(f["state"] == "COMPLETED" for f in fws),
        "fizzled": sum(f["state"] == "FIZZLED" for f in fws),
        "launches": db.launches.count_documents({}),
        "reruns": sum(len(f.get("archived_launches", [])) for f in fws),
        "executions": sum(effects.values()),
        "duplicates": sum(n - 1 for n in effects.values() if n > 1),
        "effects": effects,
    }


def test_killed_worker_is_detected_rerun_and_completes(settings, db, tmp_path):
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.scheduler.reconcile import find_lost_runs
    from cspflow.scheduler.workers import worker_command
    from cspflow.testing.jobs import work_flow

    register(db, "lost")
    submit_flow(work_flow(2, seconds=6.0, name="lost"), settings, metadata={"campaign": "lost"})
    env = env_for(settings, tmp_path)
    lp = get_launchpad(settings)
    worker = subprocess.Popen(
        worker_command("cpu", sleep=1, name="victim", until_empty=True),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    launch = wait_for(lambda: lp.launches.find_one({"state": "RUNNING"}), 120, "a running job")
    assert launch["fworker"]["env"]["cspflow_pid"] == worker.pid  # the worker says who it is
    time.sleep(3 * PING_S)

    # alive: pinging every second, process there: not lost, even with a 2 s expiration
    alive, running, _ = find_lost_runs(lp, expiration_s=2 * PING_S, slurm=False)
    assert running == 1 and alive == []

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed_fw = launch["fw_id"]
    time.sleep(3 * PING_S)
    by_heartbeat, _, _ = find_lost_runs(lp, expiration_s=2 * PING_S, slurm=False, pids=False)
    assert [(r.fw_id, r.reason) for r in by_heartbeat] == [(killed_fw, "heartbeat")]

    dry = json.loads(cli("worker", "reconcile", "--dry-run", "--json", env=env).stdout)
    assert dry["dry_run"] and dry["rerun"] == [] and len(dry["lost"]) == 1
    assert lp.fireworks.find_one({"fw_id": killed_fw})["state"] == "RUNNING"  # untouched
    text = cli("worker", "reconcile", "--dry-run", env=env).stdout
    print("\n" + text.rstrip())
    assert "1 lost" in text and "would rerun (--dry-run)" in text

    proc = cli("worker", "reconcile", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["rerun"] == [killed_fw]
    assert report["lost"][0]["reason"] == "process"  # found at once: its pid is gone
    again = json.loads(cli("worker", "reconcile", "--json", env=env).stdout)
    assert again["lost"] == [] and again["rerun"] == []  # a second pass changes nothing

    finish = cli("worker", "start", "-c", "cpu", "--until-empty", "--sleep", "1", env=env)
    assert finish.returncode == 0, finish.stderr[-2000:]
    o = outcome(db, "lost")
    killed = lp.fireworks.find_one({"fw_id": killed_fw})
    archived = lp.launches.find_one({"launch_id": killed["archived_launches"][0]})
    status = json.loads(cli("campaign", "status", "lost", "--json", env=env).stdout)
    text = cli("campaign", "status", "lost", env=env).stdout
    print(f"\nworker SIGKILLed mid-job: {o['fws']} jobs, {o['completed']} completed, {o['fizzled']} "
          f"fizzled, {o['launches']} launches, {o['reruns']} rerun(s) (lost: "
          f"{archived['lost']['reason']}: {archived['lost']['detail']}), {o['executions']} "
          f"executions, {o['duplicates']} duplicates, {o['fws'] - len(o['effects'])} results "
          f"lost; campaign status reruns: "
          f"{status['reruns']['fireworks_rerun']} rerun, {status['reruns']['lost_runs']} lost")  # fmt: skip
    assert o["completed"] == 2 and o["fizzled"] == 0 and o["reruns"] == 1
    assert len(killed["launches"]) == 1 and archived["state"] == "FIZZLED"
    assert o["effects"] == {"lost-0": 1, "lost-1": 1}  # the killed run never got to its effect
    assert status["reruns"]["fireworks_rerun"] == 1 and status["reruns"]["lost_runs"] == 1
    assert status["reruns"]["lost"][0]["fw_id"] == killed_fw
    assert status["reruns"]["lost"][0]["reason"] == "process"
    assert "1 firework(s) rerun, 1 lost run(s)" in " ".join(text.split())


@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_slurm_job_is_reconciled_with_squeue(settings, db, slurm_cluster, tmp_path):
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.testing.jobs import work_flow
    from cspflow.testing.slurm import qlaunch, qlaunch_configs, qlaunch_env, squeue_ids

    register(db, "slurm-lost")
    submit_flow(work_flow(1, seconds=12.0, name="slurm-lost"), settings,
                metadata={"campaign": "slurm-lost"})  # fmt: skip
    files = qlaunch_configs(settings, tmp_path)
    env = qlaunch_env(settings, tmp_path / "runs")
    lp = get_launchpad(settings)
    t0 = time.monotonic()
    first = qlaunch(files, "cpu", tmp_path / "q1", env)
    assert first.returncode == 0, first.stderr[-3000:]
    launch = wait_for(lambda: lp.launches.find_one({"state": "RUNNING"}), 120, "the job to start")
    job_id = launch["fworker"]["env"]["slurm_job_id"]
    assert job_id in squeue_ids()
    subprocess.run(["scancel", job_id], check=True, timeout=60)
    wait_for(lambda: job_id not in squeue_ids(), 60, "squeue to forget the cancelled job")
    cancelled_at = time.monotonic() - t0

    proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "worker", "reconcile", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["slurm"] == "squeue ok"
    assert [(r["fw_id"], r["reason"]) for r in report["lost"]] == [(launch["fw_id"], "slurm")]
    assert report["rerun"] == [launch["fw_id"]]
    assert lp.fireworks.find_one({"fw_id": launch["fw_id"]})["state"] == "READY"

    second = qlaunch(files, "cpu", tmp_path / "q2", env)
    assert second.returncode == 0, second.stderr[-3000:]
    wait_for(lambda: lp.fireworks.find_one({"state": "COMPLETED"}), 180, "the rerun to complete")
    o = outcome(db, "slurm-lost")
    status = json.loads(cli("campaign", "status", "slurm-lost", "--json", env=env).stdout)
    print(f"\nSlurm job {job_id} scancelled at {cancelled_at:.0f} s: reconcile found "
          f"{len(report['lost'])} lost ({report['lost'][0]['detail']}), reran {report['rerun']}; "
          f"{o['completed']} completed, {o['launches']} launches, {o['reruns']} rerun, "
          f"{o['executions']} executions, {o['duplicates']} duplicates, "
          f"{o['fws'] - len(o['effects'])} results lost, after "
          f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    assert o["completed"] == 1 and o["reruns"] == 1 and o["launches"] == 2
    assert o["effects"] == {"slurm-lost-0": 1}
    assert status["reruns"]["lost"][0]["reason"] == "slurm"
