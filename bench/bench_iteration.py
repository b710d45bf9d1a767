"""One campaign iteration of the default size through FireWorks: today's prerelax settings
against faster ones, at the same selection settings.

For each mode, writes a one-iteration MLIP-only campaign spec (``--formula`` at ``--max-atoms``,
the generate defaults: 40 candidates from random_symmetric / prototype / mutation, seed
``--seed``; the prerelax defaults overridden by the mode's keys; the select defaults; ``dft:
none``), runs ``cspflow campaign run SPEC --json`` on a fresh embedded database
(``CSPFLOW_DB_PORT=0``, ``CSPFLOW_DATA_DIR`` in a temporary directory, server stopped and
directory removed afterwards), so the iteration goes through FireWorks with the command's own
cpu and gpu workers, and reports per mode: the whole command's wall time, the iteration's
(``wall_time_s``), the relaxations (statuses, steps, model evaluations), and the selection (the
candidates ``select`` marked for DFT: their MLIP energies and structures). Every mode gets the
same candidates (same seed, same generation code); the selection of each mode is compared with
the first mode's: how many of its selected minima the other selected too (StructureMatcher with
cspflow's dedup tolerances, within 5 meV/atom).

    .venv/bin/python bench/bench_iteration.py \\
        [--modes "today@COMMIT;new;new-bfgs:optimizer=BFGS"] [--formula Al2O3]
        [--max-atoms 10] [--seed 0] [--per-iteration 40] [--json FILE]

A mode is ``NAME[@COMMIT][:KEY=VALUE,...]``: ``@COMMIT`` runs that commit's code (a temporary
git worktree), keys are prerelax spec fields (``optimizer``, ``symmetry_stage``,
``fmax_screen``, ``finish_optimizer``, ...) or ``prune.KEY``. The modes run one after the other
on the same machine, each with the workers ``campaign run`` starts there (run it on an
otherwise idle machine: wall times are the measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENERGY_TOL = 0.005  # eV/atom: two selected minima are the same within this and StructureMatcher


def parse_mode(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KEY=VALUE,...`` -> (NAME, prerelax overrides; ``prune.KEY`` nested)."""
    from cspflow.bench.options import parse_overrides

    name, _, opts = text.partition(":")
    return name, parse_overrides(opts)


def make_spec(name: str, args: argparse.Namespace, prerelax: dict[str, Any]) -> dict[str, Any]:
    """The one-iteration campaign of a mode (validated by the CLI when it runs)."""
    return {
        "name": name,
        "compositions": [args.formula],
        "max_atoms": args.max_atoms,
        "generate": {"seed": args.seed, "per_iteration": args.per_iteration},
        "prerelax": {"model": "chgnet", **prerelax},
        "dft": {"engine": "none"},
        "stop": {"max_iterations": 1},
    }


def dump_selection(name: str) -> dict[str, Any]:
    """(In the child, with the mode's database in the environment.) The selected candidates
    with MLIP energies and relaxed structures, and the iteration's record."""
    from cspflow.store import get_database

    db = get_database()
    doc = db["campaigns"].find_one({"name": name}) or {}
    selected = []
    for d in db["candidates"].find({"campaign": name, "status": "selected"}):
        mlip = (d.get("relaxed") or {}).get("mlip") or {}
        selected.append({"candidate_id": d["candidate_id"],
                         "energy_per_atom": (d.get("energy_per_atom") or {}).get("mlip"),
                         "spacegroup": mlip.get("spacegroup"),
                         "structure": mlip.get("structure")})  # fmt: skip
    return {"iterations": doc.get("iterations", []), "selected": selected}


