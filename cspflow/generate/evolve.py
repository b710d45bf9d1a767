"""The evolutionary side of generation: the variation operators (strain, permutation, rattle,
cut-and-splice heredity, soft-mode mutation, soft-mode supercells), a niched population, and
the shares of sources and operators adapted to what produced low-energy structures.

- :func:`softmode`: displace the atoms along one of the softest vibrational modes of a cheap
  spring model (a proxy for USPEX's soft-mode mutation, which uses Lyakhov's bond-hardness
  model): every pair closer than 1.6 x the sum of covalent radii is a central spring of
  stiffness ``exp(-3 (d / d0 - 1))`` (``d0`` that sum); the Gamma-point Hessian of those springs
  is diagonalised, the three translations dropped, and one of the three lowest modes drawn. Low
  curvature in this model means weakly bound directions: the moves a relaxation is least likely
  to undo.
- :func:`supercell`: a supercell of 2-4 times the parent moved along one of its soft modes, the
  one operator that changes the cell's size (the zone-boundary modes of the parent, such as
  octahedral tilts, are Gamma-point modes of the supercell).
- :func:`niche`: the population is the lowest unique relaxed structures of a composition, best
  first, with no two members closer than a fingerprint distance (RMS of the partial-RDF
  fingerprints, :func:`cspflow.dedup.fingerprint.fingerprint_distance`): a near-copy of a better
  member is left out, so parents stay diverse.
- :func:`operator_stats` and :func:`adapt_weights`: per source and mutation operator (and, for
  ``random_symmetric``, per formula-unit count: :func:`formula_unit_stats`), how many
  candidates were generated, relaxed and entered the population, and the best energy; the next
  iteration's shares are the base weights times ``(in_population + 1) / (generated + 2)`` (Laplace
  smoothed success rate), floored at ``min_share`` so no source or operator dies out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Lattice, Structure

from cspflow.generate.constraints import covalent_radius

if TYPE_CHECKING:
    from cspflow.generate.composition import Target

__all__ = [
    "OPERATOR_KEYS",
    "strain",
    "permute",
    "rattle",
    "heredity",
    "softmode",
    "soft_modes",
    "supercell",
    "supercell_matrix",
    "niche",
    "stats_key",
    "operator_stats",
    "adapt_weights",
    "formula_unit_stats",
]

#: mutation operators, as stats keys (``mutation:<operator>``)
OPERATOR_KEYS = ("strain", "permutation", "rattle", "heredity", "softmode", "supercell")


def strain(s: Structure, rng: np.random.Generator, amplitude: float = 0.1) -> Structure:
    """Apply a random symmetric strain (components ~ N(0, amplitude)) to the lattice."""
    e = rng.normal(0.0, amplitude, size=(3, 3))
    e = (e + e.T) / 2
    out = s.copy()
    out.lattice = Lattice(s.lattice.matrix @ (np.eye(3) + e))
    return out


def permute(s: Structure, rng: np.random.Generator, fraction: float = 0.25) -> Structure | None:
    """Swap the species of random pairs of unlike atoms (None for one-element structures)."""
    symbols = [site.specie.symbol for site in s]
    if len(set(symbols)) < 2:
        return None
    out = s.copy()
    n_swaps = max(1, int(round(fraction * len(s) / 2)))
    for _ in range(n_swaps):
        i = int(rng.integers(len(s)))
        others = [j for j in range(len(s)) if symbols[j] != symbols[i]]
        j = int(rng.choice(others))
        symbols[i], symbols[j] = symbols[j], symbols[i]
    for k, sym in enumerate(symbols):
        out.replace(k, sym, out[k].frac_coords)
    return out


def rattle(s: Structure, rng: np.random.Generator, amplitude: float = 0.25) -> Structure:
    """Displace every atom by a random vector (components ~ N(0, amplitude) Angstrom)."""
    out = s.copy()
    disp = rng.normal(0.0, amplitude, size=(len(s), 3))
    for i in range(len(s)):
        out.translate_sites([i], disp[i], frac_coords=False, to_unit_cell=True)
    return out


def heredity(
    a: Structure, b: Structure, target: Target, rng: np.random.Generator
) -> Structure | None:
    """Cut-and-splice: a slab of parent ``a`` below a random plane, parent ``b`` above it.

    Both parents must hold the same number of atoms. The child lattice is the mean of both
    lattices; surplus atoms of an element are dropped at random and missing ones taken from the
    unused halves, so the child has the parents' composition.
    """
    if len(a) != len(b):
        return None
    a = a.get_reduced_structure()
    b = b.get_reduced_structure()
    axis = int(rng.integers(3))
    cut = float(rng.uniform(0.3, 0.7))
    sa, sb = float(rng.uniform()), float(rng.uniform())
    fa = (a.frac_coords[:, axis] + sa) % 1.0
    fb = (b.frac_coords[:, axis] + sb) % 1.0
    lattice = Lattice((a.lattice.matrix + b.lattice.matrix) / 2)
    need = {el.symbol: int(n) for el, n in a.composition.items()}
    chosen: list[tuple[str, np.ndarray]] = []
    spare: list[tuple[str, np.ndarray]] = []
    for s, f, shift, below in ((a, fa, sa, True), (b, fb, sb, False)):
        for site, x in zip(s, f, strict=True):
            fc = site.frac_coords.copy()
            fc[axis] = (fc[axis] + shift) % 1.0
            (chosen if (x < cut) == below else spare).append((site.specie.symbol, fc))
    species, coords = [], []
    for el, n in need.items():
        mine = [c for sym, c in chosen if sym == el]
        extra = [c for sym, c in spare if sym == el]
        rng.shuffle(mine)
        rng.shuffle(extra)
        pick = (mine + extra)[:n]
        species += [el] * len(pick)
        coords += pick
    child = Structure(lattice, species, coords)
    if child.composition.reduced_formula != target.formula:
        return None
    return child


def soft_modes(structure: Structure, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` softest non-translational modes of the spring model (see the module docstring).

    Returns
    -------
    tuple of numpy.ndarray
        Eigenvalues ``(n,)`` and modes ``(n, atoms, 3)`` (unit norm), softest first.
    """
    nat = len(structure)
    radii = np.array([covalent_radius(site.specie.symbol) for site in structure])
    cutoff = 1.6 * 2 * float(radii.max())
    centers, points, images, dists = structure.get_neighbor_list(cutoff)
    h = np.zeros((3 * nat, 3 * nat))
    cart = structure.cart_coords
    lattice = structure.lattice.matrix
    for i, j, img, d in zip(centers, points, images, dists, strict=True):
        d0 = radii[i] + radii[j]
        if d < 1e-6 or d > 1.6 * d0:
            continue
        u = (cart[j] + np.asarray(img) @ lattice - cart[i]) / d
        k = np.exp(-3.0 * (d / d0 - 1.0)) * np.outer(u, u) / 2  # each pair is listed twice
        h[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] += k
        h[3 * j : 3 * j + 3, 3 * j : 3 * j + 3] += k
        h[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] -= k
        h[3 * j : 3 * j + 3, 3 * i : 3 * i + 3] -= k
    # Project out the three rigid translations, which have zero curvature.
    t = np.zeros((3 * nat, 3))
    for a in range(3):
        t[a::3, a] = 1.0 / np.sqrt(nat)
    p = np.eye(3 * nat) - t @ t.T
    w, v = np.linalg.eigh(p @ h @ p)
    keep = [k for k in range(3 * nat) if np.abs(t.T @ v[:, k]).max() < 0.5][:n]
    modes = v[:, keep].T.reshape(len(keep), nat, 3)
    return w[keep], modes


