"""Pure parts of the DFT stage: presets, the content hash, energy choice."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from cspflow.dft.presets import resolve_settings, settings_hash
from cspflow.dft.stage import final_energy_per_atom
from cspflow.dft.vasp import fuse2_encut
from cspflow.errors import CspflowError
from cspflow.schemas.dft import DftResultDoc, DftSpec


def _si() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def test_dft_presets_overrides_and_unknown_preset():
    name, s = resolve_settings(DftSpec(engine="vasp", incar={"EDIFF": 1e-6}, fmax=0.02))
    assert name == "mp" and s["incar"]["EDIFF"] == 1e-6 and s["fmax"] == 0.02
    name, s = resolve_settings(DftSpec(engine="gpaw", gpaw={"ecut": 400}, kpoint_density=3.0))
    assert name == "fast" and s["ecut"] == 400.0 and s["kpoint_density"] == 3.0
    _, s = resolve_settings(DftSpec(engine="cp2k", cp2k={"cutoff": 300}, relax="static"))
    assert s["input"]["cutoff"] == 300 and s["relax"] == "static"
    with pytest.raises(CspflowError, match="unknown gpaw preset 'huge'"):
        resolve_settings(DftSpec(engine="gpaw", preset="huge"))


def test_dft_settings_hash_keys_structure_engine_and_settings():
    si = _si()
    _, s = resolve_settings(DftSpec(engine="gpaw"))
    h = settings_hash(si, "gpaw", "fast", s)
    assert h == settings_hash(Structure.from_dict(si.as_dict()), "gpaw", "fast", dict(s))
    moved = si.copy()
    moved.translate_sites([1], [0.01, 0, 0])
    assert settings_hash(moved, "gpaw", "fast", s) != h
    assert settings_hash(si, "gpaw", "fast", {**s, "ecut": 301.0}) != h
    assert settings_hash(si, "cp2k", "fast", s) != h


def test_dft_fuse2_encut():
    assert fuse2_encut(["Na", "Cl"], {"Na": 259.561, "Cl": 262.472}) == 342
    with pytest.raises(CspflowError, match="ENMAX of Cl"):
        fuse2_encut(["Na", "Cl"], {"Na": 259.561})


def test_dft_final_energy_uses_only_converged_dft_or_mlip_for_engine_none():
    cand = {
        "energy_per_atom": {"mlip": -4.0, "dft": -5.0},
        "relaxed": {"dft": {"status": "converged"}},
    }
    assert final_energy_per_atom(cand, "gpaw") == -5.0
    assert final_energy_per_atom(cand, "none") == -4.0
    cand["relaxed"]["dft"]["status"] = "unconverged"
    assert final_energy_per_atom(cand, "gpaw") is None
    doc = DftResultDoc(engine="gpaw", preset="fast", settings_hash="x", status="unconverged")
    assert not doc.usable
