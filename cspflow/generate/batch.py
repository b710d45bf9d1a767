"""Generate a batch of unique candidates: sources mixed by weight, then deduplicated."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cspflow.dedup.fingerprint import Fingerprint, fingerprint
from cspflow.errors import CspflowError
from cspflow.generate.composition import Target
from cspflow.generate.sources import SOURCES, Generated, Parent, SourceContext, make_source

if TYPE_CHECKING:
    from pymongo.database import Database

    from cspflow.schemas.candidate import GenerateSummary

__all__ = [
    "DEFAULT_SOURCES",
    "parse_sources",
    "add_source_files",
    "generate_batch",
    "load_parents",
    "BatchResult",
]

DEFAULT_SOURCES: dict[str, float] = {"random_symmetric": 0.8, "prototype": 0.2}
#: sources that can always make another attempt (take over the quota of exhausted ones)
_ENDLESS = ("random_symmetric", "mutation")


def parse_sources(spec: str | dict[str, float] | None) -> dict[str, float]:
    """Parse ``"random_symmetric:0.6,prototype:0.2,mutation:0.2"`` (or a dict) into weights.

    A name without a weight gets 1. Weights are normalised to sum to 1.

    Raises
    ------
    CspflowError
        For an unknown source, a weight that is not a non-negative number, or all zeros.
    """
    if spec is None or spec == "":
        return dict(DEFAULT_SOURCES)
    if isinstance(spec, str):
        items: dict[str, float] = {}
        for part in spec.split(","):
            name, _, weight = part.strip().partition(":")
            try:
                items[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise CspflowError(
                    f"source weight {weight!r} for {name!r} is not a number; "
                    "write e.g. random_symmetric:0.8,prototype:0.2"
                ) from None
    else:
        items = {k: float(v) for k, v in spec.items()}
    for name, w in items.items():
        if name not in SOURCES:
            raise CspflowError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
        if w < 0:
            raise CspflowError(f"source weight for {name!r} is negative; use weights >= 0")
    total = sum(items.values())
    if total <= 0:
        raise CspflowError("all source weights are zero; give at least one positive weight")
    return {k: v / total for k, v in items.items() if v > 0}


def add_source_files(
    weights: dict[str, float],
    n: int,
    *,
    external: list[str] | None = None,
    prototypes: list[str] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Add structure files to parsed source weights: the weights and ``source_options`` to use.

    Every file is read now, so an unreadable one stops a run before anything is written.
    External files given without an ``external`` weight are all ingested first (their share of
    ``n``) and the other sources fill up the rest; prototype files extend the prototype library.

    Parameters
    ----------
    weights
        Normalised weights (:func:`parse_sources`).
    n
        Number of unique structures wanted.
    external, prototypes
        Structure files or directories for the ``external`` and ``prototype`` sources.

    Raises
    ------
    CspflowError
        For a file that cannot be read.
    """
    from cspflow.generate.sources import External, Prototype

    options: dict[str, dict[str, Any]] = {}
    if external:
        n_ext = len(External(files=external)._structures)
        options["external"] = {"files": external}
        if "external" not in weights:
            share = min(n_ext, n) / n
            weights = {k: v * (1 - share) for k, v in weights.items()}
            weights = parse_sources({**weights, "external": share})
    if prototypes:
        Prototype(files=prototypes).library()
        options["prototype"] = {"files": prototypes}
    return weights, options


