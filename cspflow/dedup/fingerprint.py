"""Structure fingerprints and bucket keys for deduplication.

The fingerprint is an Oganov-Valle style partial radial distribution function: for every
element pair (A, B) it histograms (Gaussian-smeared) the A-B distances, normalised per A atom
and by the ideal-gas density of B. Distances are measured in units of ``(V / N) ** (1/3)``, so
the fingerprint does not change with rotation, translation, atom order, choice of unit cell or
supercell, nor with a uniform change of volume (pymatgen's StructureMatcher with ``scale=True``
treats such structures as the same, and so does cspflow).

The bucket keys keep a lookup's reads small as the store grows. They are locality-sensitive
hashing of the fingerprint vector in :data:`N_TABLES` tables: a table's key is the hash of the
reduced formula, the space group and the number of atoms in the primitive cell (spglib,
``symprec`` 0.1) and the cells (width :data:`CELL_WIDTH`, random offsets) of :data:`N_PROJ`
fixed random unit projections of the vector. A structure is filed under its 20 keys, and a
lookup reads the same keys. A difference of RMS size ``t`` between two D-component
fingerprints projects on a unit direction with a standard deviation of about ``t``, so two
fingerprints at the tolerance (``t`` = 0.25) share a table's key with probability about 0.3
and at least one of the 20 keys with probability 0.9998 (measured: 3 misses in 15,000 random
perturbations of real fingerprints, none at ``t`` = 0.2; the earlier keys missed 4), and exact
variants (rotation, supercell, ...) share their keys. Two different structures (RMS distance
above 0.5; typically 1-2) share a key with probability 0.004 (measured on 1,500 PyXtal SrTiO3
structures), so a lookup reads about 0.4% of the stored structures of its formula and
symmetry, where the earlier keys (one cell of four projections) read 20%. More tables read
fewer (32 tables of 10 projections: 0.1%), but every key is an index entry: with 32 per
structure the embedded server stalled in bulk inserts at 65,000-80,000 structures.
Structures whose space group spglib finds differently at ``symprec`` 0.1 (noisy, nearly
symmetric relaxed cells) fall in different buckets and are not matched.

Keys written before the tables existed (four projections, one cell per key, a structure filed
under the neighbouring cells too) are still computed by :func:`legacy_query_key`, so that a
lookup also finds fingerprint documents written by older versions.
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
    "lock_key",
    "legacy_query_key",
    "fingerprint_hash",
    "space_group",
    "symmetry",
    "chemsys_of",
]

#: scaled-distance grid of the fingerprint (units of (V/N)^(1/3))
R_MIN, R_MAX, DR, SIGMA = 0.3, 2.8, 0.1, 0.05
#: fingerprints closer than this (RMS over components) are checked with StructureMatcher
FP_TOLERANCE = 0.25
#: hash tables (keys per structure), projections per table, and the cell width of a projection
N_TABLES, N_PROJ, CELL_WIDTH = 20, 8, 6 * FP_TOLERANCE
#: the keys of older versions: four projections, cells of nine tolerances
_LEGACY_PROJ, _LEGACY_WIDTH = 4, 9 * FP_TOLERANCE
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
        """The bucket keys it is filed under and looked up by (see :func:`bucket_keys`)."""
        return bucket_keys(self)

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
        # spglib's Cell type names sequences; it takes numpy arrays (its documented input)
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)  # type: ignore[arg-type]
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


def _class_key(fp: Fingerprint) -> str:
    return f"{fp.formula}|{fp.spacegroup}|{fp.nprim}"


@lru_cache(maxsize=64)
def _tables(dim: int) -> tuple[np.ndarray, np.ndarray]:
    # Fixed directions and cell offsets per fingerprint length: every process files a
    # structure the same way.
    rng = np.random.default_rng(20261124 + dim)
    p = rng.normal(size=(N_TABLES * N_PROJ, dim))
    offsets = rng.uniform(0.0, CELL_WIDTH, size=N_TABLES * N_PROJ)
    return p / np.linalg.norm(p, axis=1, keepdims=True), offsets


def bucket_keys(fp: Fingerprint) -> list[str]:
    """Return the keys a fingerprint is filed under, one per hash table.

    A lookup reads the same keys: two fingerprints within :data:`FP_TOLERANCE` share at least
    one of them with probability 0.9998 (see the module docstring), closer ones practically
    always. A key is ``<table>:<hash>``; formula and symmetry are part of the hash.
    """
    directions, offsets = _tables(fp.vector.size)
    cells = np.floor((directions @ fp.vector + offsets) / CELL_WIDTH).astype("<i4")
    head = f"{_class_key(fp)}|".encode()
    return [
        f"{t}:{hashlib.blake2b(head + row.tobytes(), digest_size=6).hexdigest()}"
        for t, row in enumerate(cells.reshape(N_TABLES, N_PROJ))
    ]


def lock_key(fp: Fingerprint) -> str:
    """Return the key writers lock: formula, space group and primitive-cell size.

    Every structure a lookup could match has the same one, so two writers of near-identical
    structures always serialise, whichever hash keys they share.
    """
    return _class_key(fp)


@lru_cache(maxsize=64)
def _legacy_projections(dim: int) -> np.ndarray:
    rng = np.random.default_rng(12345 + dim)
    p = rng.normal(size=(_LEGACY_PROJ, dim))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def legacy_query_key(fp: Fingerprint) -> str:
    """Return the one bucket key an older version's lookup read for this fingerprint.

    Older versions filed a structure under this key scheme (four projections, a structure also
    filed under each neighbouring cell within three tolerances); a lookup reads it as well so
    fingerprint documents written by them are still found.
    """
    cell = np.floor(_legacy_projections(fp.vector.size) @ fp.vector / _LEGACY_WIDTH)
    return f"{_class_key(fp)}|" + ",".join(str(int(c)) for c in cell)


def fingerprint_hash(fp: Fingerprint) -> str:
    """Return a short hash of formula, symmetry and the fingerprint rounded to 1e-3."""
    h = hashlib.sha256()
    h.update(f"{fp.formula}|{fp.spacegroup}|{fp.nprim}|".encode())
    h.update((np.round(fp.vector, 3) + 0.0).astype("<f8").tobytes())
    return h.hexdigest()[:32]
