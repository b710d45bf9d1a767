"""Where one MLIP relaxation step goes: graph, forward, autograd, optimizer, Python overhead.

For one random symmetric Al2O3 cell of 10 atoms (``--formula``/``--atoms``), CHGNet on the CPU
with one torch thread, CPU times (median of ``--repeat`` runs, ms; CPU time of this process,
not wall time, so that a loaded machine does not inflate them):

* ``convert``: ASE Atoms -> pymatgen Structure (what :meth:`LoadedModel.evaluate` does first);
* ``graph``: CHGNet's crystal graph (``model.graph_converter``; its algorithm is printed);
* ``forward (energy)``: ``predict_graph(task="e")``;
* ``forward + autograd (efs)``: ``predict_graph(task="efs")`` (forces and stress by autograd);
* ``evaluate``: the whole :meth:`LoadedModel.evaluate` call of one structure;
* ``optimizer``: FrechetCellFilter gradient + one FIRE step;
* ``engine step``: one step of :func:`cspflow.prerelax.relax.relax_structures` (all of it),
  measured over a short relaxation; the rest is the engine's own Python overhead;
* the same per structure for a batch of 16.

    OMP_NUM_THREADS=1 .venv/bin/python bench/relax_profile.py [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from relax_engine import make_candidates


def timed(fn, repeat: int) -> float:
    """Median CPU time of ``fn()`` in ms (CPU, not wall: the machine is shared)."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formula", default="Al2O3")
    p.add_argument("--atoms", type=int, default=10)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    torch.set_num_threads(1)
    mlip = load_model("chgnet", device="cpu")
    model = mlip._backend
    structures = make_candidates(args.formula, args.atoms, 16, 0)
    s = structures[0]
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.info.clear()
    graph = model.graph_converter(s)
    r = args.repeat
    rows = {
        "convert": timed(lambda: AseAtomsAdaptor.get_structure(atoms), r),
        "graph": timed(lambda: model.graph_converter(s), r),
        "forward (energy)": timed(lambda: model.predict_graph(graph, task="e"), r),
        "forward + autograd (efs)": timed(lambda: model.predict_graph(graph, task="efs"), r),
        "evaluate": timed(lambda: mlip.evaluate([atoms]), r),
    }
    ev = mlip.evaluate([atoms])[0]

    def opt_step():
        work = atoms.copy()
        work.calc = SinglePointCalculator(work, energy=ev.energy, forces=ev.forces,
                                          stress=ev.stress)  # fmt: skip
        opt = FIRE(FrechetCellFilter(work), logfile=None)
        opt.optimizable.get_gradient()
        opt.step()

    rows["optimizer"] = timed(opt_step, r)
    outs = relax_structures([atoms], mlip, max_steps=r, prune=None)
    t = time.process_time()
    outs = relax_structures([atoms], mlip, max_steps=r, prune=None)
    rows["engine step"] = (time.process_time() - t) * 1000 / outs[0].evaluations
    rows["engine overhead"] = rows["engine step"] - rows["evaluate"] - rows["optimizer"]
    batch = [AseAtomsAdaptor.get_atoms(x) for x in structures]
    for a in batch:
        a.info.clear()
    rows["evaluate, batch of 16, per structure"] = timed(lambda: mlip.evaluate(batch), 3) / 16
    graphs = [model.graph_converter(x) for x in structures]
    rows["forward + autograd, batch of 16, per structure"] = (
        timed(lambda: model.predict_graph(graphs, task="efs", batch_size=16), 3) / 16
    )
    result = {
        "formula": args.formula,
        "atoms": args.atoms,
        "graph_converter": model.graph_converter.algorithm,
        "torch_threads": torch.get_num_threads(),
        "ms": {k: round(v, 1) for k, v in rows.items()},
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return result


if __name__ == "__main__":
    main()