def _quotas(weights: dict[str, float], n: int) -> dict[str, int]:
    raw = {k: w * n for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


@dataclass
class BatchResult:
    """New unique candidates (id, generated structure, fingerprint) and the job summary."""

    new: list[tuple[str, Generated, Fingerprint]] = field(default_factory=list)
    summary: GenerateSummary | None = None


def load_parents(
    db: Database, formula: str, pool_size: int = 20, niche_distance: float = 0.0
) -> list[Parent]:
    """Return the population of a formula: its lowest-energy unique stored structures, best first.

    The energy is ``energy_per_atom.dft`` when present, else ``energy_per_atom.mlip``; the
    structure is the most refined one stored (DFT-relaxed, MLIP-relaxed, then as generated).
    Failed candidates, duplicates (another candidate is the same minimum: the population holds
    each minimum once) and those without any energy are skipped. With ``niche_distance > 0``
    a structure whose fingerprint lies closer than that to a better member's is left out
    (:func:`cspflow.generate.evolve.niche`; up to three times ``pool_size`` are read to fill
    the population).
    """
    from pymatgen.core import Structure

    from cspflow.dedup.fingerprint import fingerprint
    from cspflow.generate.evolve import niche
    from cspflow.store import candidates

    read = pool_size * (3 if niche_distance > 0 else 1)
    out, vectors = [], []
    for doc in candidates.parent_pool(db, formula, read):
        relaxed = doc.get("relaxed") or {}
        data = (
            (relaxed.get("dft") or {}).get("structure")
            or (relaxed.get("mlip") or {}).get("structure")
            or doc["structure"]
        )
        energy = candidates.preferred_energy(doc)
        structure = Structure.from_dict(data)
        out.append(Parent(doc["candidate_id"], structure, energy))
        if niche_distance > 0:
            forms = doc.get("dedup_forms") or {}
            level = "dft" if (relaxed.get("dft") or {}).get("structure") else "mlip"
            vec = (forms.get(level) or {}).get("fingerprint")
            vectors.append(np.asarray(vec) if vec else fingerprint(structure).vector)
    if niche_distance > 0:
        out = [out[i] for i in niche(out, vectors, niche_distance)]
    return out[:pool_size]


def generate_batch(
    target: Target,
    n: int,
    index: Any,
    *,
    sources: dict[str, float] | None = None,
    seed: int = 0,
    context: SourceContext | None = None,
    source_options: dict[str, dict[str, Any]] | None = None,
    campaign: str | None = None,
    iteration: int | None = None,
    max_attempts: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Generate up to ``n`` new unique candidates.

    Parameters
    ----------
    target
        Composition and maximum cell size.
    n
        Number of new unique candidates wanted.
    index
        Deduplication index: :class:`~cspflow.dedup.index.MemoryIndex` or
        :class:`~cspflow.dedup.index.MongoIndex` (registers into the database).
    sources
        Source name -> weight (normalised); default :data:`DEFAULT_SOURCES`.
    seed
        Batch seed: the same seed, sources and stored parents give the same structures.
    context
        Constraints, parents for mutation, per-structure time limit.
    source_options
        Keyword arguments per source (e.g. ``{"external": {"files": [...]}}``).
    campaign, iteration
        Recorded on every candidate.
    max_attempts
        Stop after this many attempts (default ``50 * n + 100``).
    progress
        Called as ``progress(n_new, n_attempts)`` after every attempt.

    Returns
    -------
    BatchResult
        The new candidates and a :class:`~cspflow.schemas.candidate.GenerateSummary`.
    """
    from cspflow.schemas.candidate import GenerateSummary

    t0 = time.monotonic()
    weights = parse_sources(sources)
    context = context or SourceContext()
    source_options = source_options or {}
    objs = {name: make_source(name, **source_options.get(name, {})) for name in weights}
    iters = {name: iter(objs[name].attempts(target, seed, context)) for name in weights}
    quota = _quotas(weights, n)
    made = dict.fromkeys(weights, 0)
    max_attempts = max_attempts if max_attempts is not None else 50 * n + 100
    result = BatchResult()
    summary = GenerateSummary(
        campaign=campaign, iteration=iteration, formula=target.formula, requested=n, seed=seed
    )
    spacegroups: dict[str, int] = {}
    fus: dict[str, int] = {}
    attempts = 0
    while len(result.new) < n and attempts < max_attempts:
        open_ = [k for k in iters if made[k] < quota[k]]
        if not open_:
            # Hand unused quota of exhausted finite sources to an endless one still running.
            endless = [k for k in iters if k in _ENDLESS]
            if not endless:
                break
            quota[endless[0]] += n - len(result.new)
            continue
        name = min(open_, key=lambda k: (made[k] / max(quota[k], 1), k))
        try:
            gen = next(iters[name])
        except StopIteration:
            del iters[name]
            quota[name] = made[name]
            continue
        attempts += 1
        if gen is not None:
            fp = fingerprint(gen.structure)
            doc = {"source": gen.source, "params": gen.params, "seed": gen.seed,
                   "parent_ids": gen.parent_ids, "campaign": campaign, "iteration": iteration,
                   "candidate_id": None}  # fmt: skip
            from cspflow.dedup.index import new_candidate_id

            doc["candidate_id"] = new_candidate_id(fp.formula)
            cid, is_new = index.register(gen.structure, fp, doc)
            if is_new:
                made[name] += 1
                result.new.append((cid, gen, fp))
                spacegroups[str(fp.spacegroup)] = spacegroups.get(str(fp.spacegroup), 0) + 1
                fu = str(len(gen.structure) // target.atoms_per_fu)
                fus[fu] = fus.get(fu, 0) + 1
            else:
                summary.n_duplicates += 1
        if progress is not None:
            progress(len(result.new), attempts)
    summary.candidate_ids = [cid for cid, _, _ in result.new]
    summary.n_new = len(result.new)
    summary.n_attempts = attempts
    summary.rejected = dict(context.rejected)
    summary.by_source = {k: v for k, v in made.items() if v}
    summary.spacegroups = dict(sorted(spacegroups.items(), key=lambda kv: int(kv[0])))
    summary.formula_units = dict(sorted(fus.items(), key=lambda kv: int(kv[0])))
    summary.elapsed_s = round(time.monotonic() - t0, 3)
    summary.complete = len(result.new) >= n
    result.summary = summary
    return result
