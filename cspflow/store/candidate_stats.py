"""Read-only statistics of a campaign's candidates, for reports, summaries and benchmarks.

The queries here report on the ``candidates`` collection and never change it: per-source /
per-operator records (:func:`source_records`), how often each minimum was reached
(:func:`minima_hits`), counts per status, duplicates and relaxations, how the MLIP
relaxations ended (:func:`relax_stats`), the best energies per formula, the DFT budget spent
(:func:`dft_runs`) and which generators made the best structures (:func:`best_sources`).
Every write, and the pools and reads the stages act on, stay with the collection's owner,
:mod:`cspflow.store.candidates`, whose accessor these queries use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cspflow.store.candidates import LEVELS, _coll, get_many, up_to_iteration, usable_query

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "source_records",
    "minima_hits",
    "relaxed_in_order",
    "count_relaxed",
    "status_counts",
    "count_duplicates",
    "relax_stats",
    "best_energies",
    "dft_runs",
    "best_sources",
]


def source_records(
    db: Database, campaign: str, max_iteration: int | None = None, iteration: int | None = None
) -> list[dict[str, Any]]:
    """What the per-source / per-operator statistics need of a campaign's candidates: id,
    formula, iteration, source, operator, formula units, space group (the drawn one, of
    ``random_symmetric``), status, duplicate_of, energies.

    ``iteration`` keeps one iteration; ``max_iteration`` those up to it.
    """
    query: dict[str, Any] = {"campaign": campaign}
    if iteration is not None:
        query["iteration"] = iteration
    elif max_iteration is not None:
        query["iteration"] = up_to_iteration(max_iteration)
    proj = {"_id": 0, "candidate_id": 1, "formula": 1, "iteration": 1, "source": 1,
            "params.operator": 1, "params.formula_units": 1, "params.spacegroup": 1,
            "status": 1, "duplicate_of": 1, "energy_per_atom": 1}  # fmt: skip
    return list(_coll(db).find(query, proj).sort("candidate_id", 1))


def minima_hits(db: Database, campaign: str, formula: str) -> list[dict[str, Any]]:
    """The relaxed minima a campaign reached for a formula, with how often it reached each.

    Every MLIP-relaxed, not failed candidate of the campaign counts once for its minimum: its
    ``duplicate_of`` (the minimum's representative, possibly another campaign's) or itself.

    Returns
    -------
    list of dict
        ``{"candidate_id", "energy_per_atom", "hits"}`` per minimum, lowest energy first.
    """
    query = {"campaign": campaign, "formula": formula, "status": {"$ne": "failed"},
             "energy_per_atom.mlip": {"$type": "number"}}  # fmt: skip
    hits: dict[str, int] = {}
    for doc in _coll(db).find(query, {"candidate_id": 1, "duplicate_of": 1}):
        rep = doc.get("duplicate_of") or doc["candidate_id"]
        hits[rep] = hits.get(rep, 0) + 1
    energies = {
        cid: (d.get("energy_per_atom") or {}).get("mlip")
        for cid, d in get_many(db, hits, {"energy_per_atom": 1}).items()
    }
    out = [{"candidate_id": cid, "energy_per_atom": energies.get(cid), "hits": n}
           for cid, n in hits.items() if energies.get(cid) is not None]  # fmt: skip
    return sorted(out, key=lambda d: (d["energy_per_atom"], d["candidate_id"]))


def relaxed_in_order(db: Database, campaign: str) -> list[dict[str, Any]]:
    """The campaign's MLIP-relaxed candidates in generation order."""
    query = {"campaign": campaign, "relaxed.mlip": {"$ne": None}}
    order = [("iteration", 1), ("created_at", 1), ("_id", 1)]
    return list(_coll(db).find(query).sort(order))


def count_relaxed(db: Database, campaign: str) -> int:
    """Candidates of the campaign MLIP-relaxed so far."""
    return int(_coll(db).count_documents({"campaign": campaign, "relaxed.mlip": {"$ne": None}}))


