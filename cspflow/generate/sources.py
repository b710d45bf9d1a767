"""Candidate sources: each turns (target, seed) into one structure attempt.

Every source is a small class with a ``name`` and a method ``attempts(target, seed, context)``
that yields :class:`Generated` structures (or ``None`` for a failed attempt). Each attempt draws
its own seed from the batch seed, records it with its parameters, and is reproducible from them
alone: the same seed gives the same structure.

- :class:`RandomSymmetric`: PyXtal over every space group 2-230 compatible with the composition
  and every formula-unit count that fits ``max_atoms``, under a per-structure time limit.

Cells are counted and stored primitive: ``max_atoms`` and the formula units count the atoms of
the primitive cell. A centred space group (A/B/C/I x2, R x3 in PyXtal's hexagonal setting, F x4)
is built by PyXtal in its conventional cell with that many times the atoms and reduced to its
primitive cell before it is checked, stored and relaxed; every source's structure goes through
the same reduction (:func:`primitive_cell`), so sources, dedup and relaxation agree on a cell.
- :class:`Prototype`: substitution into the built-in prototype library
  (``cspflow/data/prototypes``) plus any structure files the user supplies.
- :class:`Mutation`: lattice strain, atom permutation, rattle, soft-mode displacement and
  cut-and-splice heredity of the population: the lowest-energy unique relaxed structures already
  stored, niched by fingerprint distance (parents come in the context;
  :mod:`cspflow.generate.evolve`).
- :class:`External`: structures read from files (CIF, POSCAR, extxyz, directories;
  :func:`cspflow.chem.read_structures`).
- :class:`~cspflow.generate.templates.Template`: every AFLOW, built-in and stored structure
  type of the target's stoichiometry (:mod:`cspflow.generate.templates`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pymatgen.core import Composition, Structure

from cspflow.chem import read_structures
from cspflow.errors import CspflowError
from cspflow.generate.composition import Target
from cspflow.generate.constraints import Constraints, covalent_radius, fix_volume, violations
from cspflow.generate.evolve import heredity, permute, rattle, softmode, strain, supercell
from cspflow.generate.templates import Template
from cspflow.generate.timelimit import GenerationTimeout, call_with_time_limit

__all__ = [
    "Generated",
    "Parent",
    "SourceContext",
    "RandomSymmetric",
    "Prototype",
    "Mutation",
    "External",
    "SOURCES",
    "make_source",
    "compatible_space_groups",
    "centring_multiplier",
    "primitive_cell",
    "random_symmetric_structure",
]


@dataclass
class Generated:
    """One generated structure and how it was made."""

    structure: Structure
    source: str
    params: dict[str, Any]
    seed: int | None
    parent_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Parent:
    """A stored structure that mutation and heredity may start from."""

    candidate_id: str
    structure: Structure
    energy_per_atom: float | None = None


@dataclass
class SourceContext:
    """What sources may need beyond the target: constraints, parents, files, limits."""

    constraints: Constraints = field(default_factory=Constraints)
    parents: list[Parent] = field(default_factory=list)
    time_limit: float = 10.0
    time_limit_mode: str = "auto"
    #: attempts rejected by a source, by reason (filled while generating)
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one rejected attempt."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def _child_seeds(seed: int, stream: int) -> Iterator[int]:
    """Endless independent 63-bit seeds for one source's attempts."""
    for i in itertools.count():
        yield int(np.random.SeedSequence([seed, stream, i]).generate_state(2, np.uint64)[0] >> 1)


def primitive_cell(structure: Structure) -> Structure:
    """The Niggli-reduced primitive cell of a structure (pymatgen's default 0.25 A tolerance).

    Every generated structure is stored and relaxed in this cell: a centred or supercell
    structure costs up to four times the atoms in its conventional cell.
    """
    return structure.get_primitive_structure().get_reduced_structure()


def _validated(gen: Generated, target: Target, context: SourceContext) -> Generated | None:
    """Reduce to the primitive cell, scale into the volume window, check the hard constraints."""
    s = primitive_cell(gen.structure)
    if len(s) > target.max_atoms:
        context.reject("too many atoms")
        return None
    if s.composition.reduced_formula != target.formula:
        context.reject("wrong composition")
        return None
    s = fix_volume(s, context.constraints)
    problems = violations(s, context.constraints)
    if problems:
        context.reject(problems[0].split(" ")[0] + " constraint")
        return None
    gen.structure = s
    return gen


# ---------------------------------------------------------------------------------------------
# random_symmetric


