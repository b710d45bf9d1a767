"""The ``template`` source: every known structure type of the target's stoichiometry.

Templates come from three libraries, deduplicated by structure type:

- pymatgen's 288 AFLOW prototypes (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``,
  read offline), named by mineral or common name and AFLOW label;
- cspflow's built-in prototype library (``cspflow/data/prototypes``, the ``prototype`` source);
  a built-in type that an AFLOW type matches (anonymous StructureMatcher) is kept once, under
  the AFLOW label, with the built-in name recorded beside it;
- the database: relaxed structures (converged DFT, or MLIP when asked) of *other* compositions
  with the same anonymized stoichiometry, from any campaign
  (:func:`cspflow.store.candidates.template_pool`); the candidate made from one names it in
  ``parent_ids``.

A template fits a target when its reduced anonymized formula equals the target's and its
primitive cell holds at most ``max_atoms`` atoms (``max_atoms`` counts primitive-cell atoms, as
for every source). Every stoichiometry-preserving assignment of the target's elements to the
template's elements is a candidate; (template, assignment) pairs are ranked by
:func:`score_assignment`:

``substitution`` (default)
    pymatgen's data-mined ion substitution probability (Hautier et al., Inorg. Chem. 50, 656
    (2011); ``SubstitutionProbability``, data inside pymatgen): the product over the template's
    elements of P(target ion | template ion), oxidation states guessed for both compositions
    (``Composition.oxi_state_guesses``).
``electronegativity``
    exp(-sum |X_template - X_target|) over the assignment (Pauling electronegativities). It is
    the fallback of ``substitution`` when oxidation states cannot be guessed (elements,
    intermetallics) or an ion is not in pymatgen's table; such pairs rank after every pair
    scored by probability.
``random``
    a seeded shuffle.

The initial volume is pymatgen's DLSVolumePredictor (data-mined bond lengths) by default, or
the prototype source's covalent-radius rule (:func:`cspflow.generate.sources.substitute`); the
generate stage's volume window and hard constraints apply after either (``_validated``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymongo.database import Database

    from cspflow.generate.composition import Target
    from cspflow.generate.sources import Generated, SourceContext

__all__ = [
    "TemplateType",
    "Template",
    "stoichiometry",
    "aflow_templates",
    "library_templates",
    "matching_templates",
    "score_assignment",
    "place",
    "stored_templates",
    "reference_templates",
    "require_templates",
]


@dataclass(frozen=True)
class TemplateType:
    """One structure type a target can be substituted into.

    Attributes
    ----------
    id
        AFLOW label (``LABEL/2``, ``/3`` for later entries sharing a label), ``builtin:NAME``
        for a built-in type AFLOW lacks, or the stored candidate id.
    name
        Mineral or common name (AFLOW), the built-in name, or the stored formula.
    origin
        ``aflow``, ``builtin`` or ``database``.
    structure
        Primitive cell, with the template's own elements.
    tags
        AFLOW's pearson/strukturbericht/aflow/mineral, ``builtin`` (the merged built-in name),
        or the stored candidate's campaign and energy.
    """

    id: str
    name: str
    origin: str
    structure: Structure
    tags: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        """``name (id)``, e.g. ``Spinel (A2BC4_cF56_227_d_a_e)``."""
        return f"{self.name} ({self.id})"


def stoichiometry(formula: Any) -> str:
    """The reduced anonymized formula (``MgAl2O4`` -> ``AB2C4``)."""
    from pymatgen.core import Composition

    return str(Composition(formula).reduced_composition.anonymized_formula)


def _primitive(s: Structure) -> Structure:
    from cspflow.generate.sources import primitive_cell

    return primitive_cell(s)


def _spacegroup(s: Structure) -> int:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return int(SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number())


def _anon_matcher() -> Any:
    from cspflow.dedup.match import MATCHER_KWARGS, matcher

    return matcher(**MATCHER_KWARGS)


@lru_cache(maxsize=1)
def aflow_templates() -> tuple[TemplateType, ...]:
    """pymatgen's AFLOW prototypes as templates (cells as stored), in file order."""
    from importlib.resources import files

    from monty.serialization import loadfn

    path = files("pymatgen") / "analysis" / "prototypes" / "aflow_prototypes.json.gz"
    out = []
    seen: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entry in loadfn(str(path)):
            tags = {k: v for k, v in entry["tags"].items() if v not in (None, "None", "")}
            name = tags.get("mineral") or tags.get("strukturbericht") or tags.get("pearson")
            s = entry["snl"].structure  # as stored; reduced when a stoichiometry asks
            # a few labels name several entries (marcasite and hydrophilite): number the later
            seen[tags["aflow"]] = seen.get(tags["aflow"], 0) + 1
            tid = tags["aflow"] + (f"/{seen[tags['aflow']]}" if seen[tags["aflow"]] > 1 else "")
            out.append(TemplateType(tid, str(name), "aflow", s, tags))
    return tuple(out)


