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

__all__ = [
    "TOP",
    "operator_summary",
    "next_shares",
    "rediscovery",
    "ground_state",
    "rediscovery_summary",
    "confidences",
]

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
    """How often the search finds its lowest minimum again, and whether it has likely seen the
    ground state: the stopping signal.

    Parameters
    ----------
    minima
        ``{"candidate_id", "energy_per_atom", "hits"}`` per minimum, lowest first
        (:func:`cspflow.store.candidate_stats.minima_hits`).

    Returns
    -------
    dict
        ``relaxed`` (``N``: relaxations that reached a minimum), ``minima`` (``M`` distinct
        ones), ``best`` and ``best_hits`` (the lowest minimum and how many independent
        relaxations ended in it), ``singletons`` (``N1``: minima reached once),
        ``doubletons`` (``N2``: reached twice), and the estimates of :func:`ground_state`:
        ``new_minimum_chance``, ``lower_minimum_chance``, ``unseen_minima`` and
        ``ground_state_confidence`` (None where nothing relaxed).
    """
    n = sum(m["hits"] for m in minima)
    if not n:
        return {"relaxed": 0, "minima": 0, "best": None, "best_hits": 0, "singletons": 0,
                "doubletons": 0, "new_minimum_chance": None, "lower_minimum_chance": None,
                "unseen_minima": None, "ground_state_confidence": None}  # fmt: skip
    n1 = sum(1 for m in minima if m["hits"] == 1)
    n2 = sum(1 for m in minima if m["hits"] == 2)
    est = ground_state(n, len(minima), n1, n2, minima[0]["hits"])
    return {"relaxed": n, "minima": len(minima), "best": minima[0]["candidate_id"],
            "best_hits": minima[0]["hits"], "singletons": n1, "doubletons": n2,
            **est}  # fmt: skip


def ground_state(n: int, m: int, n1: int, n2: int, best_hits: int) -> dict[str, float]:
    """Estimates that the lowest minimum found is the lowest there is (for this energy model,
    composition and cell size), from how often minima were reached.

    Parameters
    ----------
    n
        Relaxations that reached a minimum (each counts for the minimum it ended in).
    m
        Distinct minima reached.
    n1, n2
        Minima reached exactly once and exactly twice.
    best_hits
        Relaxations that ended in the lowest minimum.

    Returns
    -------
    dict
        - ``new_minimum_chance``: ``n1 / n``, the Good-Turing estimate of the probability that
          the next relaxation ends in a minimum not reached yet (the unseen basins' share).
        - ``lower_minimum_chance``: ``n1 / n / (m + 1)``, the chance that the next relaxation
          ends in a new minimum *lower* than the best, if a new minimum's energy is as likely to
          rank anywhere among the ``m + 1`` as not.
        - ``unseen_minima``: ``f0 = n1 (n1 - 1) / (2 (n2 + 1)) + 1 / n``: the bias-corrected
          Chao1 estimate of the minima not reached yet (Chao, Scand. J. Stat. 11, 265 (1984);
          the form scikit-bio's ``chao1`` uses), plus ``1 / n`` so that no finite search rules
          a lower minimum out.
        - ``ground_state_confidence``: ``(m / (m + 1)) ** f0``, the probability that none of
          the ``f0`` unseen minima ranks below the best under the same rank assumption; 0 while
          the best was reached by fewer than two independent relaxations.

    Notes
    -----
    Assumptions: relaxations are independent draws of basins (a mutation of the best is not
    independent of it, so evolutionary searches overstate the confidence); minima are counted
    by the deduplication (two relaxed copies of one minimum are one); the rank assumption
    ignores that low minima tend to have large basins, which makes the estimate conservative
    where that holds. The estimate is about the sampled space (the composition, the cell
    sizes up to ``max_atoms``, the generator), not about structures the search cannot reach.
    """
    new = n1 / n
    f0 = n1 * (n1 - 1) / (2 * (n2 + 1)) + 1 / n
    conf = (m / (m + 1)) ** f0 if best_hits >= 2 else 0.0
    return {"new_minimum_chance": round(new, 3), "lower_minimum_chance": round(new / (m + 1), 4),
            "unseen_minima": round(f0, 2), "ground_state_confidence": round(conf, 3)}  # fmt: skip


def rediscovery_summary(db: Database, spec: CampaignSpec) -> dict[str, Any]:
    """:func:`rediscovery` per formula of the campaign so far."""
    from cspflow.generate.composition import parse_target

    out = {}
    for composition in spec.formulas():
        formula = parse_target(composition, spec.max_atoms).formula
        out[formula] = rediscovery(candidate_stats.minima_hits(db, spec.name, formula))
    return out


def confidences(rediscovered: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """``ground_state_confidence`` per formula of a :func:`rediscovery_summary`."""
    return {f: rec.get("ground_state_confidence") for f, rec in rediscovered.items()}


def next_shares(db: Database, spec: CampaignSpec, iteration: int) -> dict[str, Any]:
    """Per formula, the source, mutation-operator and formula-unit shares the next iteration's
    generate job draws with (with ``generate.adaptive``) and, with ``generate.bandit``, its
    (space group, formula units) arm shares under ``arms``
    (:func:`cspflow.generate.allocation.top_arms`: the largest shares and their outcomes);
    ``{}`` when neither is on. Recorded so that ``campaign status`` shows how the search
    shifted."""
    from cspflow.generate.batch import load_parents
    from cspflow.generate.composition import parse_target
    from cspflow.generate.maker import adapted_shares, arm_allocation
    from cspflow.generate.priors import check_prior

    g = spec.generate
    if not g.adaptive and not g.bandit:
        return {}
    rs = {"spacegroup_prior": g.spacegroup_prior, "prior_mix": g.prior_mix,
          **g.source_options.get("random_symmetric", {})}  # fmt: skip
    out: dict[str, Any] = {}
    for composition in spec.formulas():
        target = parse_target(composition, spec.max_atoms)
        row: dict[str, Any] = {}
        if g.adaptive:
            population = [p.candidate_id for p in load_parents(db, target.formula, g.parent_pool,
                                                               g.niche_distance)]  # fmt: skip
            row = adapted_shares(
                db, spec.name, iteration + 1, target.formula, dict(g.sources),
                dict(g.source_options.get("mutation", {})), population, g.min_share,
                target.fu_counts,
            )  # fmt: skip
        if g.bandit and g.sources.get("random_symmetric"):
            rec = arm_allocation(
                db, spec.name, iteration + 1, target, check_prior(rs["spacegroup_prior"]),
                float(rs["prior_mix"]), g.bandit_window, g.bandit_strength,
                g.seed + iteration + 1,
            )  # fmt: skip
            rec.pop("shares")
            row["arms"] = rec
        out[target.formula] = row
    return out
