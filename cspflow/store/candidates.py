"""The one owner of candidate state: every read and write of ``candidates`` by the stages.

A candidate document is created once, by the dedup index (:mod:`cspflow.dedup.index`), which
also files its relaxed forms for deduplication. Everything a stage later records about a
candidate goes through a function here, named after the state it records:

======================  ==========================================================
:func:`set_mlip_result`  an MLIP relaxation (``relaxed.mlip``, energy, status)
:func:`mark_duplicate`   the candidate relaxed into another one's minimum
:func:`mark_selected`    chosen for DFT
:func:`set_dft_result`   a DFT result (``relaxed.dft``, energy, status)
:func:`set_hull`         its place on a hull version
:func:`add_screenings`   a promoted model re-screened it (append-only ``screenings``)
======================  ==========================================================

and the stages read through the queries below it. The one rule for an energy a hull, a
ranking or a parent pool may use is :func:`usable_query`: a number at that level, the
candidate neither failed nor a duplicate, and at DFT level a converged result.

Ownership has one answer: ``campaign`` is the campaign that generated the candidate. Another
campaign's re-screening is a ``screenings`` entry (which campaign, which model, which of its
iterations the candidate joined), and a DFT result names the campaign that ran it
(``relaxed.dft.campaign``), so the DFT budget is one count (:func:`dft_runs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from pymongo.database import Database

    from cspflow.schemas.candidate import ScreeningDoc
    from cspflow.schemas.dft import DftResultDoc
    from cspflow.schemas.prerelax import MlipRelaxDoc

__all__ = [
    "COLLECTION",
    "LEVELS",
    "usable_query",
    "usable",
    "get_many",
    "require",
    "ids_where",
    "set_mlip_result",
    "mark_duplicate",
    "mark_selected",
    "set_dft_result",
    "set_hull",
    "add_screenings",
    "selection_pool",
    "rescreen_pool",
    "parent_pool",
    "template_pool",
    "best_sources",
    "preferred_energy",
    "dft_labelled",
    "relaxed_in_order",
    "count_relaxed",
    "status_counts",
    "count_duplicates",
    "best_energies",
    "dft_runs",
    "insert_raw",
]

COLLECTION = "candidates"
#: levels of theory a candidate has energies at, lowest fidelity first
LEVELS = ("mlip", "dft")


def _coll(db: Database) -> Any:
    return db[COLLECTION]


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")


# ---------------------------------------------------------------------------------------------
# the usable-energy rule


def usable_query(level: str) -> dict[str, Any]:
    """The filter of candidates whose ``level`` energy a hull, ranking or parent pool may use.

    A number at that level, not failed, not a duplicate of another candidate, and at DFT level
    a converged result.
    """
    _check_level(level)
    query: dict[str, Any] = {
        f"energy_per_atom.{level}": {"$type": "number"},
        "status": {"$ne": "failed"},
        "duplicate_of": {"$in": [None]},
    }
    if level == "dft":
        query["relaxed.dft.status"] = "converged"
    return query


def usable(
    db: Database,
    level: str,
    where: dict[str, Any] | None = None,
    projection: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Candidates with a usable ``level`` energy (:func:`usable_query`) that also match
    ``where`` (e.g. ``{"campaign": name}``)."""
    return list(_coll(db).find({**usable_query(level), **(where or {})}, projection))


# ---------------------------------------------------------------------------------------------
# reads by id