@lru_cache(maxsize=64)
def library_templates(
    stoich: str, aflow: bool = True, builtin: bool = True
) -> tuple[TemplateType, ...]:
    """AFLOW and built-in templates of one stoichiometry (any cell size), one per type.

    A built-in prototype that an AFLOW one of the same stoichiometry matches (same space group
    at symprec 0.1 and an anonymous StructureMatcher fit, cspflow's tolerances) is dropped;
    the AFLOW entry records its name under ``tags["builtin"]``.
    """
    from cspflow.generate.sources import builtin_prototypes

    kept = [
        TemplateType(t.id, t.name, t.origin, _primitive(t.structure), t.tags)
        for t in (aflow_templates() if aflow else ())
        if stoichiometry(t.structure.composition) == stoich
    ]
    if builtin:
        sm = _anon_matcher()
        for name, s in builtin_prototypes().items():
            if stoichiometry(s.composition) != stoich:
                continue
            prim = _primitive(s)
            sg = _spacegroup(prim)
            # same type: same space group and an anonymous match (the matcher alone takes
            # distorted variants, e.g. marcasite for rutile, for the same type)
            twin = next(
                (k for k, t in enumerate(kept) if len(t.structure) == len(prim)
                 and _spacegroup(t.structure) == sg and sm.fit_anonymous(t.structure, prim)),
                None,
            )  # fmt: skip
            if twin is None:
                kept.append(TemplateType(f"builtin:{name}", name, "builtin", prim, {}))
            else:
                t = kept[twin]
                kept[twin] = TemplateType(t.id, t.name, t.origin, t.structure,
                                          {**t.tags, "builtin": name})  # fmt: skip
    return tuple(kept)


def matching_templates(
    target: Target,
    exclude: Sequence[str] = (),
    aflow: bool = True,
    builtin: bool = True,
    stored: Sequence[TemplateType] = (),
) -> tuple[list[TemplateType], list[TemplateType]]:
    """(templates that fit the target, those of its stoichiometry with too many atoms).

    ``exclude`` lists template ids (or built-in names) to leave out; ``stored`` adds the
    database's templates (:func:`stored_templates`).
    """
    stoich = stoichiometry(target.formula_unit)
    skip = set(exclude)
    fit: list[TemplateType] = []
    large: list[TemplateType] = []
    for t in (*library_templates(stoich, aflow, builtin), *stored):
        if t.id in skip or t.tags.get("builtin") in skip or t.name in skip:
            continue
        (fit if len(t.structure) <= target.max_atoms else large).append(t)
    return fit, large


def require_templates(target: Target, **options: Any) -> list[TemplateType]:
    """The fitting templates, or a one-line :class:`CspflowError` with the counts."""
    fit, large = matching_templates(target, **options)
    if not fit:
        stoich = stoichiometry(target.formula_unit)
        more = (f"; {len(large)} of that stoichiometry need more atoms (smallest "
                f"{min(len(t.structure) for t in large)}): raise --max-atoms" if large
                else "; use another source")  # fmt: skip
        raise CspflowError(
            f"no template of stoichiometry {stoich} for {target.formula} within "
            f"{target.max_atoms} atoms (0 of {len(aflow_templates())} AFLOW prototypes and "
            f"the built-in library fit){more}"
        )
    return fit


# ---------------------------------------------------------------------------------------------
# ranking


@lru_cache(maxsize=512)
def _oxidation(formula: str) -> tuple[tuple[str, float], ...] | None:
    """The most likely oxidation state per element (pymatgen), or None when none is found."""
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guesses = Composition(formula).oxi_state_guesses(max_sites=-20)
    if not guesses:
        return None
    return tuple(sorted((el, float(ox)) for el, ox in guesses[0].items()))


@lru_cache(maxsize=1)
def _substitution() -> Any:
    from pymatgen.analysis.structure_prediction.substitution_probability import (
        SubstitutionProbability,
    )

    return SubstitutionProbability()


def _electronegativity_score(mapping: dict[str, str]) -> float:
    from pymatgen.core import Element

    total = 0.0
    for a, b in mapping.items():
        xa, xb = Element(a).X, Element(b).X
        total += abs(xa - xb) if math.isfinite(xa) and math.isfinite(xb) else 2.0
    return math.exp(-total)