#: atoms of the conventional cell per atom of the primitive cell, by lattice centring letter
#: (PyXtal builds rhombohedral groups in the hexagonal setting: three lattice points)
CENTRING_MULTIPLIER = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}


@lru_cache(maxsize=230)
def centring_multiplier(spacegroup: int) -> int:
    """Lattice points in PyXtal's conventional cell of a space group (1, 2, 3 or 4)."""
    from pyxtal.symmetry import Group

    return CENTRING_MULTIPLIER[Group(spacegroup).symbol[0]]


@lru_cache(maxsize=128)
def compatible_space_groups(num_ions: tuple[int, ...]) -> tuple[int, ...]:
    """Space groups 2-230 that can hold a *primitive* cell of these numbers of atoms per species.

    PyXtal's own check works in the conventional cell, so a centred group is asked for its
    multiplier times the atoms (R-3c takes a 10-atom Al2O3 primitive cell as 12 + 18 atoms).
    """
    from pyxtal.symmetry import Group

    out = []
    for sg in range(2, 231):
        m = centring_multiplier(sg)
        try:
            ok, _ = Group(sg).check_compatible([m * n for n in num_ions])
        except Exception:
            ok = False
        if ok:
            out.append(sg)
    return tuple(out)


def random_symmetric_structure(
    species: list[str],
    num_ions: list[int],
    spacegroup: int,
    seed: int,
    sites: list[list[str]] | None = None,
) -> dict | None:
    """Build one PyXtal random crystal; return ``Structure.as_dict()`` or None when it fails.

    ``num_ions`` counts the atoms of the conventional cell PyXtal builds; ``sites`` (Wyckoff
    labels per species) fixes the Wyckoff positions. Module-level and returning plain data so
    that it can run in a child process.
    """
    import warnings

    from pyxtal import pyxtal

    crystal = pyxtal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            crystal.from_random(
                3, spacegroup, species, num_ions, factor=1.0, sites=sites, random_state=seed
            )
        except Exception:
            return None
    if not crystal.valid:
        return None
    return crystal.to_pymatgen().as_dict()


