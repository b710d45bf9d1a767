"""Model evaluations and CPU-seconds per relaxation: today's engine, plain ASE, the new engine.

Makes N random symmetric candidates of one composition (PyXtal through cspflow's
``random_symmetric`` source, fixed seed; Al2O3 at 10 atoms by default), loads CHGNet once
(one torch thread), and relaxes the SAME candidates, side by side in one run, with

* ``today``: main's prerelax code path before the new engine (``relax.py`` at commit
  ``--baseline-commit``, loaded from git: lock-step FIRE on FrechetCellFilter, fmax 0.05,
  300 steps, every structure to convergence, 16 structures per model call);
* ``ase``: plain ASE FIRE + FrechetCellFilter with CHGNet's ASE calculator, one structure at a
  time (what atomate2's ForceFieldRelaxMaker does), fmax 0.05, 300 steps;
* ``new`` (and any ``new:KEY=VALUE,...`` variant): :func:`cspflow.prerelax.relax.relax_structures`
  with the prerelax stage's default settings (pruning, screening tolerance, in-flight batch),
  overridden by the variant's keys (``optimizer``, ``finish_optimizer``, ``fmax_screen``,
  ``symmetry_stage``, and the ``prune`` keys ``enabled``, ``window``, ``screen_hold``,
  ``screen_steps``, ``descent``, ``every``, ``min_steps``, ``slope_factor``).

For each mode it prints model evaluations (total and per relaxation), CPU-seconds per
relaxation (this process, ``time.process_time``), wall time, how the relaxations ended, and
whether the five lowest unique minima are those of the full relaxation (``today``) within
5 meV/atom (StructureMatcher with cspflow's dedup tolerances).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/relax_engine.py --n 64 \\
        [--modes "today;ase;new"] [--parallel] [--formula Al2O3 --atoms 10] [--seed 0] [--json]

``--parallel`` runs each mode in its own process at the same time (``--jobs K``: at most K at
once; on a shared machine: more CPU share, same CPU-seconds per relaxation); run it from the
repository root. ``--trace FILE`` (new modes) records every step of every candidate for
``bench/relax_replay.py``; ``--combine "MODE=FILE;..."`` compares runs saved by ``--save`` or
``--trace`` without relaxing again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

BASELINE_COMMIT = "6db5dec"
FMAX, MAX_STEPS = 0.05, 300


def make_candidates(formula: str, atoms: int, n: int, seed: int) -> list:
    """``n`` random_symmetric structures of ``formula`` with exactly ``atoms`` atoms."""
    from cspflow.generate.composition import parse_target
    from cspflow.generate.sources import RandomSymmetric, SourceContext

    target = parse_target(formula, atoms)
    out, s = [], seed
    while len(out) < n:
        g = RandomSymmetric().make(target, s, SourceContext())
        s += 1
        if g is not None and len(g.structure) == atoms:
            out.append(g.structure)
    return out


def baseline_module(commit: str) -> types.ModuleType:
    """Main's ``cspflow/prerelax/relax.py`` at ``commit``, loaded from git as a module (the
    repository of the working directory, else of this script)."""
    inside = subprocess.run(["git", "rev-parse", "--git-dir"], capture_output=True).returncode
    root = Path.cwd() if inside == 0 else Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "show", f"{commit}:cspflow/prerelax/relax.py"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    mod = types.ModuleType("baseline_relax")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(text, f"{commit}:relax.py", "exec"), mod.__dict__)
    return mod


class Counting:
    """Wraps a LoadedModel: counts structures evaluated (model evaluations)."""

    def __init__(self, model):
        self.model, self.evaluations = model, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def evaluate(self, atoms_list, *, batched=None):
        self.evaluations += len(atoms_list)
        return self.model.evaluate(atoms_list, batched=batched)


def run_today(structures, mlip, commit: str) -> tuple[list[dict], int]:
    mod = baseline_module(commit)
    counted = Counting(mlip)
    outs = mod.relax_structures(structures, counted, fmax=FMAX, max_steps=MAX_STEPS, chunk_size=16)
    rows = [_row(o, "converged" if o.ok else "failed") for o in outs]
    return rows, counted.evaluations


def run_ase(structures, mlip) -> tuple[list[dict], int]:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    calc = mlip.calculator
    count = [0]
    inner = calc.calculate

    def calculate(*args, **kwargs):
        count[0] += 1
        return inner(*args, **kwargs)

    calc.calculate = calculate
    rows = []
    for s in structures:
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.info.clear()
        atoms.calc = calc
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        ok = opt.run(fmax=FMAX, steps=MAX_STEPS)
        e = float(atoms.get_potential_energy()) / len(atoms)
        clean = atoms.copy()
        clean.calc = None
        rows.append({"status": "converged" if ok else "failed", "energy_per_atom": e,
                     "steps": opt.nsteps, "structure": AseAtomsAdaptor.get_structure(clean)})  # fmt: skip
    calc.calculate = inner
    return rows, count[0]


def run_new(
    structures, mlip, overrides: dict, trace_to: str | None = None
) -> tuple[list[dict], int]:
    from cspflow.prerelax.relax import relax_structures
    from cspflow.schemas.prerelax import PrerelaxSettings

    prune_keys = {"window", "every", "min_steps", "slope_factor", "enabled", "screen_steps",
                  "descent", "screen_hold"}  # fmt: skip
    s = PrerelaxSettings()
    prune = s.prune.model_copy(update={k: v for k, v in overrides.items() if k in prune_keys})
    rest = {k: v for k, v in overrides.items() if k not in prune_keys}
    s = s.model_copy(update=rest)
    counted = Counting(mlip)
    steps: dict[int, list] = {k: [] for k in range(len(structures))}
    outs = relax_structures(
        structures, counted, fmax=s.fmax, max_steps=s.max_steps, optimizer=s.optimizer,
        fmax_screen=s.fmax_screen, symmetry_stage=s.symmetry_stage, prune=prune,
        batch_atoms=s.batch_atoms, finish_optimizer=s.finish_optimizer,
        symmetry_rattle=s.symmetry_rattle, cell_factor=s.cell_factor, maxstep=s.maxstep,
        trace=lambda i, step, e, f, r: steps[i].append((step, round(e, 6), round(f, 5), round(r, 4))),
    )  # fmt: skip
    if trace_to:  # every step of every candidate, for bench/relax_replay.py
        Path(trace_to).write_text(json.dumps({"cands": [
            {"status": o.status, "steps": o.steps, "e": o.energy_per_atom, "evals": o.evaluations,
             "reason": o.failure_reason, "trace": steps[k],
             "structure": o.structure.as_dict() if o.structure else None}
            for k, o in enumerate(outs)]}))  # fmt: skip
    return [_row(o, o.status) for o in outs], counted.evaluations


def _row(o, status: str) -> dict:
    return {"status": status, "energy_per_atom": o.energy_per_atom, "steps": o.steps,
            "structure": o.structure, "reason": o.failure_reason}  # fmt: skip


def lowest_unique(rows: list[dict], k: int = 5) -> list[tuple[float, object]]:
    """The ``k`` lowest converged minima, one per structure (StructureMatcher)."""
    from cspflow.dedup.match import MATCHER_KWARGS, matcher

    m = matcher(**MATCHER_KWARGS)
    kept: list[tuple[float, object]] = []
    for r in sorted((r for r in rows if r["status"] == "converged"),
                    key=lambda r: r["energy_per_atom"]):  # fmt: skip
        if not any(m.fit(r["structure"], s) for _, s in kept):
            kept.append((r["energy_per_atom"], r["structure"]))
        if len(kept) == k:
            break
    return kept


def same_minima(ref, got, tol: float = 0.005) -> tuple[bool, float]:
    """Whether ``got`` (every unique minimum a mode found) has each of ``ref``'s five lowest
    within ``tol`` eV/atom (and the largest gap); a lower minimum only ``got`` found does not
    count against it."""
    from cspflow.dedup.match import MATCHER_KWARGS, matcher

    m = matcher(**MATCHER_KWARGS)
    worst = 0.0
    for e, s in ref:
        gaps = [abs(e - e2) for e2, s2 in got if abs(e - e2) <= tol and m.fit(s, s2)]
        if not gaps:
            return False, float("inf")
        worst = max(worst, min(gaps))
    return len(got) >= len(ref), worst


def parse_mode(text: str) -> tuple[str, dict]:
    name, _, opts = text.partition(":")
    over: dict = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        over[key] = json.loads(value) if value not in ("FIRE", "FIRE2", "BFGS", "LBFGS") else value
    return name, over


def run_mode(mode: str, structures, mlip, args) -> tuple[dict, list]:
    """One mode on ``structures``: its figures and its five lowest unique minima."""
    name, over = parse_mode(mode)
    c0, w0 = time.process_time(), time.monotonic()
    if name == "today":
        rows, evals = run_today(structures, mlip, args.baseline_commit)
    elif name == "ase":
        rows, evals = run_ase(structures, mlip)
    elif name == "new":
        rows, evals = run_new(structures, mlip, over, args.trace)
    else:
        raise SystemExit(f"error: unknown mode {name!r}")
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    minima = lowest_unique(rows, k=len(rows))  # every unique minimum, lowest first
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary = {
        "evaluations": evals, "evaluations_per_relaxation": round(evals / args.n, 1),
        "cpu_s_per_relaxation": round(cpu / args.n, 2), "wall_s": round(wall, 1),
        "statuses": statuses, "lowest5": [round(e, 4) for e, _ in minima[:5]],
        "rows": [{"status": r["status"], "steps": r["steps"], "reason": r.get("reason"),
                  "energy_per_atom": r["energy_per_atom"]} for r in rows],
    }  # fmt: skip
    return summary, minima


def run_parallel(modes: list[str], argv: list[str]) -> tuple[dict, dict]:
    """Each mode in its own child process at the same time (same candidates: same seed)."""
    import tempfile

    from pymatgen.core import Structure

    tmp = Path(tempfile.mkdtemp(prefix="relax_engine_"))
    rest = [a for a in argv if a not in ("--parallel", "--json")]
    if "--jobs" in rest:
        at = rest.index("--jobs")
        jobs, rest = int(rest[at + 1]), rest[:at] + rest[at + 2 :]
    else:
        jobs = len(modes)
    procs: list[subprocess.Popen] = []
    for k, mode in enumerate(modes):
        while sum(p.poll() is None for p in procs) >= jobs:
            time.sleep(2)
        cmd = [sys.executable, __file__, *rest, "--modes", mode, "--save", str(tmp / f"{k}.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        raise SystemExit("error: a mode failed; see its output above")
    summaries, minima = {}, {}
    for k, mode in enumerate(modes):
        saved = json.loads((tmp / f"{k}.json").read_text())
        summaries[mode] = saved["summary"]
        minima[mode] = [(e, Structure.from_dict(d)) for e, d in saved["minima"]]
    return summaries, minima


def load_saved(pairs: str, n: int) -> tuple[dict, dict]:
    """``MODE=FILE;...``: a child's ``--save`` output, or a ``--trace`` file (its rows)."""
    from pymatgen.core import Structure

    summaries, minima = {}, {}
    for pair in pairs.split(";"):
        mode, _, path = pair.partition("=")
        saved = json.loads(Path(path).read_text())
        if "cands" in saved:  # a trace: every candidate's end
            rows = [{"status": c["status"], "energy_per_atom": c["e"], "steps": c["steps"],
                     "reason": c["reason"],
                     "structure": Structure.from_dict(c["structure"]) if c["structure"] else None}
                    for c in saved["cands"]]  # fmt: skip
            found = lowest_unique(rows, k=len(rows))
            statuses: dict[str, int] = {}
            for r in rows:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            evals = sum(c["evals"] for c in saved["cands"])
            cpu = saved.get("cpu")
            summaries[mode] = {
                "evaluations": evals, "evaluations_per_relaxation": round(evals / n, 1),
                "cpu_s_per_relaxation": round(cpu / n, 2) if cpu else None, "statuses": statuses,
                "lowest5": [round(e, 4) for e, _ in found[:5]],
            }  # fmt: skip
            minima[mode] = found
        else:
            summaries[mode] = saved["summary"]
            minima[mode] = [(e, Structure.from_dict(d)) for e, d in saved["minima"]]
    return summaries, minima


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="number of candidates")
    p.add_argument("--formula", default="Al2O3")
    p.add_argument("--atoms", type=int, default=10, help="atoms per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="today;ase;new", help="';' list; new:KEY=VALUE,...")
    p.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    p.add_argument("--parallel", action="store_true", help="each mode in its own process")
    p.add_argument("--jobs", type=int, help="with --parallel: at most this many at once")
    p.add_argument("--combine", help="MODE=FILE;... compare saved runs (--save or --trace files)")
    p.add_argument("--trace", help="new modes: write every step of every candidate here (JSON)")
    p.add_argument("--save", help=argparse.SUPPRESS)  # a child of --parallel writes here
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = p.parse_args(argv)
    modes = args.modes.split(";")
    results: dict = {"n": args.n, "formula": args.formula, "atoms": args.atoms,
                     "seed": args.seed, "modes": {}}  # fmt: skip
    if args.combine:
        try:
            results["modes"], minima = load_saved(args.combine, args.n)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: cannot read --combine {args.combine!r}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    elif args.parallel:
        results["modes"], minima = run_parallel(modes, argv)
    else:
        import torch

        from cspflow.mlip import load_model

        torch.set_num_threads(1)
        structures = make_candidates(args.formula, args.atoms, args.n, args.seed)
        mlip = load_model("chgnet", device="cpu")
        minima = {}
        for mode in modes:
            results["modes"][mode], minima[mode] = run_mode(mode, structures, mlip, args)
            if not args.json:
                print(mode, json.dumps(results["modes"][mode]), file=sys.stderr, flush=True)
        if args.save:
            (mode,) = modes
            Path(args.save).write_text(json.dumps({
                "summary": results["modes"][mode],
                "minima": [(e, st.as_dict()) for e, st in minima[mode]],
            }))  # fmt: skip
            return results
    ref_mode = next((m for m in minima if m.startswith("today")), next(iter(minima)))
    ref = minima[ref_mode][:5]
    base = results["modes"][ref_mode]
    for mode, r in results["modes"].items():
        same, worst = same_minima(ref, minima[mode])
        r["same_lowest5_as_" + ref_mode] = same
        r["worst_gap_mev"] = None if not np.isfinite(worst) else round(worst * 1000, 2)
        r["fewer_evaluations_x"] = round(base["evaluations"] / max(r["evaluations"], 1), 2)
        cpu_base, cpu = base["cpu_s_per_relaxation"], r["cpu_s_per_relaxation"]
        r["cpu_speedup_x"] = round(cpu_base / cpu, 2) if cpu_base and cpu else None
    print(json.dumps(results, indent=None if args.json else 2))
    return results


if __name__ == "__main__":
    main()