def softmode(
    structure: Structure, rng: np.random.Generator, amplitude: float = 0.6
) -> Structure | None:
    """Move the atoms along one of the three softest spring-model modes.

    The mode is scaled so its largest atomic displacement is ``amplitude`` (x U(0.5, 1), random
    sign) Angstrom. None for a one-atom cell (it has no internal mode).
    """
    if len(structure) < 2:
        return None
    _, modes = soft_modes(structure, 3)
    if len(modes) == 0:
        return None
    return _displaced(structure, modes[int(rng.integers(len(modes)))], rng, amplitude)


def _displaced(
    structure: Structure, mode: np.ndarray, rng: np.random.Generator, amplitude: float
) -> Structure:
    """``structure`` moved along ``mode``, its largest atomic displacement ``amplitude`` x
    U(0.5, 1) Angstrom with a random sign."""
    scale = amplitude * float(rng.uniform(0.5, 1.0)) * float(rng.choice([-1.0, 1.0]))
    disp = mode * scale / float(np.linalg.norm(mode, axis=1).max())
    out = structure.copy()
    for i in range(len(out)):
        out.translate_sites([i], disp[i], frac_coords=False, to_unit_cell=True)
    return out


def supercell_matrix(n: int, rng: np.random.Generator, tries: int = 500) -> np.ndarray | None:
    """A random integer matrix with determinant ``n`` (entries -1..1, diagonal up to 2): the
    doublings, the face-diagonal sqrt(2) x sqrt(2) cells and the fcc-primitive-to-cube matrix
    are among its draws."""
    for _ in range(tries):
        m = rng.integers(-1, 2, size=(3, 3))
        m[np.diag_indices(3)] = rng.integers(0, 3, size=3)
        if round(abs(float(np.linalg.det(m)))) == n:
            return m
    return None