@dataclass
class RandomSymmetric:
    """Random symmetric crystals from PyXtal: formula units uniform, space group from a prior.

    The formula units count the primitive cell; a centred group is built in its conventional
    cell and reduced (params record ``conventional_atoms``).

    Parameters
    ----------
    spacegroup_prior
        ``"uniform"``, ``"aflow"``, ``"pyxtal_mp"`` or ``{group: weight}``
        (:func:`cspflow.generate.priors.spacegroup_probabilities`).
    prior_mix
        Uniform share mixed into the prior (every compatible group keeps a probability).
    wyckoff
        ``"pyxtal"`` (PyXtal's own choice) or ``"fewest_sites"``
        (:func:`cspflow.generate.priors.choose_wyckoff`).
    fu_weights
        Shares of the formula-unit counts (``{"1": 0.3, "2": 0.7}``; a campaign's adaptive
        allocation); None or absent counts draw uniformly.
    arm_weights
        Shares of (space group, formula units) arms, keys ``"group:fu"`` (a campaign's
        bandit, :mod:`cspflow.generate.allocation`); when set they replace the two draws above
        (arms the target cannot hold are left out; none left: the draws above).
    """

    spacegroup_prior: str | dict[int, float] = "uniform"
    prior_mix: float = 0.2
    wyckoff: str = "pyxtal"
    fu_weights: dict[str, float] | None = None
    arm_weights: dict[str, float] | None = None
    name: ClassVar[str] = "random_symmetric"
    stream: ClassVar[int] = 1

    def __post_init__(self) -> None:
        from cspflow.generate.priors import WYCKOFF_CHOICES, check_prior

        self.spacegroup_prior = check_prior(self.spacegroup_prior)
        if not 0.0 <= float(self.prior_mix) <= 1.0:
            raise CspflowError(f"prior_mix must be between 0 and 1, not {self.prior_mix!r}")
        if self.wyckoff not in WYCKOFF_CHOICES:
            raise CspflowError(
                f"unknown wyckoff choice {self.wyckoff!r}; choose from {', '.join(WYCKOFF_CHOICES)}"
            )

    def _prior_name(self) -> str:
        return self.spacegroup_prior if isinstance(self.spacegroup_prior, str) else "custom"

    def draw(
        self, target: Target, rng: np.random.Generator
    ) -> tuple[int, int, float, float | None] | None:
        """Draw (formula units, space group) as :meth:`make` does, without building.

        Returns
        -------
        tuple or None
            ``(formula units, group, P(group | formula units) under the prior, P(arm) under
            arm_weights or None)``; None when no group can hold the cell.
        """
        from cspflow.generate.allocation import target_arms
        from cspflow.generate.priors import spacegroup_probabilities

        if self.arm_weights:
            arms = target_arms(target, self.arm_weights)
            if arms:
                w = np.array([p for _, _, p in arms])
                k = int(rng.choice(len(arms), p=w / w.sum()))
                fu, sg, _ = arms[k]
                groups = compatible_space_groups(tuple(target.num_ions(fu)))
                probs = spacegroup_probabilities(
                    groups, len(target.species), self.spacegroup_prior, self.prior_mix,
                    sum(target.num_ions(fu)),
                )  # fmt: skip
                return fu, sg, float(probs[groups.index(sg)]), float(w[k] / w.sum())
        if self.fu_weights:
            w = np.array([float(self.fu_weights.get(str(f), 0.0)) for f in target.fu_counts])
            w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
            fu = int(target.fu_counts[int(rng.choice(len(w), p=w))])
        else:
            fu = int(rng.choice(target.fu_counts))
        num_ions = target.num_ions(fu)
        groups = compatible_space_groups(tuple(num_ions))
        if not groups:
            return None
        probs = spacegroup_probabilities(
            groups, len(num_ions), self.spacegroup_prior, self.prior_mix, sum(num_ions)
        )
        if self.spacegroup_prior == "uniform":
            # the draw of earlier releases, so uniform runs reproduce them seed for seed
            sg = int(rng.choice(groups))
            k = groups.index(sg)
        else:
            k = int(rng.choice(len(groups), p=probs))
            sg = int(groups[k])
        return fu, sg, float(probs[k]), None

    def make(self, target: Target, seed: int, context: SourceContext) -> Generated | None:
        """One attempt from ``seed``: draw (formula units, space group), build, check."""
        from cspflow.generate.priors import choose_wyckoff

        rng = np.random.default_rng(seed)
        drawn = self.draw(target, rng)
        if drawn is None:
            context.reject("no compatible space group")
            return None
        fu, sg, p_group, p_arm = drawn
        num_ions = target.num_ions(fu)
        pyxtal_seed = int(rng.integers(2**31))
        conventional = [centring_multiplier(sg) * n for n in num_ions]
        sites = None
        if self.wyckoff == "fewest_sites":
            sites = choose_wyckoff(sg, conventional, np.random.default_rng(pyxtal_seed))
        try:
            data = call_with_time_limit(
                random_symmetric_structure,
                (target.species, conventional, sg, pyxtal_seed, sites),
                context.time_limit,
                context.time_limit_mode,
            )
        except GenerationTimeout:
            context.reject("time limit")
            return None
        if data is None:
            context.reject("pyxtal failed")
            return None
        params: dict[str, Any] = {
            "spacegroup": sg,
            "formula_units": fu,
            "conventional_atoms": sum(conventional),
            "spacegroup_prior": self._prior_name(),
            "prior_mix": float(self.prior_mix),
            "spacegroup_probability": round(p_group, 6),
            "wyckoff_choice": self.wyckoff,
        }
        if p_arm is not None:
            params["allocation"] = "bandit"
            params["arm_probability"] = round(p_arm, 6)
        if sites is not None:
            params["wyckoff"] = sites
        gen = Generated(
            structure=Structure.from_dict(data), source=self.name, params=params, seed=seed
        )
        return _validated(gen, target, context)

    def attempts(
        self, target: Target, seed: int, context: SourceContext
    ) -> Iterator[Generated | None]:
        """Endless attempts."""
        for s in _child_seeds(seed, self.stream):
            yield self.make(target, s, context)


# ---------------------------------------------------------------------------------------------
# prototype


@lru_cache(maxsize=1)
def builtin_prototypes() -> dict[str, Structure]:
    """The shipped prototype library: name -> primitive archetype structure."""
    root = resources.files("cspflow") / "data" / "prototypes"
    index = json.loads((root / "index.json").read_text())
    import warnings

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "coordinates rounded to ideal values"
        for name, info in sorted(index.items()):
            out[name] = Structure.from_str((root / info["file"]).read_text(), fmt="cif")
    return out