def score_assignment(
    template_formula: str, target_formula: str, mapping: dict[str, str], ranking: str
) -> tuple[float, str]:
    """Score one assignment template element -> target element: (score, scorer).

    See the module docstring for the rules; ``scorer`` is ``substitution_probability`` or
    ``electronegativity``.
    """
    if ranking == "substitution":
        ox_t, ox_n = _oxidation(template_formula), _oxidation(target_formula)
        if ox_t and ox_n and all(ox != 0 for _, ox in ox_t + ox_n):
            from pymatgen.core import Species

            dt, dn = dict(ox_t), dict(ox_n)
            sp = _substitution()
            try:
                p = 1.0
                for a, b in mapping.items():
                    p *= sp.cond_prob(Species(b, dn[b]), Species(a, dt[a]))
                return p, "substitution_probability"
            except (KeyError, ZeroDivisionError):
                pass  # an ion outside pymatgen's table (or never seen in it)
    return _electronegativity_score(mapping), "electronegativity"


def _assignments(template: Structure, target: Target) -> list[dict[str, str]]:
    from cspflow.generate.sources import _assignments as assign

    return assign(template, target)


def place(template: Structure, mapping: dict[str, str], volume: str) -> Structure:
    """The template with the target's elements at an initial volume (``dls`` or ``covalent``)."""
    from cspflow.generate.sources import substitute

    if volume == "covalent":
        return substitute(template, mapping)
    from pymatgen.analysis.structure_prediction.volume_predictor import DLSVolumePredictor

    s = template.copy()
    s.replace_species(dict(mapping))  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return DLSVolumePredictor().get_predicted_structure(s)
        except (ValueError, KeyError):
            return substitute(template, mapping)  # no bond data: the covalent rule


# ---------------------------------------------------------------------------------------------
# database templates


def stored_templates(
    db: Database, target: Target, level: str = "dft", per_formula: int = 3
) -> list[TemplateType]:
    """Relaxed structures of other formulas with the target's stoichiometry, as templates."""
    from pymatgen.core import Structure

    from cspflow.store import candidates

    stoich = stoichiometry(target.formula_unit)
    out = []
    for doc in candidates.template_pool(
        db, level, target.formula, lambda f: stoichiometry(f) == stoich, per_formula
    ):
        data = ((doc.get("relaxed") or {}).get(level) or {}).get("structure")
        if not data:
            continue
        tags = {"campaign": doc.get("campaign"), "level": level,
                "energy_per_atom": doc["energy_per_atom"][level]}  # fmt: skip
        s = _primitive(Structure.from_dict(data))
        out.append(TemplateType(doc["candidate_id"], doc["formula"], "database", s, tags))
    return out


def reference_templates(reference: Structure, target: Target, **options: Any) -> list[str]:
    """Ids of the templates (every cell size) that are the reference's structure type.

    Anonymous StructureMatcher (cspflow's tolerances) of the reference against each template of
    its stoichiometry: what a leave-one-out benchmark removes.
    """
    fit, large = matching_templates(target, **options)
    sm = _anon_matcher()
    return [t.id for t in fit + large if sm.fit_anonymous(reference, t.structure)]


# ---------------------------------------------------------------------------------------------
# the source


