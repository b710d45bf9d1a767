"""The one reader of the engines' task documents: result fields and ionic-step frames.

The DFT engines hand back emmet's VASP ``TaskDoc``, atomate2's CP2K ``TaskDocument`` or
atomate2's ASE ``AseStructureTaskDoc`` (GPAW), as objects or as the plain JSON the JobStore
holds. :func:`result_from_task_doc` turns one into the fields of a
:class:`~cspflow.schemas.dft.DftResultDoc` (what :mod:`cspflow.dft.stage` and
:mod:`cspflow.dft.run` record); :func:`final_frame` and :func:`ionic_steps` give the labelled
configurations (structure, energy, forces, stress in ASE units) that :mod:`cspflow.learn.dataset`
trains on. Where each engine keeps what is known here only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_dict", "result_from_task_doc", "final_frame", "ionic_steps", "ase_stress"]

# ASE stress (eV/A^3, tension positive) from the kbar 3x3 tensors of emmet/atomate2 task docs
# (atomate2's ASE docs and VASP both store -10/GPa times ASE's stress).
_KBAR_TO_ASE = -0.1


def as_dict(doc: Any) -> dict:
    """The task document as plain JSON (``{}`` for None)."""
    from monty.json import jsanitize

    if doc is None:
        return {}
    return jsanitize(doc, strict=True, allow_bson=True, enum_values=True)


def _final_structure(data: dict) -> dict | None:
    """The final structure (as a dict) of a task document, or None."""
    return (data.get("output") or {}).get("structure") or data.get("structure")


def _wall_time(doc: dict) -> float | None:
    """Best-effort engine wall time from an atomate2/emmet task document."""
    output = doc.get("output") or {}
    if output.get("elapsed_time") is not None:  # ASE
        return float(output["elapsed_time"])
    stats = doc.get("run_stats") or {}
    for key in ("overall", "standard"):
        entry = stats.get(key) or {}
        for name in ("elapsed_time", "total_time"):
            if entry.get(name):
                return float(entry[name])
    for entry in stats.values():
        if isinstance(entry, dict):
            for name in ("elapsed_time", "total_time"):
                if entry.get(name):
                    return float(entry[name])
    return None


def result_from_task_doc(doc: Any, relax: str | None = None) -> dict[str, Any]:
    """Extract status, reason, final structure and energies from an engine task document.

    Works for emmet's VASP ``TaskDoc``, atomate2's CP2K ``TaskDocument`` and atomate2's ASE
    ``AseStructureTaskDoc`` (objects or their dicts). ``None`` (the engine job raised) gives a
    failed result.
    """
    data = as_dict(doc)
    if not data:
        return {
            "status": "failed",
            "reason": "the DFT job raised before producing a task document (custodian gave up "
            "or the program crashed); see the job's run directory",
        }
    output = data.get("output") or {}
    structure = _final_structure(data)
    energy = output.get("energy")
    nsites = len(structure["sites"]) if structure else None
    epa = output.get("energy_per_atom")
    if epa is None and energy is not None and nsites:
        epa = float(energy) / nsites
    state = str(data.get("state") or "").lower()
    reasons = []
    if state and state not in ("successful", "success"):
        reasons.append(f"task state {state}")
    if data.get("is_force_converged") is False and relax != "static":
        reasons.append("forces not converged within the step limit")
    if energy is None:
        reasons.append("no final energy")
    status = "converged" if not reasons else ("failed" if energy is None else "unconverged")
    spacegroup = None
    if structure:
        from pymatgen.core import Structure

        try:
            spacegroup = int(Structure.from_dict(structure).get_space_group_info(symprec=0.1)[1])
        except Exception:  # spglib can fail on a broken cell; the number is informative only
            spacegroup = None
    return {
        "spacegroup": spacegroup,
        "status": status,
        "reason": "; ".join(reasons) or None,
        "structure": structure,
        "energy": None if energy is None else float(energy),
        "energy_per_atom": None if epa is None else float(epa),
        "nsites": nsites,
        "wall_time_s": _wall_time(data),
    }


def ase_stress(kbar: Any) -> np.ndarray | None:
    """Voigt stress in eV/A^3 (ASE convention) from a kbar 3x3 tensor, or None."""
    from ase.stress import full_3x3_to_voigt_6_stress
    from ase.units import GPa

    if kbar is None:
        return None
    arr = np.asarray(kbar, dtype=float)
    if arr.shape == (3, 3):
        return full_3x3_to_voigt_6_stress(arr) * _KBAR_TO_ASE * GPa
    if arr.shape == (6,):
        return arr * _KBAR_TO_ASE * GPa
    return None


def final_frame(data: dict) -> dict[str, Any]:
    """(structure, energy, forces, stress) of the final configuration of a task document.

    ``stress`` is in ASE units (:func:`ase_stress`); any of the four may be None.
    """
    output = data.get("output") or {}
    return {
        "structure": _final_structure(data),
        "energy": output.get("energy"),
        "forces": output.get("forces"),
        "stress": ase_stress(output.get("stress")),
    }


def ionic_steps(data: dict) -> list[dict]:
    """(structure, energy, forces, stress) dicts of every ionic step in a task document."""
    output = data.get("output") or {}
    steps: list[dict] = []
    raw = output.get("ionic_steps")
    if isinstance(raw, list) and raw:  # atomate2 ASE task doc
        for s in raw:
            steps.append(
                {
                    "structure": s.get("mol_or_struct") or s.get("structure"),
                    "energy": s.get("energy"),
                    "forces": s.get("forces"),
                    "stress": ase_stress(s.get("stress")),
                }
            )
        return steps
    calcs = data.get("calcs_reversed") or []
    if calcs:  # emmet VASP TaskDoc: ionic steps of the last calculation
        for s in ((calcs[0].get("output") or {}).get("ionic_steps")) or []:
            energy = s.get("e_0_energy", s.get("e_fr_energy"))
            steps.append(
                {
                    "structure": s.get("structure"),
                    "energy": energy,
                    "forces": s.get("forces"),
                    "stress": ase_stress(s.get("stress")),
                }
            )
    return steps