def run_mode(mode: str, args: argparse.Namespace, cli: list[str]) -> dict[str, Any]:
    """Run one mode's campaign on its own fresh embedded database; its figures.

    ``NAME@REF``: the campaign runs the code of git commit REF (a detached worktree of this
    repository on ``PYTHONPATH``, so the command and its workers import that cspflow).
    """
    label, over = parse_mode(mode)
    label, _, ref = label.partition("@")
    name = f"bench-iteration-{label}"
    tmp = Path(tempfile.mkdtemp(prefix="cspflow-bench-iteration-"))
    env = {**os.environ, "CSPFLOW_DB_PORT": "0", "CSPFLOW_DATA_DIR": str(tmp / "data")}
    root = Path(__file__).resolve().parent.parent
    try:
        if ref:
            subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "code"), ref],
                           cwd=root, check=True, capture_output=True)  # fmt: skip
            env["PYTHONPATH"] = str(tmp / "code")
        import yaml

        spec = tmp / "spec.yaml"
        spec.write_text(yaml.safe_dump(make_spec(name, args, over)))
        t0 = time.monotonic()
        proc = subprocess.run([*cli, "campaign", "run", str(spec), "--json"], env=env,
                              capture_output=True, text=True)  # fmt: skip
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"error: mode {mode!r}: campaign run failed: {proc.stderr[-2000:]}")
        dumped = subprocess.run([sys.executable, __file__, "--dump", name], env=env,
                                capture_output=True, text=True, check=True)  # fmt: skip
        found = json.loads(dumped.stdout)
    finally:
        subprocess.run([*cli, "db", "stop"], env=env, capture_output=True)
        if ref:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "code")],
                           cwd=root, capture_output=True)  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)
    it = found["iterations"][0]
    return {"mode": mode, "prerelax": over, "wall_s": round(wall, 1),
            "iteration_wall_s": it.get("wall_time_s"), "relaxations": it.get("relaxations"),
            "counts": it.get("counts"), "duplicates": it.get("duplicates"),
            "selected": found["selected"]}  # fmt: skip


def same_selected(ref: list[dict], got: list[dict]) -> int:
    """How many of ``ref``'s selected minima ``got`` selected too."""
    from pymatgen.core import Structure

    from cspflow.dedup.match import MATCHER_KWARGS, matcher

    m = matcher(**MATCHER_KWARGS)
    others = [(g["energy_per_atom"], Structure.from_dict(g["structure"])) for g in got]
    n = 0
    for r in ref:
        s = Structure.from_dict(r["structure"])
        e = r["energy_per_atom"]
        n += any(abs(e - e2) <= ENERGY_TOL and m.fit(s, s2) for e2, s2 in others)
    return n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="new;new-bfgs:optimizer=BFGS")
    p.add_argument("--formula", default="Al2O3")
    p.add_argument("--max-atoms", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-iteration", type=int, default=40, help="candidates (default: the spec's)")
    p.add_argument("--json", help="write the whole report here")
    p.add_argument("--dump", help=argparse.SUPPRESS)  # child: print a campaign's selection
    args = p.parse_args(argv)
    if args.dump:
        print(json.dumps(dump_selection(args.dump), default=str))
        return {}
    cli = [str(Path(sys.executable).with_name("cspflow"))]
    rows = []
    for mode in args.modes.split(";"):
        row = run_mode(mode, args, cli)
        rows.append(row)
        r = row["relaxations"] or {}
        print(f"{mode}: {row['wall_s']} s (iteration {row['iteration_wall_s']} s), "
              f"{r.get('evaluations')} evaluations, {r.get('converged')} converged, "
              f"{r.get('pruned')} pruned, {r.get('failed')} failed, "
              f"{len(row['selected'])} selected", file=sys.stderr, flush=True)  # fmt: skip
    base = rows[0]
    for row in rows:
        row["speedup_x"] = round(base["wall_s"] / row["wall_s"], 2)
        row["same_selected_as_first"] = same_selected(base["selected"], row["selected"])
        r, b = row["relaxations"] or {}, base["relaxations"] or {}
        if r.get("evaluations") and b.get("evaluations"):
            row["fewer_evaluations_x"] = round(b["evaluations"] / r["evaluations"], 2)
    report = {"formula": args.formula, "max_atoms": args.max_atoms, "seed": args.seed,
              "modes": rows}  # fmt: skip
    print(
        "| mode | wall s | iteration s | speedup | evaluations | fewer | converged/pruned/failed "
        "| selected | same selected as first |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row["relaxations"] or {}
        sel = " ".join(f"{s['energy_per_atom']:.4f}" for s in
                       sorted(row["selected"], key=lambda s: s["energy_per_atom"]))  # fmt: skip
        print(f"| {row['mode']} | {row['wall_s']} | {row['iteration_wall_s']} | "
              f"{row['speedup_x']}x | {r.get('evaluations')} | {row.get('fewer_evaluations_x')}x | "
              f"{r.get('converged')}/{r.get('pruned')}/{r.get('failed')} | {sel} | "
              f"{row['same_selected_as_first']}/{len(base['selected'])} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
