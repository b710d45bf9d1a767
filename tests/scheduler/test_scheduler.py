"""FireWorks submission, stage routing to gpu/cpu workers, and unique ids under concurrency."""

from __future__ import annotations

import subprocess
import sys
from multiprocessing import get_context
from pathlib import Path

import pytest
import yaml

from cspflow.jobs import STAGE_CATEGORY, category_for
from cspflow.scheduler.workers import worker_command, worker_env

REPO = Path(__file__).resolve().parents[2]


def worker_cmd(category, *extra):
    return [*worker_command(category, sleep=1, until_empty=True), *extra]


def env_for(settings):
    return worker_env(settings)


def launchpad_yaml(settings, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "host": settings.db_uri.get_secret_value(),
                "uri_mode": True,
                "name": settings.db_name,
                "strm_lvl": "ERROR",
            }  # fmt: skip
        )
    )
    return path


def test_routing_table_is_one_place():
    assert category_for("prerelax") == "gpu" and category_for("learn") == "gpu"
    assert category_for("dft") == "cpu" and category_for("generate") == "cpu"
    assert category_for(None) == "cpu"
    assert set(STAGE_CATEGORY.values()) == {"cpu", "gpu"}


def test_gpu_and_cpu_workers_take_only_their_jobs(settings, tmp_path):
    from cspflow.demo import platform_flow
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow

    ids = submit_flow(platform_flow(), settings)
    lp = get_launchpad(settings)
    fws = {lp.get_fw_by_id(i).name: lp.get_fw_by_id(i) for i in ids.values()}
    assert fws["build_structure"].spec["_category"] == "cpu"
    assert fws["analyse_structure"].spec["_category"] == "gpu"
    env = env_for(settings)

    # the gpu worker first: its job is not ready yet (it waits on the cpu job), so it runs nothing
    gpu = subprocess.run(worker_cmd("gpu"), env=env, capture_output=True, text=True, timeout=300)
    assert gpu.returncode == 0, gpu.stderr
    assert "0 launch(es)" in gpu.stdout
    cpu = subprocess.run(worker_cmd("cpu"), env=env, capture_output=True, text=True, timeout=300)
    assert "cpu worker: 1 launch(es)" in cpu.stdout, cpu.stderr
    assert lp.get_fw_by_id(fws["analyse_structure"].fw_id).state == "READY"
    cpu_again = subprocess.run(
        worker_cmd("cpu"), env=env, capture_output=True, text=True, timeout=300
    )
    assert "0 launch(es)" in cpu_again.stdout  # the gpu job is never taken by a cpu worker
    gpu = subprocess.run(worker_cmd("gpu"), env=env, capture_output=True, text=True, timeout=300)
    assert "gpu worker: 1 launch(es)" in gpu.stdout, gpu.stderr

    for launch in lp.launches.find({}):
        fw = lp.get_fw_by_id(launch["fw_id"])
        assert launch["fworker"]["category"] == fw.spec["_category"]

    lpad = subprocess.run(
        [str(Path(sys.executable).with_name("lpad")), "-l",
         str(launchpad_yaml(settings, tmp_path / "lp.yaml")), "get_wflows", "-d", "more"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert lpad.returncode == 0, lpad.stderr
    assert '"state": "COMPLETED"' in lpad.stdout
    assert "platform-check" in lpad.stdout

    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    out = store.get_output(fws["analyse_structure"].tasks[0]["job"].uuid)
    assert out["spacegroup"] == "Fd-3m" and out["primitive_nsites"] == 2


def test_jobs_added_at_run_time_are_routed_by_stage(settings):
    from jobflow import Flow

    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.scheduler.workers import run_worker
    from cspflow.testing.jobs import spawn_stage

    submit_flow(Flow([spawn_stage("prerelax", "child")]), settings)
    assert run_worker("gpu", settings, nlaunches=0, sleep_time=1) == 0
    assert run_worker("cpu", settings, nlaunches=0, sleep_time=1) == 1
    lp = get_launchpad(settings)
    child = lp.fireworks.find_one({"name": "record"})
    assert child["spec"]["_category"] == "gpu"
    assert run_worker("cpu", settings, nlaunches=0, sleep_time=1) == 0
    assert run_worker("gpu", settings, nlaunches=0, sleep_time=1) == 1
    assert lp.fireworks.count_documents({"state": "COMPLETED"}) == 2


def test_id_counters_unique_under_concurrent_clients(settings):
    from cspflow.scheduler.launchpad import get_launchpad
    from cspflow.testing import take_ids

    lp = get_launchpad(settings)
    uri = settings.db_uri.get_secret_value()
    with get_context("spawn").Pool(4) as pool:
        results = pool.map(take_ids, [(uri, settings.db_name, 150, "cspflow")] * 4)
    launch_ids = [i for r in results for i in r[0]]
    fw_ids = [i for r in results for i in r[1]]
    dup_launch = len(launch_ids) - len(set(launch_ids))
    dup_fw = len(fw_ids) - len(set(fw_ids))
    print(f"\n4 clients x 150: {len(launch_ids)} launch ids, {dup_launch} duplicates; "
          f"{len(fw_ids)} fw ids, {dup_fw} duplicates")  # fmt: skip
    assert dup_launch == 0 and dup_fw == 0
    counters = lp.fw_id_assigner.find_one({})
    assert counters["next_launch_id"] == 1 + 600 and counters["next_fw_id"] == 1 + 600


def test_concurrent_workers_run_every_firework_exactly_once(settings):
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.testing.jobs import independent_flow

    n = 60
    submit_flow(independent_flow(n, stage="dft"), settings)
    env = env_for(settings)
    procs = [
        subprocess.Popen(worker_cmd("cpu", "--name", f"w{i}"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lp = get_launchpad(settings)
    fws = list(lp.fireworks.find({}, {"fw_id": 1, "state": 1, "launches": 1}))
    launches = list(lp.launches.find({}, {"launch_id": 1, "fw_id": 1, "fworker": 1}))
    fw_ids = [f["fw_id"] for f in fws]
    launch_ids = [ln["launch_id"] for ln in launches]
    per_fw = {}
    for ln in launches:
        per_fw[ln["fw_id"]] = per_fw.get(ln["fw_id"], 0) + 1
    workers_used = {ln["fworker"]["name"] for ln in launches}
    reruns = sum(c - 1 for c in per_fw.values())
    print(f"\n{n} fireworks, 4 workers ({len(workers_used)} took work): {len(launches)} launches, "
          f"{reruns} reruns, {len(fw_ids) - len(set(fw_ids))} duplicate fw ids, "
          f"{len(launch_ids) - len(set(launch_ids))} duplicate launch ids")  # fmt: skip
    assert len(fws) == n and all(f["state"] == "COMPLETED" for f in fws)
    assert len(set(fw_ids)) == n
    assert len(set(launch_ids)) == len(launch_ids) == n
    assert all(c == 1 for c in per_fw.values()) and len(per_fw) == n
    assert all(len(f["launches"]) == 1 for f in fws)
    assert len(workers_used) >= 2


def test_worker_check_cli_reports_who_ran_what(settings):
    import json

    proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "worker", "check", "--json"],
                          env=env_for(settings), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["workflow_state"] == "COMPLETED"
    assert {(fw["stage"], fw["category"], fw["ran_on"]) for fw in report["fireworks"]} == {
        ("generate", "cpu", "cpu"), ("prerelax", "gpu", "gpu")}  # fmt: skip
    assert report["launches"] == {"cpu": 1, "gpu": 1}


def test_gpu_job_runs_on_a_cpu_only_gpu_worker_unless_cuda_is_forced(settings, db):
    """A prerelax job (gpu category) taken by a gpu worker on this CPU-only node relaxes on the
    CPU with the default CSPFLOW_DEVICE=auto; forcing cuda here is refused in one line at start,
    before the worker takes (and fails) any job."""
    import torch
    from pymatgen.core import Structure

    from cspflow.prerelax.stage import PrerelaxMaker
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.schemas.prerelax import PrerelaxSettings
    from cspflow.testing import insert_candidate

    if torch.cuda.is_available():
        pytest.skip("this node has a CUDA device")
    si = Structure([[0, 2.7, 2.7], [2.7, 0, 2.7], [2.7, 2.7, 0]], ["Si", "Si"],
                   [[0, 0, 0], [0.25, 0.25, 0.25]])  # diamond, a = 5.40 A  # fmt: skip
    cid = insert_candidate(db, si, status="generated")
    submit_flow(
        PrerelaxMaker(settings=PrerelaxSettings(model="chgnet", max_steps=50, dedup=False)).make(
            [cid]
        ),
        settings,
    )
    lp = get_launchpad(settings)

    forced = subprocess.run(worker_cmd("gpu"), env=dict(env_for(settings), CSPFLOW_DEVICE="cuda"),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert forced.returncode == 2
    assert forced.stderr.strip().splitlines() == [
        "error: device 'cuda' requested but torch sees no CUDA device; set CSPFLOW_DEVICE=auto "
        "(or cpu) to run on the CPU"
    ]
    assert lp.fireworks.count_documents({"state": "READY"}) == 1  # nothing was taken

    auto = subprocess.run(worker_cmd("gpu"), env=env_for(settings), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert "gpu worker: MLIP jobs run on cpu" in auto.stderr
    assert "gpu worker: 1 launch(es)" in auto.stdout
    doc = db.candidates.find_one({"candidate_id": cid})
    assert doc["status"] == "prerelaxed" and doc["relaxed"]["mlip"]["device"] == "cpu"
    assert lp.launches.find_one({})["fworker"]["category"] == "gpu"


def test_unknown_worker_category_is_one_line(settings):
    proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "worker", "start", "-c", "tpu"],
                          env=env_for(settings), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: unknown worker category 'tpu'; use --category gpu or --category cpu"
    )


@pytest.mark.slow
def test_500_jobs_4_workers_every_job_exactly_once(settings, db):
    """Every job runs exactly once at scale: one launch per firework, and the job's own side
    effect (a counter in the database, outside FireWorks' books) incremented once."""
    import time

    from cspflow.scheduler.launchpad import submit_flow
    from cspflow.testing.jobs import EFFECTS, work_flow

    n, per_flow = 500, 20
    # 25 workflows of 20: the checkout that 4 workers race for is the same as with one flow of
    # 500, without every completion rewriting (under FireWorks' workflow lock) a 500-node document
    for k in range(n // per_flow):
        submit_flow(work_flow(per_flow, stage="dft", name=f"scale{k}"), settings)
    env = env_for(settings)
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(worker_cmd("cpu", "--name", f"w{i}"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=1800) for p in procs]
    elapsed = time.monotonic() - t0
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    fws = list(db.fireworks.find({}, {"fw_id": 1, "state": 1, "launches": 1}))
    launches = list(db.launches.find({}, {"launch_id": 1, "fw_id": 1, "fworker": 1}))
    effects = {e["tag"]: e["runs"] for e in db[EFFECTS].find({})}
    per_fw: dict[int, int] = {}
    for ln in launches:
        per_fw[ln["fw_id"]] = per_fw.get(ln["fw_id"], 0) + 1
    by_worker: dict[str, int] = {}
    for ln in launches:
        by_worker[ln["fworker"]["name"]] = by_worker.get(ln["fworker"]["name"], 0) + 1
    duplicate_runs = sum(c - 1 for c in effects.values())
    print(f"\n{n} jobs, 4 workers in {elapsed:.0f} s ({n / elapsed:.1f} jobs/s): "
          f"{len(launches)} launches {dict(sorted(by_worker.items()))}, "
          f"{sum(c - 1 for c in per_fw.values())} reruns, {sum(effects.values())} executions, "
          f"{duplicate_runs} duplicate executions, {n - len(effects)} jobs never run")  # fmt: skip
    assert len(fws) == n and all(f["state"] == "COMPLETED" for f in fws)
    assert len(launches) == n and len({ln["launch_id"] for ln in launches}) == n
    assert all(c == 1 for c in per_fw.values()) and len(per_fw) == n
    assert len(effects) == n and duplicate_runs == 0
    assert sum(1 for c in by_worker.values() if c) >= 2
