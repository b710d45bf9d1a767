"""Engine throughput: launchpad jobs per second with 1, 2, 4 workers, and workflow overhead.

Two measurements on a throwaway embedded server (removed afterwards; the user's databases are
not touched), printed as tables:

* launchpad throughput: ``--jobs`` trivial jobs (each writes one document) submitted as one
  workflow, then run by W concurrent ``cspflow worker start`` processes (rapidfire, the way a
  cluster runs them) for W in ``--workers``; jobs per second from the first worker's start to the
  last job's completion, and the per-launch cost (worker seconds per job);
* workflow overhead of an MLIP batch job of the default size (``prerelax.batch_size``, 32
  candidates of 8-20 atoms, CHGNet, the campaign defaults fmax 0.05 and max_steps 300): the same
  batches relaxed in this process by :func:`cspflow.prerelax.stage.prerelax_candidates` (the job's
  compute, model loading included) and as ``PrerelaxMaker`` jobs through FireWorks + the
  database by a warm gpu worker; overhead = (FireWorks wall - in-process wall) / in-process wall;
* cost per completion against workflow size: the same ``--jobs`` trivial jobs submitted as
  workflows of S jobs each for S in ``--flow-sizes``, run by one worker. FireWorks rewrites a
  firework's whole workflow when one completes, and a campaign is one workflow that grows by
  one iteration at a time, so this is what a long campaign pays per job.

    .venv/bin/python bench/bench_engine.py [--jobs 200] [--workers 1,2,4] [--batches 2]
                                           [--batch-size 32] [--flow-sizes 20,100,500]
                                           [--skip-overhead] [--skip-throughput]
                                           [--skip-flow-size] [--json F]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

from _common import _insert_batches, _wait, _worker, candidates


def _t(value) -> datetime.datetime:
    """A FireWorks launch time (stored as an ISO string or a datetime)."""
    return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)


def throughput(settings, n_jobs: int, workers: int) -> dict:
    """Run ``n_jobs`` trivial jobs with ``workers`` concurrent rapidfire workers."""
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.store import get_database
    from cspflow.testing.jobs import EFFECTS, work_flow

    db_name = f"throughput_{workers}"
    s = settings.model_copy(update={"db_name": db_name})
    submit_flow(work_flow(n_jobs, 0.0, stage="dft", name=f"t{workers}"), s)
    lp = get_launchpad(s)
    log_dir = Path(settings.runs_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    procs = [_worker(settings, db_name, "cpu", f"bench-{workers}-{k}", log_dir / f"tp-{workers}-{k}.log")
             for k in range(workers)]  # fmt: skip
    for p in procs:
        p.wait(timeout=3600)
    wall = time.monotonic() - t0
    db = get_database(s)
    completed = lp.fireworks.count_documents({"state": "COMPLETED"})
    runs = [d["runs"] for d in db[EFFECTS].find({}, {"runs": 1})]
    ends = [_t(d["time_end"]) for d in lp.launches.find({"state": "COMPLETED"}, {"time_end": 1})]
    starts = [_t(d["time_start"]) for d in lp.launches.find({}, {"time_start": 1})]
    busy = (max(ends) - min(starts)).total_seconds() if ends and starts else float("nan")
    return {
        "workers": workers, "jobs": n_jobs, "completed": completed,
        "ran_twice": sum(r > 1 for r in runs), "never_ran": n_jobs - len(runs),
        "wall_s": round(wall, 2), "jobs_per_s": round(completed / wall, 2),
        "jobs_per_s_launch_window": round(completed / busy, 2) if busy == busy else None,
        "worker_s_per_job": round(wall * workers / max(1, completed), 3),
    }  # fmt: skip


def flow_size(settings, n_jobs: int, size: int) -> dict:
    """Run ``n_jobs`` trivial jobs submitted as workflows of ``size`` jobs, with one worker."""
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.store import get_database
    from cspflow.testing.jobs import EFFECTS, work_flow

    db_name = f"flow_size_{size}"
    s = settings.model_copy(update={"db_name": db_name})
    n_flows = max(1, n_jobs // size)
    for f in range(n_flows):
        submit_flow(work_flow(size, 0.0, stage="dft", name=f"s{size}-{f}"), s)
    lp = get_launchpad(s)
    log = Path(settings.runs_dir) / f"fs-{size}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _worker(settings, db_name, "cpu", f"bench-fs-{size}", log).wait(timeout=7200)
    wall = time.monotonic() - t0
    completed = lp.fireworks.count_documents({"state": "COMPLETED"})
    runs = [d["runs"] for d in get_database(s)[EFFECTS].find({}, {"runs": 1})]
    return {
        "flow_size": size, "flows": n_flows, "jobs": n_flows * size, "completed": completed,
        "ran_twice": sum(r > 1 for r in runs), "wall_s": round(wall, 2),
        "s_per_job": round(wall / max(1, completed), 3),
    }  # fmt: skip


def overhead(settings, batch_size: int, batches: int, model: str, max_steps: int) -> dict:
    """The same batches relaxed in this process and as FireWorks jobs (warm worker), interleaved.

    Batch k runs in process and through FireWorks back to back, the order alternating from one
    batch to the next, so a change of machine load hits both paths alike. Each path relaxes its
    own copy of the candidates (its own database), so neither reuses the other's results.
    """
    from cspflow.prerelax.stage import PrerelaxMaker, prerelax_candidates
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.schemas.prerelax import PrerelaxSettings
    from cspflow.store import get_database

    structures = candidates(batch_size * batches, seed=5)
    s_in = settings.model_copy(update={"db_name": "overhead_inproc"})
    s_fw = settings.model_copy(update={"db_name": "overhead_fw"})
    db_in, db_fw = get_database(s_in), get_database(s_fw)
    ids_in = _insert_batches(db_in, structures, batch_size, batches)
    ids_fw = _insert_batches(db_fw, structures, batch_size, batches)
    # warm-up (imports, first model load) so neither side pays the process's one-time costs
    prerelax_candidates(ids_in[0][:1], model=model, max_steps=5, db=db_in, dedup=False)

    maker = PrerelaxMaker(settings=PrerelaxSettings(model=model, max_steps=max_steps))
    lp = get_launchpad(s_fw)
    log = Path(settings.runs_dir) / "overhead-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # a warm worker (what a cluster's worker daemon is): it ran one small job already
    warm = PrerelaxMaker(settings=PrerelaxSettings(model=model, max_steps=5, dedup=False)).make(
        ids_fw[0][:1]
    )
    submit_flow(warm, s_fw)
    worker = _worker(settings, "overhead_fw", "gpu", "bench-overhead", log, until_empty=False)

    def in_process(k: int) -> float:
        t = time.monotonic()
        prerelax_candidates(ids_in[k], model=model, fmax=0.05, max_steps=max_steps, db=db_in)
        return time.monotonic() - t

    def through_fireworks(k: int) -> tuple[float, float]:
        t = time.monotonic()
        submit_flow(maker.make(ids_fw[k], campaign="bench", iteration=k), s_fw)
        _wait(lp, k + 2, timeout=3600)
        wall = time.monotonic() - t
        launch = lp.launches.find_one({"state": "COMPLETED"}, sort=[("launch_id", -1)])
        return wall, (_t(launch["time_end"]) - _t(launch["time_start"])).total_seconds()

    t_in, t_fw, t_launch = [0.0] * batches, [0.0] * batches, [0.0] * batches
    try:
        _wait(lp, 1, timeout=900)
        for k in range(batches):
            if k % 2 == 0:
                t_in[k] = in_process(k)
                t_fw[k], t_launch[k] = through_fireworks(k)
            else:
                t_fw[k], t_launch[k] = through_fireworks(k)
                t_in[k] = in_process(k)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    steps = [
        [sum(d["relaxed"]["mlip"]["steps"] for d in db.candidates.find(
            {"candidate_id": {"$in": ids[k]}, "relaxed.mlip": {"$exists": True}},
            {"relaxed.mlip.steps": 1})) for k in range(batches)]
        for db, ids in ((db_in, ids_in), (db_fw, ids_fw))
    ]  # fmt: skip
    total_in, total_fw = sum(t_in), sum(t_fw)
    return {
        "batch_size": batch_size, "batches": batches, "model": model, "max_steps": max_steps,
        "steps_in_process": steps[0], "steps_fireworks": steps[1],
        "in_process_s": [round(t, 2) for t in t_in], "fireworks_s": [round(t, 2) for t in t_fw],
        "launch_s": [round(t, 2) for t in t_launch],
        "overhead_s_per_job": round((total_fw - total_in) / batches, 2),
        "overhead_fraction": round((total_fw - total_in) / total_in, 4),
    }  # fmt: skip


def _table(rows: list[dict], columns: dict[str, str]) -> None:
    """Print ``rows`` as a Markdown table of ``columns`` (key -> heading)."""
    print("| " + " | ".join(columns.values()) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in columns) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--model", default="chgnet")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--flow-sizes", default="20,100,500")
    ap.add_argument("--skip-flow-size", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from cspflow.bench.runner import bench_server

    report: dict = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.platform()}",
                    "load_before": os.getloadavg()}  # fmt: skip
    with bench_server() as (settings, _info):
        if not args.skip_throughput:
            rows = [throughput(settings, args.jobs, int(w)) for w in args.workers.split(",")]
            report["throughput"] = rows
            _table(rows, {"workers": "workers", "jobs": "jobs", "completed": "completed",
                          "ran_twice": "ran twice", "wall_s": "wall s", "jobs_per_s": "jobs/s",
                          "worker_s_per_job": "worker s per job"})  # fmt: skip
            base = rows[0]["jobs_per_s"]
            print("speed-up over 1 worker: " + ", ".join(
                f"{r['workers']}: {r['jobs_per_s'] / base:.2f}x" for r in rows))  # fmt: skip
        if not args.skip_flow_size:
            rows = [flow_size(settings, args.jobs, int(n)) for n in args.flow_sizes.split(",")]
            report["flow_size"] = rows
            print()
            _table(rows, {"flow_size": "jobs per workflow", "flows": "workflows", "jobs": "jobs",
                          "completed": "completed", "ran_twice": "ran twice", "wall_s": "wall s",
                          "s_per_job": "s per job"})  # fmt: skip
            print("cost per job relative to the smallest workflows: " + ", ".join(
                f"{r['flow_size']}: {r['s_per_job'] / rows[0]['s_per_job']:.2f}x" for r in rows))  # fmt: skip
        if not args.skip_overhead:
            o = overhead(settings, args.batch_size, args.batches, args.model, args.max_steps)
            report["overhead"] = o
            print(f"\nMLIP batch job ({o['batch_size']} candidates, {o['model']}, max_steps "
                  f"{o['max_steps']}), {o['batches']} batches:")  # fmt: skip
            print("| path | wall s per batch |")
            print("|---|---|")
            print(f"| in process (the job's compute) | {', '.join(map(str, o['in_process_s']))} |")
            print(
                f"| FireWorks + database, warm worker | {', '.join(map(str, o['fireworks_s']))} |"
            )
            print(f"| of which the launch itself (time_start..time_end) | "
                  f"{', '.join(map(str, o['launch_s']))} |")  # fmt: skip
            print(f"optimizer steps per batch: in process {o['steps_in_process']}, "
                  f"FireWorks {o['steps_fireworks']}")  # fmt: skip
            print(f"overhead: {o['overhead_s_per_job']} s per job = "
                  f"{100 * o['overhead_fraction']:.2f} % of compute")  # fmt: skip
    report["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
