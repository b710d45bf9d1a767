"""CP2K for real through atomate2 + custodian, plus the engine's bad-input paths."""

from __future__ import annotations

import pytest
from jobflow import run_locally
from pymatgen.core import Lattice, Structure

from cspflow.dft.stage import DftStageMaker
from cspflow.errors import CspflowError
from cspflow.schemas.dft import DftSpec
from cspflow.store import get_jobstore
from cspflow.testing import insert_candidate

SI8 = [
    [0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0],
    [0.25, 0.25, 0.25], [0.25, 0.75, 0.75], [0.75, 0.25, 0.75], [0.75, 0.75, 0.25],
]  # fmt: skip


def _si8(shift: float = 0.0) -> Structure:
    s = Structure(Lattice.cubic(5.43), ["Si"] * 8, SI8)
    if shift:
        s.translate_sites([0], [shift, 0.0, 0.0])
    return s


def _add(db, structure: Structure) -> str:
    return insert_candidate(db, structure, mlip_energy=-5.0)


def _run(settings, ids, spec, root):
    stage = DftStageMaker(settings=DftSpec(engine="cp2k", **spec))
    return run_locally(
        stage.make(ids, campaign="test", iteration=1),
        store=get_jobstore(settings),
        create_folders=True,
        root_dir=root,
    )


@pytest.mark.slow
@pytest.mark.cp2k
def test_dft_cp2k_si_static_and_relaxation(db, settings, tmp_path):
    si = _add(db, _si8())
    uranium = _add(db, Structure(Lattice.cubic(2.9), ["U"], [[0, 0, 0]]))
    _run(settings, [uranium, si], {"relax": "static"}, tmp_path / "static")

    cand = db["candidates"].find_one({"candidate_id": si})
    dft = cand["relaxed"]["dft"]
    assert dft["status"] == "converged", dft["reason"]
    assert cand["status"] == "dft_done" and dft["engine"] == "cp2k" and dft["preset"] == "fast"
    # GTH-PBE Si: about -107.5 eV/atom (4 valence electrons, pseudopotential reference).
    assert -110 < cand["energy_per_atom"]["dft"] < -100
    static_epa = dft["energy_per_atom"]
    print(f"CP2K Si8 static: E = {static_epa:.4f} eV/atom, wall time {dft['wall_time_s']:.1f} s")
    # The element the basis set lacks: one line, candidate failed, the other one went on.
    bad = db["candidates"].find_one({"candidate_id": uranium})
    assert bad["status"] == "failed" and "\n" not in bad["failure_reason"]
    assert "DZVP-MOLOPT-SR-GTH" in bad["relaxed"]["dft"]["reason"]
    assert "no entry for U" in bad["relaxed"]["dft"]["reason"]

    moved = _add(db, _si8(shift=0.002))
    _run(settings, [moved], {}, tmp_path / "relax")
    cand = db["candidates"].find_one({"candidate_id": moved})
    dft = cand["relaxed"]["dft"]
    assert dft["status"] == "converged", dft["reason"]
    assert cand["status"] == "dft_done"
    # A relaxation never ends above its (slightly displaced) start, and lands near the static.
    assert dft["energy_per_atom"] == pytest.approx(static_epa, abs=0.02)
    inputs = list((tmp_path / "relax").rglob("cp2k.inp*"))
    assert inputs, "no CP2K input written"
    from monty.io import zopen

    with zopen(sorted(inputs)[0], "rt") as fh:
        text = fh.read()
    assert "GEO_OPT" in text and "UKS False" in text and "DZVP-MOLOPT-SR-GTH" in text
    print(
        f"CP2K Si8 relax: E = {dft['energy_per_atom']:.4f} eV/atom, wall {dft['wall_time_s']:.1f} s"
    )


def test_dft_cp2k_missing_binary_marks_candidate_failed(db, settings, tmp_path, monkeypatch):
    from cspflow.settings import get_settings

    monkeypatch.setenv("CSPFLOW_CP2K_CMD", "/nonexistent/bin/cp2k.psmp")
    get_settings.cache_clear()
    cid = _add(db, _si8())
    _run(get_settings(), [cid], {}, tmp_path)
    cand = db["candidates"].find_one({"candidate_id": cid})
    reason = cand["relaxed"]["dft"]["reason"]
    assert cand["status"] == "failed" and "dft" not in cand["energy_per_atom"]
    assert "/nonexistent/bin/cp2k.psmp" in reason and "not found" in reason
    assert "\n" not in reason
    assert not list(tmp_path.rglob("cp2k.inp*"))


def test_dft_cp2k_basis_lookup_names_missing_elements(tmp_path):
    from cspflow.dft.cp2k import find_basis_and_potential

    (tmp_path / "Si").write_text(
        "basis_sets:\n  h1: {name: DZVP-MOLOPT-SR-GTH, alias_names: []}\n"
        "potentials:\n  h2: {name: GTH-PBE-q4, alias_names: [GTH-PBE]}\n"
    )
    found = find_basis_and_potential(["Si"], tmp_path, "DZVP-MOLOPT-SR-GTH", "GTH-PBE")
    assert found == {"Si": {"basis": "h1", "potential": "h2", "aux_basis": None}}
    with pytest.raises(CspflowError, match="no entry for Xe"):
        find_basis_and_potential(["Si", "Xe"], tmp_path, "DZVP-MOLOPT-SR-GTH", "GTH-PBE")