def get_many(
    db: Database, ids: Iterable[str], projection: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The documents of ``ids`` (those that exist), by id."""
    fields = {"_id": 0, **(projection or {})}
    if projection:
        fields["candidate_id"] = 1
    cursor = _coll(db).find({"candidate_id": {"$in": list(ids)}}, fields)
    return {d["candidate_id"]: d for d in cursor}


def require(db: Database, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`get_many` for ids that must all exist.

    Raises
    ------
    CspflowError
        When an id is not in the collection (one line, naming one of them).
    """
    docs = get_many(db, ids)
    missing = [cid for cid in ids if cid not in docs]
    if missing:
        raise CspflowError(
            f"{len(missing)} candidate id(s) not in the candidates collection (e.g. {missing[0]}); "
            "generate them first"
        )
    return docs


def ids_where(db: Database, **fields: Any) -> list[str]:
    """Ids of the candidates whose fields equal ``fields`` (e.g. campaign, iteration, status),
    sorted."""
    return sorted(_coll(db).distinct("candidate_id", fields))


# ---------------------------------------------------------------------------------------------
# writes, one per state


def set_mlip_result(
    db: Database, candidate_id: str, doc: MlipRelaxDoc, *, failure_reason: str | None = None
) -> None:
    """Record an MLIP relaxation: ``relaxed.mlip``, ``energy_per_atom.mlip`` and the status
    (``prerelaxed``, or ``failed`` with the reason). A new relaxation clears ``duplicate_of``:
    the prerelax stage decides it again."""
    ok = failure_reason is None
    update = {
        "relaxed.mlip": doc.model_dump(),
        "energy_per_atom.mlip": doc.energy_per_atom if ok else None,
        "status": "prerelaxed" if ok else "failed",
        "failure_reason": failure_reason,
    }
    _coll(db).update_one(
        {"candidate_id": candidate_id}, {"$set": update, "$unset": {"duplicate_of": ""}}
    )


def mark_duplicate(db: Database, candidate_id: str, of: str) -> None:
    """Record that ``candidate_id`` is the same minimum as ``of``; candidates that pointed at
    ``candidate_id`` point at ``of`` from now on (one representative per minimum)."""
    if candidate_id == of:
        raise ValueError(f"a candidate cannot duplicate itself ({candidate_id})")
    coll = _coll(db)
    coll.update_one({"candidate_id": candidate_id}, {"$set": {"duplicate_of": of}})
    coll.update_many({"duplicate_of": candidate_id}, {"$set": {"duplicate_of": of}})


def mark_selected(db: Database, ids: Sequence[str]) -> None:
    """Record that ``ids`` were chosen for DFT."""
    if ids:
        _coll(db).update_many(
            {"candidate_id": {"$in": list(ids)}}, {"$set": {"status": "selected"}}
        )


def set_dft_result(db: Database, candidate_id: str, result: DftResultDoc) -> None:
    """Record a DFT result at ``relaxed.dft``; only a converged run gives a usable energy.

    Converged: ``energy_per_atom.dft`` set and status ``dft_done``. Otherwise the DFT energy is
    removed and the candidate is marked ``failed`` with ``failure_reason``.
    """
    doc = result.model_dump(exclude={"reused"})
    update: dict[str, Any] = {"$set": {"relaxed.dft": doc}}
    if result.usable:
        update["$set"].update({"energy_per_atom.dft": result.energy_per_atom, "status": "dft_done"})
        update["$unset"] = {"failure_reason": ""}
    else:
        update["$set"].update(
            {"status": "failed", "failure_reason": f"dft {result.status}: {result.reason}"}
        )
        update["$unset"] = {"energy_per_atom.dft": ""}
    _coll(db).update_one({"candidate_id": candidate_id}, update)


def set_hull(db: Database, e_above_hull: dict[str, float], level: str, version: int) -> None:
    """Record each candidate's energy above hull version ``version`` (built at ``level``)."""
    from pymongo import UpdateOne

    _check_level(level)
    ops = [
        UpdateOne(
            {"candidate_id": cid},
            {"$set": {"e_above_hull": e, "e_above_hull_level": level, "hull_version": version}},
        )
        for cid, e in e_above_hull.items()
    ]
    if ops:
        _coll(db).bulk_write(ops, ordered=False)


def add_screenings(db: Database, records: dict[str, ScreeningDoc]) -> None:
    """Append one re-screening record to each candidate (``screenings`` only grows)."""
    from pymongo import UpdateOne

    ops = [
        UpdateOne({"candidate_id": cid}, {"$push": {"screenings": rec.model_dump()}})
        for cid, rec in records.items()
    ]
    if ops:
        _coll(db).bulk_write(ops, ordered=False)


def insert_raw(db: Database, doc: dict[str, Any]) -> None:
    """Insert a ready-made document (tests and plumbing jobs that bypass the dedup index)."""
    _coll(db).insert_one(doc)


# ---------------------------------------------------------------------------------------------
# what the stages read


def selection_pool(
    db: Database,
    campaign: str | None,
    iteration: int | None,
    candidate_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Pre-relaxed (or already selected), non-duplicate candidates a selection weighs.

    ``candidate_ids`` when given; else the iteration's own candidates and older ones (of the
    system) that the campaign re-screened to join this iteration (a ``screenings`` entry of
    this campaign with ``joins_iteration`` = iteration).
    """
    query: dict[str, Any] = {"status": {"$in": ["prerelaxed", "selected"]}, "duplicate_of": None}
    if candidate_ids is not None:
        query["candidate_id"] = {"$in": list(candidate_ids)}
    else:
        query["$or"] = [
            {"campaign": campaign, "iteration": iteration},
            {"screenings": {"$elemMatch": {"campaign": campaign, "joins_iteration": iteration}}},
        ]
    projection = {"_id": 0, "candidate_id": 1, "formula": 1, "energy_per_atom": 1,
                  "relaxed.mlip.committee": 1}  # fmt: skip
    return list(_coll(db).find(query, projection))


def rescreen_pool(
    db: Database, campaigns: dict[str, Any], chemsystems: list[str] | None
) -> list[dict[str, Any]]:
    """Pre-relaxed, unique candidates without DFT that a new model may re-screen.

    ``campaigns`` is a MongoDB condition on ``campaign`` (a name, or ``{"$nin": [...]}``);
    ``chemsystems`` limits the chemical systems (None: any).
    """
    query: dict[str, Any] = {
        "status": {"$in": ["prerelaxed", "selected"]},
        "duplicate_of": None,
        "relaxed.dft": None,
        "relaxed.mlip.structure": {"$ne": None},
        "campaign": campaigns,
    }
    if chemsystems is not None:
        query["chemsys"] = {"$in": chemsystems}
    projection = {"_id": 0, "candidate_id": 1, "formula": 1, "campaign": 1,
                  "energy_per_atom.mlip": 1, "relaxed.mlip.structure": 1,
                  "relaxed.mlip.model_id": 1}  # fmt: skip
    return list(_coll(db).find(query, projection).sort("candidate_id", 1))


def parent_pool(db: Database, formula: str, size: int) -> list[dict[str, Any]]:
    """The ``size`` lowest-energy usable candidates of a formula (DFT energy where there is
    one, else MLIP), best first, with their most refined structure."""
    proj = {"_id": 0, "candidate_id": 1, "energy_per_atom": 1, "structure": 1,
            "relaxed.mlip.structure": 1, "relaxed.dft.structure": 1}  # fmt: skip
    seen: dict[str, dict[str, Any]] = {}
    for level in ("dft", "mlip"):
        key = f"energy_per_atom.{level}"
        query = {**usable_query(level), "formula": formula}
        for doc in _coll(db).find(query, proj).sort(key, 1).limit(size):
            seen.setdefault(doc["candidate_id"], doc)

    return sorted(seen.values(), key=preferred_energy)[:size]


def preferred_energy(doc: dict[str, Any]) -> float:
    """A ranked document's energy: DFT where it has one, else MLIP (eV/atom)."""
    e = doc.get("energy_per_atom") or {}
    return float(e["dft"] if e.get("dft") is not None else e["mlip"])


def dft_labelled(
    db: Database, chemsystems: list[str], campaign: str | None, max_iteration: int | None
) -> list[dict[str, Any]]:
    """Candidates with a converged DFT relaxation (duplicates too: a candidate marked duplicate
    after its DFT relaxation still has its own trajectory, real labelled data)."""
    query: dict[str, Any] = {"chemsys": {"$in": chemsystems}, "relaxed.dft.status": "converged"}
    if campaign is not None:
        query["campaign"] = campaign
    if max_iteration is not None:
        query["iteration"] = {"$lte": max_iteration}
    fields = {"candidate_id": 1, "relaxed.dft": 1}
    return list(_coll(db).find(query, fields).sort("candidate_id", 1))


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
    return int(_coll(db).count_documents({"relaxed.dft.campaign": campaign}))


def template_pool(
    db: Database,
    level: str,
    exclude_formula: str,
    accept: Callable[[str], bool],
    per_formula: int,
) -> list[dict[str, Any]]:
    """Relaxed structures of other formulas that a template source may substitute.

    Usable candidates at ``level`` (:func:`usable_query`: a converged DFT relaxation at
    ``"dft"``) of any campaign whose formula is not ``exclude_formula`` and passes ``accept``
    (e.g. the same anonymized stoichiometry), the ``per_formula`` lowest in energy of each
    formula, sorted by (formula, energy). Each document holds ``candidate_id``, ``formula``,
    ``campaign``, ``energy_per_atom`` and ``relaxed.<level>.structure``.
    """
    key = f"energy_per_atom.{level}"
    query = {**usable_query(level), "formula": {"$ne": exclude_formula}}
    picked: dict[str, list[tuple[float, str]]] = {}
    for doc in _coll(db).find(query, {"_id": 0, "candidate_id": 1, "formula": 1, key: 1}):
        if not accept(doc["formula"]):
            continue
        picked.setdefault(doc["formula"], []).append(
            (float(doc["energy_per_atom"][level]), doc["candidate_id"])
        )
    ids = [cid for rows in picked.values() for _, cid in sorted(rows)[:per_formula]]
    if not ids:
        return []
    proj = {"_id": 0, "candidate_id": 1, "formula": 1, "campaign": 1, "energy_per_atom": 1,
            f"relaxed.{level}.structure": 1}  # fmt: skip
    docs = list(_coll(db).find({"candidate_id": {"$in": ids}}, proj))
    return sorted(docs, key=lambda d: (d["formula"], d["energy_per_atom"][level]))


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
