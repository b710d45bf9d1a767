"""What the benchmark scripts share: test structures, workers, and waiting on FireWorks.

``bench_engine.py`` and ``bench_prerelax.py`` both run MLIP batch jobs through FireWorks on
the throwaway server of :func:`cspflow.bench.runner.bench_server`, executed by ``cspflow worker
start`` processes; they import these helpers from here (the scripts' directory is on
``sys.path`` when one is run as ``python bench/<script>.py``), never from each other.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np


def candidates(n: int, seed: int = 0):
    """``n`` random 8-20 atom structures from perturbed prototype supercells."""
    from ase.build import bulk
    from ase.spacegroup import crystal

    sto = crystal(
        ["Sr", "Ti", "O"],
        basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
        spacegroup=221,
        cellpar=[3.905, 3.905, 3.905, 90, 90, 90],
    )
    protos = [
        (bulk("Si", "diamond", 5.43, cubic=True), [(1, 1, 1), (1, 1, 2)]),  # 8, 16
        (bulk("NaCl", "rocksalt", 5.64, cubic=True), [(1, 1, 1), (1, 1, 2)]),  # 8, 16
        (bulk("MgO", "rocksalt", 4.21), [(2, 2, 2), (2, 2, 1)]),  # 16, 8
        (sto, [(2, 1, 1), (3, 1, 1), (2, 2, 1)]),  # 10, 15, 20
    ]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        proto, reps = protos[k % len(protos)]
        atoms = proto.repeat(reps[rng.integers(len(reps))])
        strain = np.eye(3) * rng.uniform(0.95, 1.08) + rng.normal(0, 0.02, (3, 3))
        atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        atoms.positions += rng.normal(0, 0.12, atoms.positions.shape)
        atoms.info.clear()  # ase.spacegroup.crystal leaves a Spacegroup object there
        out.append(atoms)
    return out


def _env(settings, db_name: str) -> dict[str, str]:
    """Environment of a worker process: the benchmark's server, ``db_name``, its run dir."""
    from cspflow.db import resolve_uri

    env = dict(os.environ)
    env.update({"CSPFLOW_DB_URI": resolve_uri(settings), "CSPFLOW_DB_NAME": db_name,
                "CSPFLOW_WORK_DIR": str(settings.runs_dir), "OMP_NUM_THREADS": env.get(
                    "OMP_NUM_THREADS", "1")})  # fmt: skip
    return env


def _worker(
    settings, db_name: str, category: str, name: str, log: Path, until_empty: bool = True
) -> subprocess.Popen:
    """A ``cspflow worker start`` process on the benchmark's server, its output in ``log``.

    ``until_empty``: rapidfire until no job is left (throughput); without it the worker keeps
    polling (a warm worker, what a cluster's worker daemon is) until terminated.
    """
    from cspflow.scheduler.workers import worker_command

    return subprocess.Popen(
        worker_command(category, sleep=1, name=name, until_empty=until_empty),
        env=_env(settings, db_name), stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _insert_batches(db, structures, batch_size: int, batches: int) -> list[list[str]]:
    """Insert ``structures`` (ASE) as generated candidates, ``batches`` lists of ids."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from cspflow.testing import insert_candidate

    ids = []
    for b in range(batches):
        part = structures[b * batch_size : (b + 1) * batch_size]
        ids.append([insert_candidate(db, AseAtomsAdaptor.get_structure(a), status="generated",
                                     campaign="bench", iteration=b) for a in part])  # fmt: skip
    return ids


def _wait(lp, n_completed: int, timeout: float) -> None:
    """Until ``n_completed`` fireworks completed; raise if one fizzled or on ``timeout`` (s)."""
    t0 = time.monotonic()
    while lp.fireworks.count_documents({"state": "COMPLETED"}) < n_completed:
        if lp.fireworks.count_documents({"state": "FIZZLED"}):
            raise RuntimeError("a firework fizzled; see the worker log")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"fewer than {n_completed} fireworks completed in {timeout} s")
        time.sleep(0.2)  # light on the server; at most 0.2 s late
