"""Pure structure matching for deduplication: pymatgen's StructureMatcher, set up once.

cspflow calls two structures the same when pymatgen's StructureMatcher finds them the same with
:data:`MATCHER_KWARGS` (ltol 0.2, stol 0.3, angle_tol 5, scale=True, primitive cells). Both
sides may enter the matcher already reduced (``fit(..., skip_structure_reduction=True)``,
:func:`reduced_cell` and :func:`cells_match`): that is the same comparison as
``StructureMatcher.fit`` on the original structures, which spends about 75% of its time on
those two reductions. :func:`matcher` is the one place a StructureMatcher is built, also for
callers with tolerances of their own (a benchmark set's). Reduced cells are stored in the
``fingerprints`` collection in the compact form of :func:`cell_document`; :func:`content_hash`
identifies an exact cell. No database access here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import numpy as np
from pymatgen.core import Structure

__all__ = [
    "MATCHER_KWARGS",
    "matcher",
    "structures_match",
    "reduced_cell",
    "cells_match",
    "cell_document",
    "cell_from_document",
    "content_hash",
]

MATCHER_KWARGS: dict[str, Any] = {
    "ltol": 0.2,
    "stol": 0.3,
    "angle_tol": 5,
    "primitive_cell": True,
    "scale": True,
    "attempt_supercell": True,
}


def matcher(ltol: float, stol: float, angle_tol: float, **options: Any) -> Any:
    """Build a pymatgen StructureMatcher with these tolerances (the one place cspflow does).

    ``matcher(**MATCHER_KWARGS)`` is cspflow's dedup criterion; callers with tolerances of
    their own (a benchmark set's :class:`~cspflow.bench.MatchSpec`) pass those, and any other
    StructureMatcher option keeps pymatgen's default unless given in ``options``.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, **options)


_matcher = None


def _get_matcher() -> Any:
    global _matcher
    if _matcher is None:
        _matcher = matcher(**MATCHER_KWARGS)
    return _matcher


def structures_match(a: Structure, b: Structure) -> bool:
    """True when pymatgen's StructureMatcher (cspflow's tolerances) finds a and b the same."""
    return bool(_get_matcher().fit(a, b))


def reduced_cell(structure: Structure) -> Structure:
    """Return the cell StructureMatcher compares: the primitive cell of the Niggli cell.

    The same two steps, in the same order and with the same defaults, as the matcher's own
    preprocessing with ``primitive_cell=True`` (``StructureMatcher._get_reduced_structure``),
    so ``cells_match(reduced_cell(a), reduced_cell(b)) == structures_match(a, b)``.
    """
    return _niggli_cell(structure).get_primitive_structure()


def _niggli_cell(structure: Structure) -> Structure:
    return Structure.from_sites(structure).get_reduced_structure(reduction_algo="niggli")


class _Confirmation:
    """Confirms stored reduced cells against one query structure, reducing it at most once.

    Before the primitive-cell search (the costly half of :func:`reduced_cell`), the query's
    Niggli cell is compared with the stored cell by :func:`_same_cell`: a stored structure
    re-submitted in its primitive cell (rotated, shifted, reordered, rescaled) is the same cell
    already, and where the check says so the two are one crystal to 1e-3, which
    StructureMatcher calls a match.
    """

    def __init__(self, structure: Structure, cell: Structure | None = None) -> None:
        self.structure = structure
        self.cell = cell  # reduced_cell(structure) once computed
        self._niggli: Structure | None = None

    def matches(self, stored: Structure) -> bool:
        """True when the query and a stored reduced cell are the same structure."""
        if self.cell is None:
            if self._niggli is None:
                self._niggli = _niggli_cell(self.structure)
            if _same_cell(self._niggli, stored):
                return True
            self.cell = self._niggli.get_primitive_structure()  # reduced_cell, same steps
        return cells_match(self.cell, stored)


def cells_match(a: Structure, b: Structure) -> bool:
    """:func:`structures_match` for cells already reduced by :func:`reduced_cell`.

    pymatgen's ``fit(..., skip_structure_reduction=True)``: the matcher skips only the
    reduction it would otherwise repeat on every comparison. Two cells that are the same up
    to rotation, origin, site order and volume (:func:`_same_cell`, 1e-3 tolerances, far
    inside the matcher's) are a match without running it: a repeat of a stored structure is
    the common case, and that check costs a fifth of the matcher.
    """
    return _same_cell(a, b) or bool(_get_matcher().fit(a, b, skip_structure_reduction=True))


#: proper changes of basis that permute and flip the axes (a Niggli cell is unique up to these
#: where lengths or angles coincide)
_AXIS_SWAPS = [
    m
    for m in (
        np.array([[sign[i] * (perm[i] == j) for j in range(3)] for i in range(3)], dtype=float)
        for perm in itertools.permutations(range(3))
        for sign in itertools.product((1, -1), repeat=3)
    )
    if np.linalg.det(m) > 0
]


def _same_cell(a: Structure, b: Structure, tol: float = 1e-3) -> bool:
    """True when a and b are one cell up to rotation, origin, site order and volume.

    Lattices are compared at one atom per unit volume (the matcher's ``scale=True``), as metric
    tensors (so rotation does not matter), under each of :data:`_AXIS_SWAPS`; sites must map
    one to one within ``tol`` after one translation. Where this holds, StructureMatcher finds
    the same lattice and translation within its far larger tolerances (ltol 0.2, stol 0.3,
    angle_tol 5), so a True never disagrees with it; a False proves nothing.
    """
    n = len(a)
    if n != len(b):
        return False
    sa = np.array([site.species_string for site in a])
    sb = np.array([site.species_string for site in b])
    if sorted(sa) != sorted(sb):
        return False
    la = a.lattice.matrix * (n / a.volume) ** (1 / 3)
    lb = b.lattice.matrix * (n / b.volume) ** (1 / 3)
    ga = la @ la.T
    same = sa[:, None] == sb[None, :]
    values, counts = np.unique(sa, return_counts=True)
    anchor = int(np.flatnonzero(sa == values[np.argmin(counts)])[0])
    fa = a.frac_coords
    for m in _AXIS_SWAPS:
        lm = m @ lb
        if np.abs(lm @ lm.T - ga).max() > tol:
            continue
        fb = b.frac_coords @ m.T  # m is orthogonal: its inverse
        for j in np.flatnonzero(sb == sa[anchor]):
            d = fa[:, None, :] + (fb[j] - fa[anchor]) - fb[None, :, :]
            d -= np.round(d)
            dist = np.linalg.norm(d @ lm, axis=-1)
            dist[~same] = np.inf
            k = dist.argmin(axis=1)
            if dist[np.arange(n), k].max() < tol and len(set(k.tolist())) == n:
                return True
    return False


def cell_document(cell: Structure) -> dict[str, Any]:
    """Compact, exact form of a reduced cell: float64 lattice and fractional coordinates."""
    from bson import Binary

    return {
        "lattice": Binary(np.asarray(cell.lattice.matrix, dtype="<f8").tobytes()),
        "species": " ".join(site.species_string for site in cell),
        "frac": Binary(np.asarray(cell.frac_coords, dtype="<f8").tobytes()),
    }


def cell_from_document(doc: dict[str, Any]) -> Structure:
    """Rebuild the cell written by :func:`cell_document`, bit for bit."""
    lattice = np.frombuffer(doc["lattice"], dtype="<f8").reshape(3, 3).copy()
    frac = np.frombuffer(doc["frac"], dtype="<f8").reshape(-1, 3).copy()
    return Structure(lattice, doc["species"].split(" "), frac)


def content_hash(structure: Structure) -> str:
    """Hash of the exact cell and sites (order-independent), rounded to 1e-5."""
    lat = np.round(structure.lattice.matrix, 5) + 0.0
    sites = sorted(
        (site.specie.symbol, *[round(float(x) % 1.0, 5) % 1.0 + 0.0 for x in site.frac_coords])
        for site in structure
    )
    blob = json.dumps({"lattice": lat.tolist(), "sites": sites}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
