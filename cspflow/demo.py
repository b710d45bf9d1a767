"""A two-job platform check: one cpu job and one gpu job on the embedded database.

``make demo`` runs this until the campaign loop lands: it proves that the database, the
LaunchPad, stage routing and both worker categories work on this machine.
"""

from __future__ import annotations

from jobflow import Flow, job

from cspflow.jobs import stage_metadata

__all__ = ["build_structure", "analyse_structure", "platform_flow"]


@job(metadata=stage_metadata("generate"))
def build_structure(formula: str, a: float):
    """Build a conventional cubic rocksalt/diamond-type cell (cpu stage)."""
    from pymatgen.core import Lattice, Structure

    species = {"Si": ["Si", "Si"], "NaCl": ["Na", "Cl"]}[formula]
    structure = Structure.from_spacegroup(
        "Fd-3m" if formula == "Si" else "Fm-3m",
        Lattice.cubic(a),
        species[:1] if formula == "Si" else species,
        [[0, 0, 0]] if formula == "Si" else [[0, 0, 0], [0.5, 0.5, 0.5]],
    )
    return structure


@job(metadata=stage_metadata("prerelax"))
def analyse_structure(structure) -> dict:
    """Symmetry and density of a structure (gpu stage: where the MLIP pre-relax will run)."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = structure if isinstance(structure, Structure) else Structure.from_dict(structure)
    sga = SpacegroupAnalyzer(s, symprec=0.01)
    return {
        "formula": s.composition.reduced_formula,
        "nsites": len(s),
        "spacegroup": sga.get_space_group_symbol(),
        "density": round(float(s.density), 4),
        "primitive_nsites": len(sga.get_primitive_standard_structure()),
    }


def platform_flow(formula: str = "Si", a: float = 5.43, name: str = "platform-check") -> Flow:
    """Return the two-job flow: build (cpu) -> analyse (gpu)."""
    build = build_structure(formula, a)
    analyse = analyse_structure(build.output)
    return Flow([build, analyse], output=analyse.output, name=name)