def status_counts(db: Database, campaign: str, iteration: int | None = None) -> dict[str, int]:
    """Candidates per status of a campaign (or one of its iterations)."""
    match: dict[str, Any] = {"campaign": campaign}
    if iteration is not None:
        match["iteration"] = iteration
    pipeline = [{"$match": match}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
    return {str(row["_id"]): int(row["n"]) for row in _coll(db).aggregate(pipeline)}


def count_duplicates(db: Database, campaign: str, iteration: int) -> int:
    """Candidates of a campaign iteration that relaxed into another candidate's minimum."""
    query = {"campaign": campaign, "iteration": iteration, "duplicate_of": {"$ne": None}}
    return int(_coll(db).count_documents(query))


def relax_stats(db: Database, campaign: str, iteration: int | None = None) -> dict[str, Any]:
    """How a campaign's (or one iteration's) MLIP relaxations ended, and what they cost.

    Returns ``{"converged": n, "pruned": n, "failed": n, "steps": total, "evaluations": total,
    "wall_s": total}`` over the candidates with a ``relaxed.mlip`` record; a record written
    before statuses existed counts by its ``converged`` flag (and adds no evaluations).
    """
    match: dict[str, Any] = {"campaign": campaign, "relaxed.mlip": {"$ne": None}}
    if iteration is not None:
        match["iteration"] = iteration
    out: dict[str, Any] = {"converged": 0, "pruned": 0, "failed": 0, "steps": 0,
                           "evaluations": 0, "wall_s": 0.0}  # fmt: skip
    for doc in _coll(db).find(match, {"relaxed.mlip.status": 1, "relaxed.mlip.converged": 1,
                                      "relaxed.mlip.steps": 1, "relaxed.mlip.evaluations": 1,
                                      "relaxed.mlip.relax_wall_s": 1}):  # fmt: skip
        rec = (doc.get("relaxed") or {}).get("mlip") or {}
        status = rec.get("status") or ("converged" if rec.get("converged") else "failed")
        out[status] = out.get(status, 0) + 1
        out["steps"] += int(rec.get("steps") or 0)
        out["evaluations"] += int(rec.get("evaluations") or 0)
        out["wall_s"] += float(rec.get("relax_wall_s") or 0.0)
    out["wall_s"] = round(out["wall_s"], 1)
    return out


def best_energies(db: Database, campaign: str) -> dict[str, dict[str, float]]:
    """Per formula, the campaign's lowest MLIP and converged DFT energies (eV/atom).

    Every relaxed energy counts, duplicates included (a duplicate's energy is its own
    relaxation's), as the iteration summary has always reported them.
    """
    best: dict[str, dict[str, float]] = {}
    for level in LEVELS:
        field = f"energy_per_atom.{level}"
        query: dict[str, Any] = {"campaign": campaign, field: {"$type": "number"}}
        if level == "dft":
            query["relaxed.dft.status"] = "converged"
        for doc in _coll(db).find(query, {"formula": 1, "energy_per_atom": 1}):
            e = float(doc["energy_per_atom"][level])
            cur = best.setdefault(doc["formula"], {})
            if level not in cur or e < cur[level]:
                cur[level] = e
    return best


def dft_runs(db: Database, campaign: str) -> int:
    """DFT calculations the campaign ran (any outcome): a result names the campaign that ran it
    (``relaxed.dft.campaign``; the migration names it for results of older versions)."""
    query = {"$or": [{"relaxed.dft.campaign": campaign},
                     {"relaxed.dft_by_fidelity.campaign": campaign}]}  # fmt: skip
    return int(_coll(db).count_documents(query))


def best_sources(db: Database, campaign: str, n: int = 10) -> dict[str, Any]:
    """Which generators made the campaign's ``n`` lowest-energy usable structures.

    The level is DFT when the campaign has a usable DFT energy, else MLIP. Returns
    ``{"level", "top", "by_source": {source: count}, "template": count}``.
    """
    level = "dft" if _coll(db).find_one({**usable_query("dft"), "campaign": campaign}) else "mlip"
    key = f"energy_per_atom.{level}"
    query = {**usable_query(level), "campaign": campaign}
    docs = list(_coll(db).find(query, {"_id": 0, "source": 1}).sort(key, 1).limit(n))
    by: dict[str, int] = {}
    for d in docs:
        by[str(d.get("source"))] = by.get(str(d.get("source")), 0) + 1
    return {"level": level, "top": len(docs), "by_source": by, "template": by.get("template", 0)}
