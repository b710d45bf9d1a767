"""Replay the screening rule on recorded full relaxations: evaluations saved, lowest minima kept.

The engine's trajectories do not depend on the pruning rule (a finished structure follows
exactly its full relaxation, a pruned one stops on it), so a rule replayed on the full
trajectories that ``bench/relax_engine.py --modes new --trace FILE`` records gives exactly the
model evaluations the rule would spend and which minima it would keep. For every combination
of ``--fmax-screen``, ``--hold``, ``--window`` and ``--screen-steps`` it prints the evaluations
against the full relaxations, how many of the five lowest unique minima of the full
relaxations are kept (one candidate that ends at a minimum suffices; StructureMatcher with
cspflow's dedup tolerances, 5 meV/atom), and the window those five need.

    .venv/bin/python bench/relax_replay.py bench/results/relax_trace_fire64.json \\
        [--fmax-screen 0.1,0.15,0.2] [--hold 1,2,3] [--window 0.1,0.3] [--screen-steps 0,100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

Point = tuple[int, float, float, float]  # step, energy per atom, fmax, volume ratio


def minima_clusters(cands: list[dict]) -> list[list[int]]:
    """Converged candidates grouped by the minimum they end at, lowest first."""
    from pymatgen.core import Structure

    from cspflow.dedup.match import MATCHER_KWARGS, matcher

    m = matcher(**MATCHER_KWARGS)
    done = sorted(
        (k for k, c in enumerate(cands) if c["status"] == "converged"), key=lambda k: cands[k]["e"]
    )
    clusters: list[list[int]] = []
    for k in done:
        s = Structure.from_dict(cands[k]["structure"])
        for cl in clusters:
            j = cl[0]
            if abs(cands[j]["e"] - cands[k]["e"]) <= 0.005 and m.fit(
                s, Structure.from_dict(cands[j]["structure"])
            ):
                cl.append(k)
                break
        else:
            clusters.append([k])
    return clusters


def screened_at(trace: list[Point], fmax_screen: float, hold: int, cap: int) -> Point | None:
    """Where a trajectory counts as screened (None: it ended before)."""
    below = 0
    for point in trace:
        below = below + 1 if point[2] <= fmax_screen else 0
        if below >= hold or (cap and point[0] >= cap):
            return point
    return None


def replay(cands: list[dict], clusters: list[list[int]], fs: float, hold: int, window: float,
           cap: int) -> dict:  # fmt: skip
    """Evaluations and kept minima of one rule; ``need``: the window the five lowest need."""
    hits = {k: screened_at(c["trace"], fs, hold, cap) for k, c in enumerate(cands)}
    screened = [h[1] for h in hits.values() if h is not None]
    best = min(screened) if screened else 0.0
    cost, lost = 0, set()
    for k, c in enumerate(cands):
        h = hits[k]
        if h is not None and h[1] > best + window:
            cost += h[0] + 1
            lost.add(k)
        else:
            cost += c["evals"]
    top = clusters[:5]
    kept = sum(any(k not in lost for k in cl) for cl in top)
    need = max(
        (min((hits[k][1] - best) if hits[k] else 0.0 for k in cl) for cl in top), default=0.0
    )
    return {"evaluations": cost, "kept5": kept, "pruned_converged": len(lost & set(sum(top, []))),
            "need_window": round(need, 3)}  # fmt: skip


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", help="JSON written by bench/relax_engine.py --trace")
    p.add_argument("--fmax-screen", default="0.1,0.15,0.2,0.3")
    p.add_argument("--hold", default="1,2,3,5")
    p.add_argument("--window", default="0.1,0.2,0.3")
    p.add_argument("--screen-steps", default="0,100,150", help="0: no step cap")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        cands = json.loads(Path(args.trace).read_text())["cands"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read the trace {args.trace}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    clusters = minima_clusters(cands)
    full = sum(c["evals"] for c in cands)
    rows = []
    grid = itertools.product(floats(args.fmax_screen), [int(h) for h in args.hold.split(",")],
                             floats(args.window), [int(s) for s in args.screen_steps.split(",")])  # fmt: skip
    for fs, hold, window, cap in grid:
        r = replay(cands, clusters, fs, hold, window, cap)
        rows.append({"fmax_screen": fs, "hold": hold, "window": window, "screen_steps": cap or None,
                     **r, "fewer_x": round(full / r["evaluations"], 2)})  # fmt: skip
    if args.json:
        print(json.dumps({"full_evaluations": full, "rows": rows}))
        return rows
    lows = ", ".join(f"{cands[cl[0]]['e']:.4f} (#{cl[0]})" for cl in clusters[:5])
    print(f"{len(cands)} candidates, {full} evaluations in full; five lowest minima: {lows}")
    print("fmax_screen hold window screen_steps | evaluations fewer_x kept5 need_window")
    for r in rows:
        print(f"{r['fmax_screen']:>11} {r['hold']:>4} {r['window']:>6} {str(r['screen_steps']):>12} | "
              f"{r['evaluations']:>11} {r['fewer_x']:>7} {r['kept5']:>5} {r['need_window']:>11}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
