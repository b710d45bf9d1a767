"""Hard constraints every generated candidate must satisfy.

Defaults follow the random-structure-search literature (AIRSS, PyXtal, USPEX): no two atoms
closer than half the sum of their covalent radii, cell angles between 20 and 160 degrees, and a
volume between 0.5 and 1.5 times the sum of atomic volumes. The atomic volume of an element is
the mean of its covalent-radius and van der Waals-radius sphere volumes (PyXtal's own range), a
reference that puts known structures at 0.55-1.4 of it (MgAl2O4 spinel 0.80, SrTiO3 perovskite
0.61, diamond Si 0.90, CsCl 0.55, wurtzite ZnO 1.36).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

__all__ = ["Constraints", "covalent_radius", "reference_volume", "violations", "fix_volume"]


@lru_cache(maxsize=256)
def _radii(symbol: str) -> tuple[float, float]:
    from pyxtal.database.element import Element

    el = Element(symbol)
    return float(el.covalent_radius), float(el.vdw_radius)


def covalent_radius(symbol: str) -> float:
    """Covalent radius of an element in Angstrom (PyXtal's table)."""
    return _radii(symbol)[0]


def reference_volume(structure_or_counts: Structure | dict[str, float]) -> float:
    """Sum of atomic volumes (Angstrom^3) of a structure or an element -> count mapping."""
    if isinstance(structure_or_counts, Structure):
        counts = {el.symbol: n for el, n in structure_or_counts.composition.items()}
    else:
        counts = dict(structure_or_counts)
    total = 0.0
    for symbol, n in counts.items():
        rc, rv = _radii(symbol)
        total += n * 4.0 / 3.0 * np.pi * (rc**3 + rv**3) / 2.0
    return total


class Constraints(BaseModel):
    """Hard limits on a candidate's geometry (all configurable from the campaign spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_distance_factor: float = Field(
        0.5,
        gt=0,
        description="Minimum interatomic distance as a fraction of the sum of covalent radii.",
    )
    min_angle: float = Field(
        20.0, gt=0, lt=90, description="Smallest allowed cell angle (degrees)."
    )
    max_angle: float = Field(
        160.0, gt=90, lt=180, description="Largest allowed cell angle (degrees)."
    )
    min_volume_factor: float = Field(
        0.5, gt=0, description="Smallest volume as a fraction of the sum of atomic volumes."
    )
    max_volume_factor: float = Field(
        1.5, gt=0, description="Largest volume as a fraction of the sum of atomic volumes."
    )


def violations(structure: Structure, constraints: Constraints | None = None) -> list[str]:
    """Return every constraint the structure breaks (empty when it satisfies all).

    Parameters
    ----------
    structure
        The candidate.
    constraints
        Limits to check (defaults: :class:`Constraints`).

    Returns
    -------
    list of str
        One short description per violated constraint.
    """
    c = constraints or Constraints()
    problems = []
    angles = structure.lattice.angles
    if min(angles) < c.min_angle or max(angles) > c.max_angle:
        problems.append(f"cell angles {tuple(round(a, 1) for a in angles)} outside "
                        f"{c.min_angle}-{c.max_angle} deg")  # fmt: skip
    ratio = structure.volume / reference_volume(structure)
    if not c.min_volume_factor <= ratio <= c.max_volume_factor:
        problems.append(f"volume {ratio:.2f} x the atomic volumes, outside "
                        f"{c.min_volume_factor}-{c.max_volume_factor}")  # fmt: skip
    radii = np.array([covalent_radius(site.specie.symbol) for site in structure])
    rmax = 2 * radii.max() * c.min_distance_factor
    centers, points, _, dists = structure.get_neighbor_list(rmax)
    if len(dists):
        limit = c.min_distance_factor * (radii[centers] + radii[points])
        bad = dists < limit
        if bad.any():
            i = int(np.argmin(dists / limit))
            problems.append(
                f"atoms {centers[i]} and {points[i]} are {dists[i]:.2f} A apart, closer than "
                f"{limit[i]:.2f} A"
            )
    return problems


def fix_volume(structure: Structure, constraints: Constraints | None = None) -> Structure:
    """Return a copy scaled into the allowed volume window (unchanged when already inside)."""
    c = constraints or Constraints()
    ref = reference_volume(structure)
    ratio = structure.volume / ref
    lo, hi = c.min_volume_factor * 1.02, c.max_volume_factor * 0.98
    out = structure.copy()
    if ratio < lo:
        out.scale_lattice(lo * ref)
    elif ratio > hi:
        out.scale_lattice(hi * ref)
    return out
