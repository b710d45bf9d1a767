"""GPAW for real: Si and NaCl (2 atoms each) cell relaxations through atomate2's ASE maker."""

from __future__ import annotations

import math

import pytest
from jobflow import run_locally
from pymatgen.core import Lattice, Structure

from cspflow.dft.stage import DftStageMaker
from cspflow.schemas.dft import DftSpec
from cspflow.store import get_jobstore
from cspflow.testing import insert_candidate

EXPERIMENT_A = {"Si": 5.431, "NaCl": 5.640}


def _primitive(formula: str, a: float) -> Structure:
    if formula == "Si":
        conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"], [[0, 0, 0]])
    else:
        conv = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
    prim = conv.get_primitive_structure()
    assert len(prim) == 2
    return prim


def _add(db, structure: Structure) -> str:
    return insert_candidate(db, structure, mlip_energy=-4.0)


@pytest.mark.slow
@pytest.mark.gpaw
def test_dft_gpaw_si_and_nacl_cell_relaxations(db, settings, tmp_path):
    # Si starts at experiment (PBE expands it by about 1 %), NaCl 1.6 % compressed.
    start = {"Si": _primitive("Si", 5.431), "NaCl": _primitive("NaCl", 5.55)}
    ids = {formula: _add(db, s) for formula, s in start.items()}
    stage = DftStageMaker(settings=DftSpec(engine="gpaw", preset="fast"))
    run_locally(
        stage.make(list(ids.values()), campaign="test"),
        store=get_jobstore(settings),
        create_folders=True,
        root_dir=tmp_path,
    )
    for formula, cid in ids.items():
        cand = db["candidates"].find_one({"candidate_id": cid})
        dft = cand["relaxed"]["dft"]
        assert dft["status"] == "converged", dft["reason"]
        assert cand["status"] == "dft_done"
        assert cand["energy_per_atom"]["dft"] == pytest.approx(dft["energy_per_atom"])
        final = Structure.from_dict(dft["structure"])
        a_conv = final.lattice.a * math.sqrt(2)  # fcc primitive -> conventional
        ref = EXPERIMENT_A[formula]
        print(
            f"GPAW {formula} (2 atoms) cell relax: a = {a_conv:.3f} A (exp {ref}), "
            f"E = {dft['energy_per_atom']:.3f} eV/atom, wall time {dft['wall_time_s']:.1f} s"
        )
        assert abs(a_conv - ref) / ref < 0.03
        assert final.lattice.angles == pytest.approx((60, 60, 60), abs=0.5)
        a_start = start[formula].lattice.a * math.sqrt(2)
        assert a_conv > a_start * 1.005  # the cell really relaxed (expanded)
        assert dft["wall_time_s"] > 0


def test_dft_gpaw_missing_setups_marks_candidate_failed(db, settings, tmp_path, monkeypatch):
    from cspflow.settings import get_settings

    monkeypatch.setenv("CSPFLOW_GPAW_SETUP_PATH", str(tmp_path / "no-setups"))
    get_settings.cache_clear()
    cid = _add(db, _primitive("Si", 5.43))
    stage = DftStageMaker(settings=DftSpec(engine="gpaw"))
    run_locally(stage.make([cid]), store=get_jobstore(get_settings()), root_dir=tmp_path)
    cand = db["candidates"].find_one({"candidate_id": cid})
    assert cand["status"] == "failed"
    assert "PAW setups not found" in cand["relaxed"]["dft"]["reason"]