def supercell(
    structure: Structure, rng: np.random.Generator, max_atoms: int, amplitude: float = 0.6
) -> Structure | None:
    """A supercell of the parent moved along one of its softest spring-model modes.

    The other operators keep the parent's cell, so they cannot reach a structure whose cell is
    a multiple of it (a tilted perovskite's sqrt(2) x sqrt(2) x 2 cell from the cubic one, a
    distorted fluorite from fluorite). A supercell of 2, 3 or 4 times the atoms (at most
    ``max_atoms``) is built with :func:`supercell_matrix`, and of its six softest modes (the
    soft modes of a supercell include the zone-boundary ones of the parent: octahedral tilts
    are nearly free in the spring model, as rigid-unit modes are in the crystal) one is taken,
    scaled as in :func:`softmode`, for which the displaced cell no longer reduces to the
    parent's primitive cell. None when no multiple fits or no mode breaks the translation.
    """
    from cspflow.generate.sources import primitive_cell

    fits = [k for k in (2, 3, 4) if k * len(structure) <= max_atoms]
    if not fits:
        return None
    k = int(rng.choice(fits))
    m = supercell_matrix(k, rng)
    if m is None:
        return None
    big = structure.copy()
    big.make_supercell(m)
    big = big.get_reduced_structure()
    _, modes = soft_modes(big, 6)
    for index in rng.permutation(len(modes)):
        child = _displaced(big, modes[int(index)], rng, amplitude)
        if len(primitive_cell(child)) > len(structure):
            return child
    return None


def niche(members: Sequence[Any], vectors: Sequence[np.ndarray], distance: float) -> list[int]:
    """Indices of the members kept: best first, none within ``distance`` of a kept one.

    Parameters
    ----------
    members
        Candidates sorted best first (only their order matters here).
    vectors
        Their fingerprint vectors, in the same order.
    distance
        Smallest fingerprint distance (RMS) allowed between two kept members; 0 keeps all.
    """
    from cspflow.dedup.fingerprint import fingerprint_distance

    kept: list[int] = []
    for i in range(len(members)):
        if all(fingerprint_distance(vectors[i], vectors[k]) >= distance for k in kept):
            kept.append(i)
    return kept


