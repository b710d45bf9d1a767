"""Structure fingerprints and bucket keys for deduplication.

The fingerprint is an Oganov-Valle style partial radial distribution function: for every
element pair (A, B) it histograms (Gaussian-smeared) the A-B distances, normalised per A atom
and by the ideal-gas density of B. Distances are measured in units of ``(V / N) ** (1/3)``, so
the fingerprint does not change with rotation, translation, atom order, choice of unit cell or
supercell, nor with a uniform change of volume (pymatgen's StructureMatcher with ``scale=True``
treats such structures as the same, and so does cspflow).

The bucket keys make lookups O(1) in the number of stored structures: a key is the reduced
formula, the space group and the number of atoms in the primitive cell (spglib, ``symprec``
0.1), and the cell of the fingerprint's projections on four fixed unit vectors. A difference of
RMS size ``t`` between two D-component fingerprints projects on a unit direction with a
standard deviation of about ``t``, so a stored structure is also filed under the neighbouring
cell whenever it lies within :data:`PROJ_RADIUS` (three tolerances) of a cell boundary. A
lookup then reads one key and sees every stored structure its fingerprint filter would accept,
bar three-sigma outliers. Structures whose space group spglib finds differently at ``symprec`` 0.1
(noisy, nearly symmetric relaxed cells) fall in different buckets and are not matched.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache

import numpy as np
from pymatgen.core import Structure

__all__ = [
    "FP_TOLERANCE",
    "Fingerprint",
    "fingerprint",
    "fingerprint_distance",
    "bucket_keys",
    "query_key",
    "fingerprint_hash",
    "space_group",
    "symmetry",
    "chemsys_of",
]

#: scaled-distance grid of the fingerprint (units of (V/N)^(1/3))
R_MIN, R_MAX, DR, SIGMA = 0.3, 2.8, 0.1, 0.05
#: fingerprints closer than this (RMS over components) are checked with StructureMatcher
FP_TOLERANCE = 0.25
#: projections in a bucket key; the radius a stored structure reaches into neighbouring cells
N_PROJ, PROJ_RADIUS, CELL_WIDTH = 4, 3 * FP_TOLERANCE, 3 * 3 * FP_TOLERANCE
SYMPREC = 0.1


class Fingerprint:
    """A structure's fingerprint with the invariants it was computed from.

    Parameters
    ----------
    formula
        Reduced formula.
    chemsys
        Elements sorted alphabetically, joined by ``-``.
    spacegroup
        International space group number at ``symprec`` 0.1.
    nprim
        Atoms in the primitive cell at the same tolerance.
    vector
        The partial-RDF fingerprint (element pairs in alphabetical order, then distance bins).
    """

    __slots__ = ("formula", "chemsys", "spacegroup", "nprim", "vector")

    def __init__(
        self, formula: str, chemsys: str, spacegroup: int, nprim: int, vector: np.ndarray
    ) -> None:
        self.formula = formula
        self.chemsys = chemsys
        self.spacegroup = spacegroup
        self.nprim = nprim
        self.vector = vector

    def buckets(self) -> list[str]:
        """Every bucket this fingerprint is filed under (see :func:`bucket_keys`)."""
        return bucket_keys(self)

    def query_key(self) -> str:
        """The one bucket a lookup for this fingerprint reads."""
        return query_key(self)

    def hash(self) -> str:
        """A hash of the rounded fingerprint (exact repeats share it)."""
        return fingerprint_hash(self)


def chemsys_of(structure: Structure) -> str:
    """Return the chemical system (``"Al-Mg-O"``) of a structure."""
    return "-".join(sorted({el.symbol for el in structure.composition.elements}))


def symmetry(structure: Structure, symprec: float = SYMPREC) -> tuple[int, int]:
    """Return (space group number, atoms in the primitive cell) found by spglib.

    A cell spglib cannot analyse counts as P1 with all its atoms.
    """
    import spglib

    numbers = [site.specie.Z for site in structure]
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    try:
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:
        data = None
    if data is None:
        return 1, len(structure)
    return int(data.number), len(set(np.asarray(data.mapping_to_primitive).tolist()))


def space_group(structure: Structure, symprec: float = SYMPREC) -> int:
    """Return the space group number found by spglib (1 when spglib finds none)."""
    return symmetry(structure, symprec)[0]


def _grid() -> np.ndarray:
    return np.arange(R_MIN, R_MAX, DR) + DR / 2


def fingerprint(structure: Structure) -> Fingerprint:
    """Compute the fingerprint of an ordered structure.

    Parameters
    ----------
    structure
        An ordered pymatgen Structure.

    Returns
    -------
    Fingerprint
        Formula, chemsys, space group and the fingerprint vector.
    """
    if not structure.is_ordered:
        raise ValueError("fingerprints need an ordered structure (no partial occupancies)")
    symbols = [site.specie.symbol for site in structure]
    elements = sorted(set(symbols))
    n = len(structure)
    d0 = (structure.volume / n) ** (1.0 / 3.0)
    grid = _grid()
    cutoff = (R_MAX + 3 * SIGMA) * d0
    centers, points, _, dists = structure.get_neighbor_list(cutoff)
    sym = np.array(symbols)
    counts = {el: int(np.sum(sym == el)) for el in elements}
    scaled = dists / d0
    # Smeared histogram on the grid, one row per neighbour pair, summed per element pair.
    weights = np.exp(-0.5 * ((grid[None, :] - scaled[:, None]) / SIGMA) ** 2) / (
        SIGMA * np.sqrt(2 * np.pi)
    )
    shell = 4 * np.pi * grid**2  # ideal-gas neighbour density per unit scaled distance
    parts = []
    ci, cj = sym[centers], sym[points]
    for a, b in itertools.combinations_with_replacement(elements, 2):
        mask = (ci == a) & (cj == b)
        rho_b = counts[b] / n  # per unit scaled volume (V / d0^3 = n)
        hist = weights[mask].sum(axis=0) if mask.any() else np.zeros_like(grid)
        parts.append(hist / (counts[a] * rho_b * shell) - 1.0)
    vector = np.concatenate(parts)
    sg, nprim = symmetry(structure)
    return Fingerprint(
        formula=structure.composition.reduced_formula,
        chemsys="-".join(elements),
        spacegroup=sg,
        nprim=nprim,
        vector=vector,
    )


def fingerprint_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two fingerprint vectors (inf when shapes differ)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return float("inf")
    return float(np.sqrt(np.mean((a - b) ** 2)))


@lru_cache(maxsize=64)
def _projections(dim: int) -> np.ndarray:
    # Fixed directions per fingerprint length: every process files a structure the same way.
    rng = np.random.default_rng(12345 + dim)
    p = rng.normal(size=(N_PROJ, dim))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _cells(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proj = _projections(vector.size) @ vector
    return proj, np.floor(proj / CELL_WIDTH)


def _key(fp: Fingerprint, cell: tuple[int, ...]) -> str:
    head = f"{fp.formula}|{fp.spacegroup}|{fp.nprim}|"
    return head + ",".join(str(int(c)) for c in cell)


def query_key(fp: Fingerprint) -> str:
    """Return the bucket a lookup reads: the cell holding the fingerprint's projections."""
    _, cell = _cells(fp.vector)
    return _key(fp, tuple(cell))


def bucket_keys(fp: Fingerprint) -> list[str]:
    """Return every bucket a stored fingerprint is filed under.

    The home cell, plus each neighbouring cell (per projection axis) whose boundary lies within
    :data:`PROJ_RADIUS`, so that a fingerprint within :data:`FP_TOLERANCE` queries a cell this
    structure is filed under.
    """
    proj, cell = _cells(fp.vector)
    options = []
    for p, c in zip(proj, cell, strict=True):
        axis = [int(c)]
        if p - c * CELL_WIDTH < PROJ_RADIUS:
            axis.append(int(c) - 1)
        if (c + 1) * CELL_WIDTH - p < PROJ_RADIUS:
            axis.append(int(c) + 1)
        options.append(axis)
    return [_key(fp, combo) for combo in itertools.product(*options)]


def fingerprint_hash(fp: Fingerprint) -> str:
    """Return a short hash of formula, symmetry and the fingerprint rounded to 1e-3."""
    h = hashlib.sha256()
    h.update(f"{fp.formula}|{fp.spacegroup}|{fp.nprim}|".encode())
    h.update((np.round(fp.vector, 3) + 0.0).astype("<f8").tobytes())
    return h.hexdigest()[:32]
