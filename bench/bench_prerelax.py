"""MLIP relaxations per second: one batched prerelax job vs one job per structure.

Makes N random 8-20 atom candidates (strained, rattled supercells of Si, NaCl, MgO and SrTiO3
prototypes), then relaxes them

* batched: the model loaded once, all structures relaxed in lock step with batched evaluation
  (what one ``PrerelaxMaker`` job does);
* one by one: a job per structure, each job loading the model and relaxing its one structure;

and prints both rates and their ratio, measured in one run. ``--launcher fireworks`` (the
default) runs both paths as ``PrerelaxMaker`` jobs through FireWorks on a throwaway embedded
database, executed by one warm gpu worker process (what a cluster's worker daemon is): one job
of N candidates against N jobs of one candidate, so the one-by-one path pays the per-launch
cost of FireWorks + the database + loading the model; ``--launcher local`` uses jobflow's
``run_locally`` in this process instead (no FireWorks).

    .venv/bin/python bench/bench_prerelax.py [--n 64] [--model chgnet] [--max-steps 100]
                                             [--launcher fireworks|local]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import _insert_batches, _wait, _worker, candidates


def one_structure_job(atoms_dict: dict, model: str, fmax: float, max_steps: int) -> dict:
    """The job-per-structure path: load the model, relax one structure, unbatched."""
    from ase import Atoms

    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    mlip = load_model(model)
    (o,) = relax_structures(
        [Atoms.fromdict(atoms_dict)], mlip, fmax=fmax, max_steps=max_steps, batched=False
    )
    return {"steps": o.steps, "ok": o.ok, "energy_per_atom": o.energy_per_atom}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="number of candidates")
    p.add_argument("--model", default="chgnet", help="model spec (chgnet, mace:PATH, ...)")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.add_argument("--launcher", choices=("fireworks", "local"), default="fireworks")
    args = p.parse_args(argv)
    if args.launcher == "fireworks":
        return fireworks_paths(args)

    import torch
    from jobflow import Job, JobStore, run_locally
    from maggma.stores import MemoryStore

    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    structs = candidates(args.n)
    sizes = [len(a) for a in structs]

    t0 = time.perf_counter()
    mlip = load_model(args.model)
    outs = relax_structures(structs, mlip, fmax=args.fmax, max_steps=args.max_steps, batched=True)
    t_batched = time.perf_counter() - t0
    steps_batched = sum(o.steps for o in outs)

    store = JobStore(MemoryStore())
    t0 = time.perf_counter()
    single = []
    for atoms in structs:
        job = Job(
            one_structure_job,
            function_args=(atoms.todict(), args.model, args.fmax, args.max_steps),
            metadata={"stage": "prerelax"},
        )
        res = run_locally(job, store=store, log=False, ensure_success=True)
        single.append(res[job.uuid][1].output)
    t_single = time.perf_counter() - t0
    steps_single = sum(s["steps"] for s in single)

    result = {
        "n": args.n,
        "atoms_min_max": [min(sizes), max(sizes)],
        "model": mlip.model_id,
        "device": mlip.device,
        "torch_threads": torch.get_num_threads(),
        "max_steps": args.max_steps,
        "batched": {
            "wall_s": round(t_batched, 2),
            "relaxations_per_s": round(args.n / t_batched, 4),
            "steps": steps_batched,
            "ok": sum(o.ok for o in outs),
        },
        "one_job_per_structure": {
            "wall_s": round(t_single, 2),
            "relaxations_per_s": round(args.n / t_single, 4),
            "steps": steps_single,
            "ok": sum(s["ok"] for s in single),
        },
        "speedup": round(t_single / t_batched, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        b, s = result["batched"], result["one_job_per_structure"]
        print(
            f"{args.n} candidates ({min(sizes)}-{max(sizes)} atoms), {mlip.model_id} on "
            f"{mlip.device}, fmax {args.fmax}, max_steps {args.max_steps}"
        )
        print(
            f"batched (1 job, model loaded once): {b['relaxations_per_s']:.4f} relax/s "
            f"({b['wall_s']} s, {b['steps']} steps, {b['ok']} ok)"
        )
        print(
            f"one job per structure (run_locally): {s['relaxations_per_s']:.4f} relax/s "
            f"({s['wall_s']} s, {s['steps']} steps, {s['ok']} ok)"
        )
        print(f"ratio batched / one-by-one: {result['speedup']}x")
    return result


def fireworks_paths(args: argparse.Namespace) -> dict:
    """Both paths as PrerelaxMaker jobs through FireWorks, run by one warm gpu worker."""
    from pathlib import Path

    import torch

    from cspflow.bench.runner import bench_server
    from cspflow.prerelax.stage import PrerelaxMaker
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.schemas.prerelax import PrerelaxSettings
    from cspflow.store import get_database

    structs = candidates(args.n)
    sizes = [len(a) for a in structs]
    out: dict = {"n": args.n, "atoms_min_max": [min(sizes), max(sizes)], "model": args.model,
                 "max_steps": args.max_steps, "launcher": "fireworks",
                 "torch_threads": torch.get_num_threads()}  # fmt: skip
    with bench_server() as (settings, _info):
        s = settings.model_copy(update={"db_name": "prerelax_paths"})
        db = get_database(s)
        [batch_ids] = _insert_batches(db, structs, args.n, 1)
        [single_ids] = _insert_batches(db, structs, args.n, 1)
        lp = get_launchpad(s)
        log = Path(settings.runs_dir) / "worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        submit_flow(
            PrerelaxMaker(
                settings=PrerelaxSettings(model=args.model, max_steps=5, dedup=False)
            ).make(batch_ids[:1]),
            s,
        )
        worker = _worker(
            settings, "prerelax_paths", "gpu", "bench-prerelax", log, until_empty=False
        )
        try:
            _wait(lp, 1, timeout=900)  # the worker is warm (imports, a first model load)
            maker = PrerelaxMaker(
                settings=PrerelaxSettings(
                    model=args.model, fmax=args.fmax, max_steps=args.max_steps, dedup=False
                )
            )
            t0 = time.perf_counter()
            submit_flow(maker.make(batch_ids), s)
            _wait(lp, 2, timeout=7200)
            t_batched = time.perf_counter() - t0
            t0 = time.perf_counter()
            for cid in single_ids:
                submit_flow(PrerelaxMaker(settings=PrerelaxSettings(
                    model=args.model, fmax=args.fmax, max_steps=args.max_steps, dedup=False,
                    batched=False)).make([cid]), s)  # fmt: skip
            _wait(lp, 2 + len(single_ids), timeout=7200)
            t_single = time.perf_counter() - t0
        finally:
            worker.terminate()
            worker.wait(timeout=30)

        def stats(ids: list[str]) -> dict:
            docs = list(
                db.candidates.find({"candidate_id": {"$in": ids}}, {"relaxed.mlip": 1, "status": 1})
            )
            return {"steps": sum(d["relaxed"]["mlip"]["steps"] for d in docs),
                    "ok": sum(d["status"] == "prerelaxed" for d in docs)}  # fmt: skip

        out["batched"] = {"wall_s": round(t_batched, 2), "jobs": 1,
                          "relaxations_per_s": round(args.n / t_batched, 4), **stats(batch_ids)}  # fmt: skip
        out["one_job_per_structure"] = {"wall_s": round(t_single, 2), "jobs": args.n,
                                        "relaxations_per_s": round(args.n / t_single, 4),
                                        **stats(single_ids)}  # fmt: skip
    out["speedup"] = round(t_single / t_batched, 2)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        b, o = out["batched"], out["one_job_per_structure"]
        print(f"{args.n} candidates ({min(sizes)}-{max(sizes)} atoms), {args.model}, fmax {args.fmax}, "
              f"max_steps {args.max_steps}, through FireWorks (one warm gpu worker)")  # fmt: skip
        print(f"batched (1 job): {b['relaxations_per_s']:.4f} relax/s ({b['wall_s']} s, "
              f"{b['steps']} steps, {b['ok']} ok)")  # fmt: skip
        print(f"one job per structure ({o['jobs']} jobs): {o['relaxations_per_s']:.4f} relax/s "
              f"({o['wall_s']} s, {o['steps']} steps, {o['ok']} ok)")  # fmt: skip
        print(f"ratio batched / one-by-one: {out['speedup']}x")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