def stats_key(doc: dict[str, Any]) -> str:
    """The statistics key of a candidate: its source, ``mutation:<operator>`` for mutations."""
    source = str(doc.get("source") or "unknown")
    if source == "mutation":
        op = (doc.get("params") or {}).get("operator")
        return f"mutation:{op}" if op else source
    return source


def operator_stats(
    docs: Iterable[dict[str, Any]], population: Iterable[str] = (), top: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Per source / operator: generated, relaxed, duplicates, failed, in_population, in_top,
    best energy (MLIP, eV/atom).

    Parameters
    ----------
    docs
        Candidate documents with ``candidate_id``, ``source``, ``params.operator``, ``status``,
        ``duplicate_of`` and ``energy_per_atom``.
    population
        Ids of the current population (niched lowest unique structures per composition).
    top
        Ids of the current top-k (per composition).
    """
    pop, best = set(population), set(top)
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        row = out.setdefault(stats_key(d), {"generated": 0, "relaxed": 0, "duplicates": 0,
                                            "failed": 0, "in_population": 0, "in_top": 0,
                                            "best_energy_per_atom": None})  # fmt: skip
        row["generated"] += 1
        e = (d.get("energy_per_atom") or {}).get("mlip")
        if d.get("status") == "failed":
            row["failed"] += 1
        elif e is not None:
            row["relaxed"] += 1
            if row["best_energy_per_atom"] is None or e < row["best_energy_per_atom"]:
                row["best_energy_per_atom"] = round(float(e), 6)
        if d.get("duplicate_of"):
            row["duplicates"] += 1
        cid = d.get("candidate_id")
        row["in_population"] += int(cid in pop)
        row["in_top"] += int(cid in best)
    return dict(sorted(out.items()))


def adapt_weights(
    base: dict[str, float], stats: dict[str, dict[str, Any]], min_share: float = 0.05
) -> dict[str, float]:
    """Shares ``base[k] * (in_population_k + 1) / (generated_k + 2)``, floored, summing to 1.

    A candidate that failed or relaxed into a known minimum counts as generated without success:
    the budget it took is what an operator is charged for.

    ``stats`` keys are matched to ``base`` keys exactly (sources) or by their operator part
    (``mutation:heredity`` -> ``heredity``). A key with no statistics keeps rate 1/2.
    """
    keys = [k for k, w in base.items() if w > 0]
    if not keys:
        return {}
    rate = {}
    for k in keys:
        rows = [r for s, r in stats.items() if s == k or s.split(":", 1)[-1] == k]
        if k == "mutation":  # the source's statistics are its operators' together
            rows = [r for s, r in stats.items() if s.startswith("mutation")]
        pop = sum(r.get("in_population", 0) for r in rows)
        made = sum(r.get("generated", 0) for r in rows)
        rate[k] = (pop + 1.0) / (made + 2.0)
    w = np.array([base[k] * rate[k] for k in keys])
    w = w / w.sum()
    floor = min(min_share, 1.0 / len(keys))
    w = np.maximum(w, floor)
    w = w / w.sum()
    return {k: round(float(x), 4) for k, x in zip(keys, w, strict=True)}


def formula_unit_stats(
    docs: Iterable[dict[str, Any]], population: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """:func:`operator_stats` of the ``random_symmetric`` candidates per formula-unit count
    (keys ``"1"``, ``"2"``, ...): what :func:`adapt_weights` allocates the draw of formula
    units by."""
    by_fu: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        fu = (d.get("params") or {}).get("formula_units")
        if d.get("source") == "random_symmetric" and fu is not None:
            by_fu.setdefault(str(fu), []).append(d)
    pop = list(population)
    return {fu: operator_stats(ds, pop)["random_symmetric"] for fu, ds in sorted(by_fu.items())}
