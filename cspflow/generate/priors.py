"""Priors of ``random_symmetric``: which space group to draw, and which Wyckoff sites to fill.

Space groups. A uniform draw over every compatible group spreads a small budget over 150-200
groups (a 6-atom TiO2 cell is compatible with 165), most of which almost no known inorganic
crystal takes: the International Crystal Structure Database is dominated by a few dozen groups
(Pnma alone holds 7.6% of its entries, per the AFLOW Prototype Encyclopedia's space-group
distribution tutorial). The ``aflow`` prior weights each group by how many structure types of
the same number of elements the AFLOW Library of Crystallographic Prototypes (Mehl et al.,
Comput. Mater. Sci. 136, S1 (2017); the 288 prototypes pymatgen ships in
``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``, read offline) puts in it:

``w(g) = c_k(g) + c(g) / 4 + 1/4``

with ``c_k(g)`` the prototypes with ``k`` elements in group ``g`` (``k`` = 1, 2, 3, and 4 or more
pooled), ``c(g)`` those of any number of elements, and a pseudo-count of 1/4, renormalised over
the groups compatible with the cell; the draw then mixes it with the uniform distribution
(``mix`` the uniform share), so every compatible group keeps a probability of at least
``mix / n_groups``. Bias: a prototype library counts structure *types*, not compounds, and
favours high-symmetry, well-known types (elements and binaries are 80% of it); it is a proxy for
the ICSD frequency, not that frequency. Formula units are not conditioned on (288 prototypes
are too few to split by Z as well); they stay uniform.

The ``pyxtal_mp`` prior weighs group ``g`` by the structures of a larger real collection:
``cspflow/data/spacegroup_frequency.csv``, 88,678 structures per (space group, atoms in the
conventional cell), summed from PyXtal's ``database/spg_num_wps_mp.csv`` (named for the
Materials Project; its header says what is known of it). For a primitive cell of ``n`` atoms,
group ``g`` holds ``N_g = m_g n`` atoms in its conventional cell (``m_g`` the centring
multiplier), and

``w(g) = c(g, N_g) + K c(g) / C + 1/4``

with ``c(g, N_g)`` the structures of ``g`` with that many atoms, ``c(g)`` those of ``g`` with any
number, ``C`` all structures and ``K`` = :data:`MP_SPREAD` pseudo-structures spread over the
groups by their overall frequency: the draw is conditioned on the cell size (so on the
formula units) where the table has structures of that size, and falls back to the groups'
overall frequency where it has few. Bias: Materials Project structures include many computed,
hypothetical ones (orderings, Heusler and perovskite series crowd Fm-3m and Pm-3m), and the
table has no compositions, so it is not split by number of elements: it is a proxy, not the
ICSD frequency.

Wyckoff sites. PyXtal fills a group's Wyckoff positions greedily at random (half the time the
largest multiplicity that fits). ``fewest_sites`` instead lists every Wyckoff combination of the
cell (:meth:`pyxtal.symmetry.Group.list_wyckoff_combinations`) and draws one with weight
``exp(-(k - k_min))``, ``k`` its number of occupied orbits: parsimonious assignments (rutile's
Ti 2a + O 4f, two orbits) are preferred, as in known crystals, where few independent sites are
the rule, but every combination stays possible. Groups with more than :data:`MAX_COMBINATIONS`
combinations fall back to PyXtal's own choice.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from cspflow.errors import CspflowError
from cspflow.schemas.generate import SPACEGROUP_PRIORS, parse_spacegroup_prior

__all__ = [
    "PRIORS",
    "WYCKOFF_CHOICES",
    "MAX_COMBINATIONS",
    "aflow_counts",
    "mp_counts",
    "MP_SPREAD",
    "check_prior",
    "spacegroup_probabilities",
    "wyckoff_combinations",
    "choose_wyckoff",
]

#: named space-group priors (a ``{group: weight}`` mapping is the third form)
PRIORS = SPACEGROUP_PRIORS
#: how Wyckoff positions are chosen
WYCKOFF_CHOICES = ("pyxtal", "fewest_sites")
#: above this many Wyckoff combinations a group is left to PyXtal's own choice
MAX_COMBINATIONS = 5000
_PSEUDO = 0.25
_POOLED = 0.25
#: pseudo-structures of ``pyxtal_mp`` spread over the groups by their overall frequency
MP_SPREAD = 50.0


@lru_cache(maxsize=1)
def aflow_counts() -> dict[int, Counter[int]]:
    """Prototypes per space group of pymatgen's AFLOW library, by number of elements.

    Key 0 counts every prototype; keys 1, 2, 3 and 4 (four or more elements) those with that
    many elements. Read from the AFLOW labels (``AB2_tI6_139_a_e``: stoichiometry, Pearson
    symbol, space group, Wyckoff letters).
    """
    path = resources.files("pymatgen.analysis.prototypes") / "aflow_prototypes.json.gz"
    with gzip.open(str(path), "rt") as fh:
        data = json.load(fh)
    out: dict[int, Counter[int]] = {k: Counter() for k in range(5)}
    for entry in data:
        parts = entry["tags"]["aflow"].split("_")
        group = int(parts[2])
        n_el = min(4, len(re.findall(r"[A-Z]", parts[0])))
        out[0][group] += 1
        if n_el:
            out[n_el][group] += 1
    return out


@lru_cache(maxsize=1)
def mp_counts() -> tuple[dict[tuple[int, int], int], dict[int, int], int]:
    """Structures per (space group, conventional-cell atoms) of ``spacegroup_frequency.csv``.

    Returns
    -------
    tuple
        ``({(group, atoms): count}, {group: count}, total)``.
    """
    text = (resources.files("cspflow") / "data" / "spacegroup_frequency.csv").read_text()
    by_size: dict[tuple[int, int], int] = {}
    by_group: Counter[int] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("spacegroup"):
            continue
        sg, atoms, count = (int(x) for x in line.split(","))
        by_size[(sg, atoms)] = by_size.get((sg, atoms), 0) + count
        by_group[sg] += count
    return by_size, dict(by_group), sum(by_group.values())


def check_prior(prior: str | dict[Any, Any]) -> str | dict[int, float]:
    """Validate a prior: a name of :data:`PRIORS` or ``{space group: weight}``
    (:func:`cspflow.schemas.generate.parse_spacegroup_prior`).

    Raises
    ------
    CspflowError
        One line naming the bad value.
    """
    try:
        return parse_spacegroup_prior(prior)
    except ValueError as exc:
        raise CspflowError(str(exc)) from None


def spacegroup_probabilities(
    groups: tuple[int, ...] | list[int],
    n_elements: int,
    prior: str | dict[int, float] = "uniform",
    mix: float = 0.2,
    n_atoms: int | None = None,
) -> np.ndarray:
    """Probabilities of drawing each of ``groups`` (the groups compatible with the cell).

    Parameters
    ----------
    groups
        Compatible space groups (e.g. :func:`cspflow.generate.sources.compatible_space_groups`).
    n_elements
        Elements of the composition (selects the ``aflow`` counts).
    prior
        ``"uniform"``, ``"aflow"``, ``"pyxtal_mp"`` (see the module docstring) or
        ``{group: weight}`` (groups left out weigh 0 before mixing).
    mix
        Share of the uniform distribution mixed in, 0-1: with ``mix > 0`` every compatible
        group keeps a non-zero probability.
    n_atoms
        Atoms of the primitive cell (``pyxtal_mp`` conditions on it; without it, that prior
        uses the groups' overall frequency).

    Returns
    -------
    numpy.ndarray
        One probability per group, summing to 1.
    """
    n = len(groups)
    if n == 0:
        return np.zeros(0)
    uniform = np.full(n, 1.0 / n)
    if prior == "uniform":
        return uniform
    if isinstance(prior, dict):
        w = np.array([float(prior.get(g, 0.0)) for g in groups])
    elif prior == "pyxtal_mp":
        w = _mp_weights(groups, n_atoms)
    else:
        counts = aflow_counts()
        by_k = counts[min(4, max(1, n_elements))]
        w = np.array([by_k[g] + _POOLED * counts[0][g] + _PSEUDO for g in groups], dtype=float)
    if w.sum() <= 0:  # the mapping weighs none of the compatible groups
        return uniform
    p = (1.0 - mix) * w / w.sum() + mix * uniform
    return p / p.sum()


def _mp_weights(groups: tuple[int, ...] | list[int], n_atoms: int | None) -> np.ndarray:
    """``c(g, m_g n) + K c(g) / C + 1/4`` per group (module docstring)."""
    from cspflow.generate.sources import centring_multiplier

    by_size, by_group, total = mp_counts()
    out = []
    for g in groups:
        here = by_size.get((g, centring_multiplier(g) * n_atoms), 0) if n_atoms else 0
        out.append(here + MP_SPREAD * by_group.get(g, 0) / total + _PSEUDO)
    return np.array(out, dtype=float)


@lru_cache(maxsize=4096)
def wyckoff_combinations(
    spacegroup: int, num_ions: tuple[int, ...]
) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Every Wyckoff assignment of a conventional cell (PyXtal's listing), or () when too many.

    Each assignment holds one tuple of Wyckoff labels (``"4f"``) per species.
    """
    from pyxtal.symmetry import Group

    try:
        combos, _, _ = Group(spacegroup).list_wyckoff_combinations(
            list(num_ions), Nmax=MAX_COMBINATIONS
        )
    except Exception:
        return ()
    if not combos or len(combos) >= MAX_COMBINATIONS:
        return ()
    return tuple(tuple(tuple(s) for s in combo) for combo in combos)


def choose_wyckoff(
    spacegroup: int, num_ions: list[int], rng: np.random.Generator
) -> list[list[str]] | None:
    """Draw a Wyckoff assignment, fewer occupied orbits more likely (``exp(-(k - k_min))``).

    Returns
    -------
    list of list of str or None
        Labels per species for PyXtal's ``sites=``; None to leave the choice to PyXtal.
    """
    combos = wyckoff_combinations(spacegroup, tuple(num_ions))
    if not combos:
        return None
    k = np.array([sum(len(s) for s in c) for c in combos], dtype=float)
    w = np.exp(-(k - k.min()))
    pick = combos[int(rng.choice(len(combos), p=w / w.sum()))]
    return [list(s) for s in pick]