def _assignments(proto: Structure, target: Target) -> list[dict[str, str]]:
    """Every bijection archetype element -> target element that keeps the stoichiometry."""
    pc = proto.composition.reduced_composition
    tc = Composition(target.formula_unit).reduced_composition
    p_els = [el.symbol for el in pc.elements]
    t_els = [el.symbol for el in tc.elements]
    if len(p_els) != len(t_els):
        return []
    # Ratios must match up to one common factor (reduced compositions make it 1).
    out = []
    for perm in itertools.permutations(t_els):
        if all(abs(pc[p] - tc[t]) < 1e-8 for p, t in zip(p_els, perm, strict=True)):
            out.append(dict(zip(p_els, perm, strict=True)))
    return out


def substitute(proto: Structure, mapping: dict[str, str]) -> Structure:
    """Replace the archetype's elements and rescale so the closest pair touches covalently.

    Every pair distance is compared with the sum of the new elements' covalent radii; the lattice
    is scaled so that the tightest pair sits exactly at that sum (the MLIP relaxation refines it).
    """
    s = proto.copy()
    s.replace_species({k: v for k, v in mapping.items()})
    if len(s) == 1:
        r = 2 * covalent_radius(s[0].specie.symbol)
        scale = r / min(s.lattice.abc)
    else:
        radii = np.array([covalent_radius(site.specie.symbol) for site in s])
        centers, points, _, dists = s.get_neighbor_list(max(s.lattice.abc) * 1.5)
        keep = dists > 1e-6
        ratio = dists[keep] / (radii[centers[keep]] + radii[points[keep]])
        scale = 1.0 / float(ratio.min())
    s.scale_lattice(s.volume * scale**3)
    return s


def _same(a: Structure, b: Structure) -> bool:
    from cspflow.dedup.match import structures_match

    return structures_match(a, b)


@dataclass
class Prototype:
    """Substitution of the composition into prototype structures.

    Parameters
    ----------
    files
        Extra prototype structure files (any composition with the same number of elements;
        every stoichiometry-preserving element assignment is tried).
    builtin
        Use the shipped library too.
    """

    files: list[str] = field(default_factory=list)
    builtin: bool = True
    name: ClassVar[str] = "prototype"

    def library(self) -> dict[str, Structure]:
        """Name -> archetype structure, built-in first, then the user's files."""
        lib = dict(builtin_prototypes()) if self.builtin else {}
        for path in self.files:
            for i, s in enumerate(read_structures(path)):
                lib[f"{Path(path).stem}" + (f"#{i}" if i else "")] = s
        return lib

    def attempts(
        self, target: Target, seed: int, context: SourceContext
    ) -> Iterator[Generated | None]:
        """Each (prototype, element assignment) once, in a seeded order."""
        jobs = []
        for name, proto in self.library().items():
            for mapping in _assignments(proto, target):
                jobs.append((name, mapping))
        order = np.random.default_rng(seed).permutation(len(jobs))
        lib = self.library() if jobs else {}
        made: dict[str, list[Structure]] = {}
        for k in order:
            name, mapping = jobs[int(k)]
            s = primitive_cell(substitute(lib[name], mapping))
            # Assignments related by a pseudo-symmetry of the prototype (ilmenite's two cation
            # sites) give the same structure: keep the first.
            if any(_same(s, other) for other in made.get(name, [])):
                context.reject("equivalent assignment")
                yield None
                continue
            made.setdefault(name, []).append(s)
            if len(s) > target.max_atoms:
                context.reject("too many atoms")
                yield None
                continue
            gen = Generated(
                structure=s,
                source=self.name,
                params={"prototype": name, "assignment": mapping},
                seed=None,
            )
            yield _validated(gen, target, context)


# ---------------------------------------------------------------------------------------------
# mutation / heredity

#: the operators (pure functions in cspflow.generate.evolve, importable from here too)
MUTATIONS = ("strain", "permutation", "rattle", "heredity", "softmode", "supercell")


def _apply_operator(
    op: str, parents: Sequence[Parent], target: Target, rng: np.random.Generator
) -> tuple[Structure | None, list[Parent]]:
    """One child of operator ``op`` and the parents it used (rank-weighted: best first)."""
    pw = 1.0 / (1.0 + np.arange(len(parents)))
    pw /= pw.sum()
    first = parents[int(rng.choice(len(parents), p=pw))]
    if op == "strain":
        return strain(first.structure, rng), [first]
    if op == "permutation":
        return permute(first.structure, rng), [first]
    if op == "rattle":
        return rattle(first.structure, rng), [first]
    if op == "softmode":
        return softmode(first.structure, rng), [first]
    if op == "supercell":
        return supercell(first.structure, rng, target.max_atoms), [first]
    mates = [p for p in parents if p is not first and len(p.structure) == len(first.structure)]
    if not mates:
        return None, [first]
    second = mates[int(rng.integers(len(mates)))]
    return heredity(first.structure, second.structure, target, rng), [first, second]


