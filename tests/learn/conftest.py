"""Real GPAW data for the learn tests, computed once per session through the DFT stage.

Eight 2-atom Si cells (strained, rattled) go through cspflow's own DFT stage with GPAW (plane
waves 200 eV, 2x2x2 k-points: coarse, but real DFT, about 1 s per SCF on 2 cores): four static
runs and four short positions relaxations whose ionic steps land in the JobStore's task
documents. Candidates 0-3 are iteration 0, 4-7 iteration 1. The session's candidates and
JobStore documents are then copied into each test's fresh database (``si_db``).

``LEARN_TEST_DATA=FILE`` reuses a dump of this data (written to the session's tmp dir as
``si_gpaw.json``) for local iteration; CI always computes it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from cspflow.settings import get_settings

GPAW_SPEC = {
    "engine": "gpaw",
    "preset": "fast",
    "kpoint_density": 1.0,
    "gpaw": {"ecut": 200.0, "kpts": [2, 2, 2], "convergence": {"energy": 1e-4, "density": 1e-3}},
}


def si_cells(n: int = 8, seed: int = 3):
    """Si2 primitive cells, strained +-4 %, every odd one rattled (relaxation starts)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    prim = conv.get_primitive_structure()
    cells = []
    for k in range(n):
        s = prim.copy()
        strain = np.eye(3) * rng.uniform(0.96, 1.04) + rng.normal(0, 0.01, (3, 3))
        s = Structure(s.lattice.matrix @ strain, s.species, s.frac_coords)
        if k % 2:
            s.translate_sites([1], rng.normal(0, 0.12, 3), frac_coords=False)
        cells.append(s)
    return cells


def _candidate(structure, iteration: int, k: int) -> dict:
    cid = f"si-{k:02d}"  # fixed ids: the held-out split (a hash of the id) is fixed too
    return {
        "candidate_id": cid,
        "campaign": "learn-test",
        "iteration": iteration,
        "formula": "Si",
        "chemsys": "Si",
        "fingerprint_hash": cid,
        "nsites": len(structure),
        "structure": structure.as_dict(),
        "status": "selected",
        "energy_per_atom": {},
    }


def _compute(db_server, tmp: Path) -> dict:
    from jobflow import run_locally

    from cspflow.dft.stage import DftStageMaker
    from cspflow.schemas.dft import DftSpec
    from cspflow.store import get_database, get_jobstore

    name = f"learn_data_{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("CSPFLOW_"):
                mp.delenv(key)
        mp.setenv("CSPFLOW_CONFIG_FILE", str(tmp / "no-config.yaml"))
        mp.setenv("CSPFLOW_DATA_DIR", str(db_server.data_dir))
        mp.setenv("CSPFLOW_DB_URI", db_server.uri)
        mp.setenv("CSPFLOW_DB_NAME", name)
        mp.setenv("CSPFLOW_WORK_DIR", str(tmp / "runs"))
        mp.setenv("OMP_NUM_THREADS", "1")
        get_settings.cache_clear()
        settings = get_settings()
        db = get_database(settings)
        cells = si_cells()
        docs = [_candidate(s, 0 if k < 4 else 1, k) for k, s in enumerate(cells)]
        db.candidates.insert_many([dict(d) for d in docs])
        static = [d["candidate_id"] for k, d in enumerate(docs) if k % 2 == 0]
        relax = [d["candidate_id"] for k, d in enumerate(docs) if k % 2 == 1]
        store = get_jobstore(settings)
        for ids, extra in (
            (static, {"relax": "static"}),
            (relax, {"relax": "positions", "fmax": 0.25, "steps": 12}),
        ):
            stage = DftStageMaker(settings=DftSpec(**{**GPAW_SPEC, **extra}))
            run_locally(
                stage.make(ids, campaign="learn-test"),
                store=store,
                create_folders=True,
                root_dir=tmp / "runs",
            )
        candidates = list(db.candidates.find({}, {"_id": 0}))
        uuids = [c["relaxed"]["dft"]["task_uuid"] for c in candidates if c.get("relaxed")]
        outputs = list(db.outputs.find({"uuid": {"$in": uuids}}, {"_id": 0}))
        get_settings.cache_clear()
    from monty.json import jsanitize

    return jsanitize({"candidates": candidates, "outputs": outputs}, strict=False)


@pytest.fixture(scope="session")
def si_gpaw_data(db_server, tmp_path_factory) -> dict:
    """Candidates + JobStore task documents of real GPAW runs on Si2 cells (see module doc)."""
    reuse = os.environ.get("LEARN_TEST_DATA")
    if reuse and Path(reuse).is_file():
        return json.loads(Path(reuse).read_text())
    tmp = tmp_path_factory.mktemp("learn-gpaw")
    data = _compute(db_server, tmp)
    (tmp / "si_gpaw.json").write_text(json.dumps(data))
    return data


def add_si_data(db, data: dict, iterations=(0, 1)) -> list[str]:
    """Copy the session's GPAW candidates of ``iterations`` (and their task docs) into ``db``."""
    import copy

    cands = [copy.deepcopy(c) for c in data["candidates"] if c["iteration"] in iterations]
    uuids = {c["relaxed"]["dft"]["task_uuid"] for c in cands}
    db.candidates.insert_many(cands)
    db.outputs.insert_many([copy.deepcopy(o) for o in data["outputs"] if o["uuid"] in uuids])
    return [c["candidate_id"] for c in cands]


@pytest.fixture
def si_db(db, si_gpaw_data):
    """This test's database holding all the GPAW Si data (candidates + JobStore outputs)."""
    add_si_data(db, si_gpaw_data)
    return db


@pytest.fixture
def add_si(si_gpaw_data):
    """``add_si(db, iterations)``: add the GPAW Si data of some iterations (new DFT arriving)."""
    return lambda db, iterations=(0, 1): add_si_data(db, si_gpaw_data, iterations)
