"""Named DFT parameter sets per engine, their resolution against a spec, and the content hash.

Pure data and pure functions (no engine imports): a preset is a plain dict, a spec's explicit
fields override it, and :func:`settings_hash` keys a candidate's DFT work by
(input structure + engine + resolved settings), so a rerun with the same inputs can return the
stored result instead of running the code again.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError
from cspflow.schemas.dft import DEFAULT_PRESET

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from cspflow.schemas.dft import DftSpec

__all__ = [
    "PRESETS",
    "DEFAULT_PRESET",
    "EV_PER_A_IN_HA_PER_BOHR",
    "resolve_settings",
    "settings_hash",
    "structure_key",
]

# 1 Hartree/bohr in eV/Angstrom: CP2K's MAX_FORCE is in Ha/bohr.
EV_PER_A_IN_HA_PER_BOHR = 51.42208619083232

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vasp": {
        # Materials Project inputs (MPRelaxSet through atomate2's MPGGARelaxMaker). Only after
        # the MP2020 correction (dft.correction, this preset's default; cspflow.dft.corrections)
        # do the energies share a hull with MP entries processed the same way.
        "mp": {"input_set": "MPRelaxSet", "relax": "cell", "incar": {}, "kpoints": {}},
        # FUSE2 protocol: PBE, 220 ionic steps or forces below 0.03 eV/A, Gamma-centred
        # KSPACING 0.3, ENCUT 1.3 x max ENMAX of the POTCARs.
        "fuse2": {
            "input_set": "MPRelaxSet",
            "relax": "cell",
            "encut_scale": 1.3,
            "incar": {"NSW": 220, "EDIFFG": -0.03, "KSPACING": 0.3, "KGAMMA": True, "ISIF": 3},
            "kpoints": {},
        },
    },
    "cp2k": {
        # Small cells and tests: spin-restricted PBE, DZVP-MOLOPT-SR-GTH / GTH-PBE, no auxiliary
        # basis, Gamma point only with orbital transformation, loose SCF, few ionic steps.
        "fast": {
            "relax": "positions",
            "basis": "DZVP-MOLOPT-SR-GTH",
            "potential": "GTH-PBE",
            "kpoints": None,
            "fmax": 0.1,
            "steps": 8,
            "input": {
                "spin_polarized": False,
                "cutoff": 200,
                "rel_cutoff": 30,
                "ngrids": 4,
                "eps_default": 1e-10,
                "eps_pgf_orb": 1e-10,
                "eps_scf": 1e-5,
                "max_scf": 30,
                "smearing": False,
                "ot": True,
                "preconditioner": "FULL_ALL",
                "algorithm": "STRICT",
                "rotation": False,
                "activate_motion": {"max_drift": 0.03, "rms_drift": 0.02},
            },
        },
        # atomate2's defaults (UKS, TZVP-MOLOPT + ADMM, reciprocal density 64): production.
        "accurate": {
            "relax": "cell",
            "basis": None,
            "potential": None,
            "kpoints": {},
            "fmax": 0.025,
            "steps": 200,
            "input": {},
        },
    },
    "gpaw": {
        # Plane waves, PBE; 4x4x4 k-points for 2-atom fcc cells (Si, NaCl).
        "fast": {
            "relax": "cell",
            "ecut": 300.0,
            "kpoint_density": 1.8,
            "fmax": 0.05,
            "steps": 60,
            "calculator": {"xc": "PBE", "occupations": {"name": "fermi-dirac", "width": 0.05}},
        },
        "accurate": {
            "relax": "cell",
            "ecut": 500.0,
            "kpoint_density": 4.0,
            "fmax": 0.02,
            "steps": 300,
            "calculator": {"xc": "PBE", "occupations": {"name": "fermi-dirac", "width": 0.02}},
        },
    },
    "none": {"none": {}},
}


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_settings(spec: DftSpec) -> tuple[str, dict[str, Any]]:
    """Return ``(preset_name, settings)``: the preset with the spec's explicit overrides applied.

    Raises
    ------
    CspflowError
        When the preset is not defined for the engine.
    """
    engine = spec.engine
    name = spec.preset or DEFAULT_PRESET[engine]
    presets = PRESETS[engine]
    if name not in presets:
        raise CspflowError(
            f"unknown {engine} preset {name!r}; choose one of: {', '.join(sorted(presets))}"
        )
    settings = copy.deepcopy(presets[name])
    if engine == "none":
        return name, settings
    for key in ("relax", "fmax", "steps"):
        value = getattr(spec, key)
        if value is not None:
            settings[key] = value
    if spec.dispersion is not None:  # only when set: hashes of runs without it stay as they were
        settings["dispersion"] = spec.dispersion
    if engine == "vasp":
        settings["incar"] = _merge(settings.get("incar", {}), spec.incar)
        settings["kpoints"] = _merge(settings.get("kpoints", {}), spec.kpoints)
        if spec.enmax:
            settings["enmax"] = dict(spec.enmax)
    elif engine == "cp2k":
        settings["input"] = _merge(settings.get("input", {}), spec.cp2k)
    elif engine == "gpaw":
        if spec.kpoint_density is not None:
            settings["kpoint_density"] = spec.kpoint_density
        overrides = dict(spec.gpaw)
        if "ecut" in overrides:
            settings["ecut"] = float(overrides.pop("ecut"))
        settings["calculator"] = _merge(settings.get("calculator", {}), overrides)
    return name, settings


def structure_key(structure: Structure, decimals: int = 6) -> dict[str, Any]:
    """Return a canonical, rounded description of a structure for hashing."""
    return {
        "lattice": [[round(float(x), decimals) for x in row] for row in structure.lattice.matrix],
        "species": [site.species_string for site in structure],
        "frac_coords": [
            [round(float(x) % 1.0, decimals) % 1.0 for x in site.frac_coords] for site in structure
        ],
        "charge": float(structure.charge or 0.0),
    }


def settings_hash(structure: Structure, engine: str, preset: str, settings: dict) -> str:
    """Content hash of (input structure + engine + preset + resolved settings)."""
    payload = {
        "structure": structure_key(structure),
        "engine": engine,
        "preset": preset,
        "settings": settings,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
