"""Per-source and per-operator statistics of a campaign iteration (the evolutionary record).

:func:`operator_summary` is what :func:`cspflow.campaign.loop.decide` adds to each iteration
summary under ``operators``: for every source and mutation operator (``mutation:heredity``, ...)
of the iteration's candidates, how many were generated, relaxed, failed and duplicates, how many
are in the population (the niched lowest unique structures of their composition,
:func:`cspflow.generate.batch.load_parents`) and in the top :data:`TOP` after the iteration, and
their best MLIP energy. ``cspflow campaign status`` shows them; the next iteration's generate
job adapts the shares of sources and operators to the same counts over all earlier iterations
(:func:`cspflow.generate.evolve.adapt_weights`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cspflow.store import candidate_stats

if TYPE_CHECKING:
    from pymongo.database import Database

    from cspflow.schemas.campaign import CampaignSpec

__all__ = ["TOP", "operator_summary", "next_shares", "rediscovery", "rediscovery_summary"]

#: the top-k the statistics count entries into (per composition, lowest unique energies)
TOP = 5


def operator_summary(db: Database, spec: CampaignSpec, iteration: int) -> dict[str, Any]:
    """Statistics per source / operator of one iteration (see the module docstring)."""
    from cspflow.generate.batch import load_parents
    from cspflow.generate.evolve import operator_stats

    docs = candidate_stats.source_records(db, spec.name, iteration=iteration)
    g = spec.generate
    population: list[str] = []
    top: list[str] = []
    for formula in sorted({d["formula"] for d in docs if d.get("formula")}):
        population += [p.candidate_id for p in load_parents(db, formula, g.parent_pool,
                                                            g.niche_distance)]  # fmt: skip
        top += [p.candidate_id for p in load_parents(db, formula, TOP)]
    return operator_stats(docs, population, top)


def rediscovery(minima: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the search finds its lowest minimum again: a stopping signal.

    Parameters
    ----------
    minima
        ``{"candidate_id", "energy_per_atom", "hits"}`` per minimum, lowest first
        (:func:`cspflow.store.candidate_stats.minima_hits`).

    Returns
    -------
    dict
        ``relaxed`` (relaxations that reached a minimum), ``minima`` (distinct ones),
        ``best`` and ``best_hits`` (the lowest minimum and how often it was reached),
        ``singletons`` (minima reached once) and ``new_minimum_chance``: the Good-Turing
        estimate ``singletons / relaxed`` of the chance that the next relaxation reaches a
        minimum not seen yet. A lowest minimum reached several times while that chance is small
        is the signal that the search has likely seen the ground state of this energy model
        and cell size; a best reached once, with many singletons, says it has not.
    """
    n = sum(m["hits"] for m in minima)
    if not n:
        return {"relaxed": 0, "minima": 0, "best": None, "best_hits": 0, "singletons": 0,
                "new_minimum_chance": None}  # fmt: skip
    singletons = sum(1 for m in minima if m["hits"] == 1)
    return {"relaxed": n, "minima": len(minima), "best": minima[0]["candidate_id"],
            "best_hits": minima[0]["hits"], "singletons": singletons,
            "new_minimum_chance": round(singletons / n, 3)}  # fmt: skip


def rediscovery_summary(db: Database, spec: CampaignSpec) -> dict[str, Any]:
    """:func:`rediscovery` per formula of the campaign so far."""
    from cspflow.generate.composition import parse_target

    out = {}
    for composition in spec.formulas():
        formula = parse_target(composition, spec.max_atoms).formula
        out[formula] = rediscovery(candidate_stats.minima_hits(db, spec.name, formula))
    return out


def next_shares(db: Database, spec: CampaignSpec, iteration: int) -> dict[str, Any]:
    """Per formula, the source, mutation-operator and formula-unit shares the next iteration's
    generate job draws with (``{}`` when ``generate.adaptive`` is off): recorded so that ``campaign status``
    shows how the search shifted."""
    from cspflow.generate.batch import load_parents
    from cspflow.generate.maker import adapted_shares

    g = spec.generate
    if not g.adaptive:
        return {}
    from cspflow.generate.composition import parse_target

    out: dict[str, Any] = {}
    for composition in spec.formulas():
        formula = parse_target(composition, spec.max_atoms).formula
        population = [p.candidate_id for p in load_parents(db, formula, g.parent_pool,
                                                           g.niche_distance)]  # fmt: skip
        out[formula] = adapted_shares(
            db, spec.name, iteration + 1, formula, dict(g.sources),
            dict(g.source_options.get("mutation", {})), population, g.min_share,
            parse_target(composition, spec.max_atoms).fu_counts,
        )  # fmt: skip
    return out