@dataclass
class Template:
    """Substitution of the target into every known structure type of its stoichiometry.

    The keyword arguments are :class:`~cspflow.schemas.template.TemplateSettings` (the
    campaign spec's ``generate.template``) plus ``stored``, the database's templates that the
    generate job loads (:func:`stored_templates`).
    """

    per_iteration: int | None = None
    ranking: str = "substitution"
    volume: str = "dls"
    aflow: bool = True
    builtin: bool = True
    database: bool = True
    database_level: str = "dft"
    database_per_formula: int = 3
    exclude: list[str] = field(default_factory=list)
    stored: list[TemplateType] = field(default_factory=list)
    name: ClassVar[str] = "template"

    def ranked(
        self, target: Target, seed: int = 0
    ) -> list[tuple[TemplateType, dict[str, str], float, str]]:
        """Every fitting (template, assignment, score, scorer), best first."""
        fit, _ = matching_templates(target, self.exclude, self.aflow, self.builtin, self.stored)
        jobs = []
        for t in fit:
            formula = t.structure.composition.reduced_formula
            for mapping in _assignments(t.structure, target):
                score, scorer = score_assignment(formula, target.formula, mapping, self.ranking)
                jobs.append((t, mapping, score, scorer))
        if self.ranking == "random":
            order = np.random.default_rng(seed).permutation(len(jobs))
            return [jobs[int(k)] for k in order]
        # equal scores: a stored (relaxed) structure before the idealized library type,
        # then library order
        return sorted(
            jobs,
            key=lambda j: (j[3] != "substitution_probability", -j[2], j[0].origin != "database"),
        )

    def attempts(
        self, target: Target, seed: int, context: SourceContext
    ) -> Iterator[Generated | None]:
        """Each (template, assignment) once, best-ranked first."""
        from cspflow.generate.sources import Generated, _same, _validated

        made: dict[str, list[Structure]] = {}
        for t, mapping, score, scorer in self.ranked(target, seed):
            s = _primitive(place(t.structure, mapping, self.volume))
            # assignments related by a pseudo-symmetry of the template give one structure
            if any(_same(s, other) for other in made.get(t.id, [])):
                context.reject("equivalent assignment")
                yield None
                continue
            made.setdefault(t.id, []).append(s)
            params: dict[str, Any] = {
                "template": t.id, "template_name": t.name, "template_origin": t.origin,
                "substitution": dict(mapping), "score": float(f"{score:.4g}"), "scorer": scorer,
                "volume": self.volume,
            }  # fmt: skip
            if t.tags.get("builtin"):
                params["builtin"] = t.tags["builtin"]
            gen = Generated(
                structure=s, source=self.name, params=params, seed=None,
                parent_ids=[t.id] if t.origin == "database" else [],
            )  # fmt: skip
            yield _validated(gen, target, context)


def template_counts(weights: dict[str, float], n: int, count: int | None) -> dict[str, float]:
    """Weights that give the template source ``count`` of ``n`` candidates (others scaled)."""
    if count is None or "template" not in weights or n <= 0:
        return weights
    share = min(count, n) / n
    rest = {k: v for k, v in weights.items() if k != "template"}
    total = sum(rest.values())
    if total <= 0:
        return {"template": 1.0}
    return {**{k: v / total * (1 - share) for k, v in rest.items()}, "template": share}


def with_stored_templates(
    db: Database,
    target: Target,
    weights: dict[str, float],
    n: int,
    source_options: dict[str, dict[str, Any]] | None,
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """The generate job's weights and source options with the database's templates loaded.

    Loads :func:`stored_templates` when ``database`` is on (the default) and gives the template
    source ``per_iteration`` of the ``n`` candidates when that is set.
    """
    options = {k: dict(v) for k, v in (source_options or {}).items()}
    opts = options.setdefault("template", {})
    if opts.get("database", True):
        opts["stored"] = stored_templates(
            db, target, opts.get("database_level", "dft"), opts.get("database_per_formula", 3)
        )
    return template_counts(weights, n, opts.get("per_iteration")), options


def describe(source: Template, target: Target) -> dict[str, Any]:
    """What ``cspflow generate --list-templates`` shows: every fitting template, best first.

    Returns ``{"formula", "stoichiometry", "max_atoms", "templates": [...], "too_large"}``;
    each template row holds id, name, origin, nsites, spacegroup, pearson, strukturbericht,
    builtin, assignments, and its best-ranked substitution with score and scorer.
    """
    fit, large = matching_templates(
        target, source.exclude, source.aflow, source.builtin, source.stored
    )
    best: dict[str, tuple[dict[str, str], float, str]] = {}
    count: dict[str, int] = {}
    for t, mapping, score, scorer in source.ranked(target):
        best.setdefault(t.id, (mapping, score, scorer))
        count[t.id] = count.get(t.id, 0) + 1
    rows = []
    for t in sorted(fit, key=lambda t: list(best).index(t.id) if t.id in best else len(best)):
        mapping, score, scorer = best.get(t.id, ({}, 0.0, "none"))
        rows.append({
            "id": t.id, "name": t.name, "origin": t.origin, "nsites": len(t.structure),
            "spacegroup": _spacegroup(t.structure), "pearson": t.tags.get("pearson"),
            "strukturbericht": t.tags.get("strukturbericht"), "builtin": t.tags.get("builtin"),
            "assignments": count.get(t.id, 0), "substitution": mapping,
            "score": float(f"{score:.4g}"), "scorer": scorer,
        })  # fmt: skip
    return {"formula": target.formula, "stoichiometry": stoichiometry(target.formula_unit),
            "max_atoms": target.max_atoms, "templates": rows,
            "too_large": [{"id": t.id, "name": t.name, "nsites": len(t.structure)}
                          for t in large]}  # fmt: skip