@dataclass
class Mutation:
    """Variation operators applied to the lowest-energy stored structures.

    Parameters
    ----------
    operators
        Relative weights of ``strain``, ``permutation``, ``rattle``, ``heredity``,
        ``softmode`` (:func:`cspflow.generate.evolve.softmode`) and ``supercell``
        (:func:`cspflow.generate.evolve.supercell`); a campaign with
        ``generate.adaptive`` replaces them each iteration by shares adapted to which operators
        put structures in the population.
    """

    operators: dict[str, float] = field(
        default_factory=lambda: {
            "strain": 0.2,
            "permutation": 0.2,
            "rattle": 0.1,
            "heredity": 0.3,
            "softmode": 0.2,
            "supercell": 0.2,
        }
    )
    name: ClassVar[str] = "mutation"
    stream: ClassVar[int] = 3
    #: children tried per attempt with the drawn operator before the attempt fails
    tries: ClassVar[int] = 8

    def __post_init__(self) -> None:
        unknown = sorted(set(self.operators) - set(MUTATIONS))
        if unknown:
            raise CspflowError(f"unknown mutation operator(s) {unknown}; choose from {MUTATIONS}")
        if any(w < 0 for w in self.operators.values()) or sum(self.operators.values()) <= 0:
            raise CspflowError("mutation operator weights must be >= 0 and not all zero")

    def make(self, target: Target, seed: int, context: SourceContext) -> Generated | None:
        """One attempt: draw an operator, then apply it to parents drawn for it (better parents
        more often) until a child passes the checks, at most ``tries`` times.

        The operator is drawn once per attempt, so the operators are used in their shares even
        when one of them often makes children the checks reject (a cut-and-splice child with
        overlapping atoms): drawing again after a rejection would hand the rejected operator's
        share to the ones that seldom fail.
        """
        parents = context.parents
        if not parents:
            return None
        rng = np.random.default_rng(seed)
        ops = [op for op in MUTATIONS if self.operators.get(op, 0) > 0]
        w = np.array([self.operators[op] for op in ops], dtype=float)
        op = str(rng.choice(ops, p=w / w.sum()))
        for _ in range(self.tries):
            child, used = _apply_operator(op, parents, target, rng)
            if child is None:
                context.reject(f"{op} not applicable")
                continue
            gen = Generated(
                structure=child,
                source=self.name,
                params={"operator": op},
                seed=seed,
                parent_ids=[p.candidate_id for p in used],
            )
            valid = _validated(gen, target, context)
            if valid is not None:
                return valid
        return None

    def attempts(
        self, target: Target, seed: int, context: SourceContext
    ) -> Iterator[Generated | None]:
        """Endless attempts while there are parents; none without."""
        if not context.parents:
            return
        for s in _child_seeds(seed, self.stream):
            yield self.make(target, s, context)


# ---------------------------------------------------------------------------------------------
# external


@dataclass
class External:
    """Structures from files, e.g. the output of a generative model, each taken once.

    The files are read when the source is built (an unreadable file raises right away).

    Parameters
    ----------
    files
        Files or directories to read (read and checked when the source is built).
    """

    files: list[str] = field(default_factory=list)
    name: ClassVar[str] = "external"

    def __post_init__(self) -> None:
        # Read up front: an unreadable file must stop the run before anything is written.
        self._structures = [(str(f), s) for f in self.files for s in read_structures(f)]

    def attempts(
        self, target: Target, seed: int, context: SourceContext
    ) -> Iterator[Generated | None]:
        """Every readable structure of the target composition, in file order."""
        for i, (f, s) in enumerate(self._structures):
            gen = Generated(
                structure=s.copy(), source=self.name, params={"file": f, "index": i}, seed=None
            )
            yield _validated(gen, target, context)


SOURCES: dict[str, type] = {
    "random_symmetric": RandomSymmetric,
    "prototype": Prototype,
    "mutation": Mutation,
    "external": External,
    "template": Template,
}


def make_source(name: str, **options: Any) -> Any:
    """Build a source by name.

    Raises
    ------
    CspflowError
        For an unknown source name.
    """
    if name not in SOURCES:
        raise CspflowError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[name](**options)
