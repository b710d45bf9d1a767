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

and the stages read through the queries below it (the read-only per-campaign statistics
that reports and summaries use live in :mod:`cspflow.store.candidate_stats`). The one rule for an energy a hull, a
ranking or a parent pool may use is :func:`usable_query`: a number at that level, the
candidate neither failed nor a duplicate, and at DFT level a converged result; given a
fidelity key, only energies of that fidelity (docs/fidelity.md).

DFT results per fidelity: ``relaxed.dft_by_fidelity`` is a list with one
:class:`~cspflow.schemas.dft.DftResultDoc` per fidelity key; a campaign at a new functional
adds its own entry beside another campaign's. ``relaxed.dft`` and ``energy_per_atom.dft``
describe the candidate's primary result, the first fidelity that converged (what the status
says; a later fidelity never overwrites it); hulls, training sets, DFT
deduplication and the DFT stage's reuse read the entry of their own fidelity
(:func:`dft_result_at`). A DFT duplicate is recorded per fidelity
(``dft_by_fidelity[].duplicate_of``, :func:`mark_dft_duplicate`).

Ownership has one answer: ``campaign`` is the campaign that generated the candidate. Another
campaign's re-screening is a ``screenings`` entry (which campaign, which model, which of its
iterations the candidate joined), and a DFT result names the campaign that ran it
(``relaxed.dft.campaign``), so the DFT budget is one count
(:func:`cspflow.store.candidate_stats.dft_runs`).
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
    "up_to_iteration",
    "usable",
    "get_many",
    "require",
    "ids_where",
    "set_mlip_result",
    "mark_duplicate",
    "mark_selected",
    "set_dft_result",
    "dft_result_at",
    "energy_at",
    "mark_dft_duplicate",
    "other_fidelity_pool",
    "campaign_mlip_fidelity",
    "fidelity_keys",
    "set_hull",
    "add_screenings",
    "selection_pool",
    "rescreen_pool",
    "parent_pool",
    "template_pool",
    "preferred_energy",
    "dft_labelled",
    "dft_chemsystems",
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


def up_to_iteration(max_iteration: int) -> dict[str, int]:
    """The ``iteration`` condition "up to and including ``max_iteration``".

    ``$lt n + 1``, not ``$lte n``: SecantusDB 0.7.0b3 drops the equal key of a range on the
    second field of the (campaign, iteration, status) index (the last iteration went missing:
    tests/generate/test_prior_bandit.py).
    """
    return {"$lt": int(max_iteration) + 1}


def usable_query(level: str, fidelity: str | None = None) -> dict[str, Any]:
    """The filter of candidates whose ``level`` energy a hull, ranking or parent pool may use.

    A number at that level, not failed, not a duplicate of another candidate, and at DFT level
    a converged result. With ``fidelity`` (a key): at DFT level a converged, non-duplicate
    result of that fidelity in ``relaxed.dft_by_fidelity`` (the candidate may have failed or
    be a duplicate at another one); at MLIP level a relaxation of that fidelity.
    """
    _check_level(level)
    if fidelity is not None and level == "dft":
        return {
            "duplicate_of": {"$in": [None]},
            "relaxed.dft_by_fidelity": {
                "$elemMatch": {
                    "fidelity.key": fidelity,
                    "status": "converged",
                    "energy_per_atom": {"$type": "number"},
                    "duplicate_of": {"$in": [None]},
                }
            },
        }
    query: dict[str, Any] = {
        f"energy_per_atom.{level}": {"$type": "number"},
        "status": {"$ne": "failed"},
        "duplicate_of": {"$in": [None]},
    }
    if level == "dft":
        query["relaxed.dft.status"] = "converged"
    if fidelity is not None:
        query["relaxed.mlip.fidelity.key"] = fidelity
    return query


def usable(
    db: Database,
    level: str,
    where: dict[str, Any] | None = None,
    projection: dict[str, Any] | None = None,
    fidelity: str | None = None,
) -> list[dict[str, Any]]:
    """Candidates with a usable ``level`` energy (:func:`usable_query`, of ``fidelity`` when
    given) that also match ``where`` (e.g. ``{"campaign": name}``)."""
    if projection is not None and fidelity is not None and level == "dft":
        projection = {**projection, "relaxed.dft_by_fidelity": 1}
    query = {**usable_query(level, fidelity), **(where or {})}
    return list(_coll(db).find(query, projection))


def dft_result_at(doc: dict[str, Any], fidelity: str) -> dict[str, Any] | None:
    """The candidate document's DFT result of fidelity key ``fidelity``, or None."""
    for run in ((doc.get("relaxed") or {}).get("dft_by_fidelity")) or []:
        if (run.get("fidelity") or {}).get("key") == fidelity:
            return dict(run)
    return None


def energy_at(doc: dict[str, Any], level: str, fidelity: str | None = None) -> float | None:
    """A candidate's energy per atom at ``level`` (of ``fidelity`` when given; eV/atom)."""
    if level == "dft" and fidelity is not None:
        run = dft_result_at(doc, fidelity) or {}
        value = run.get("energy_per_atom") if run.get("status") == "converged" else None
    else:
        value = (doc.get("energy_per_atom") or {}).get(level)
    return None if value is None else float(value)


def fidelity_keys(db: Database, chemsys: str, level: str) -> dict[str, dict[str, Any]]:
    """Fidelities with a usable ``level`` energy in ``chemsys`` (subsystems included) or a
    reference entry there: key -> the fidelity document."""
    system = set(chemsys.split("-"))
    out: dict[str, dict[str, Any]] = {}
    query: dict[str, Any]
    if level == "dft":
        proj = {"composition": 1, "relaxed.dft_by_fidelity.fidelity": 1,
                "relaxed.dft_by_fidelity.status": 1}  # fmt: skip
        query = {"relaxed.dft_by_fidelity.status": "converged"}
        for doc in _coll(db).find(query, proj):
            if set(doc.get("composition", {})) <= system:
                for run in doc["relaxed"]["dft_by_fidelity"]:
                    fid = run.get("fidelity")
                    if fid and run.get("status") == "converged":
                        out.setdefault(fid["key"], fid)
    else:
        query = {**usable_query("mlip"), "relaxed.mlip.fidelity": {"$ne": None}}
        for doc in _coll(db).find(query, {"composition": 1, "relaxed.mlip.fidelity": 1}):
            if set(doc.get("composition", {})) <= system:
                fid = doc["relaxed"]["mlip"]["fidelity"]
                out.setdefault(fid["key"], fid)
    for ref in db.hull_references.find({"chemsys_level": level}, {"composition": 1,
                                                                  "fidelity": 1}):  # fmt: skip
        if set(ref.get("composition", {})) <= system and ref.get("fidelity"):
            out.setdefault(ref["fidelity"]["key"], ref["fidelity"])
    return out


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
    from cspflow.schemas.fidelity import mlip_fidelity

    ok = failure_reason is None
    if doc.fidelity is None:
        doc = doc.model_copy(update={"fidelity": mlip_fidelity(doc.model_id)})
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
    """Record that ``ids`` were chosen for DFT (a candidate with a DFT result at another
    fidelity keeps its status)."""
    if ids:
        _coll(db).update_many(
            {"candidate_id": {"$in": list(ids)}, "status": {"$in": ["prerelaxed", "generated"]}},
            {"$set": {"status": "selected"}},
        )


def _runs(db: Database, candidate_id: str) -> list[dict[str, Any]]:
    cur = _coll(db).find_one({"candidate_id": candidate_id}, {"relaxed.dft_by_fidelity": 1})
    return list(((cur or {}).get("relaxed") or {}).get("dft_by_fidelity") or [])


def _run_key(run: dict[str, Any]) -> str | None:
    return (run.get("fidelity") or {}).get("key")


def set_dft_result(db: Database, candidate_id: str, result: DftResultDoc) -> None:
    """Record a DFT result of one fidelity; only a converged run gives a usable energy.

    The result replaces the candidate's entry of the same fidelity in
    ``relaxed.dft_by_fidelity``. When no other fidelity has a converged result it is also the
    candidate's primary result: ``relaxed.dft``, and converged: ``energy_per_atom.dft`` set and
    status ``dft_done``; otherwise the DFT energy is removed and the candidate is marked
    ``failed`` with ``failure_reason``. A result of a second fidelity (converged or not) leaves
    the first fidelity's ``relaxed.dft``, energy and status alone.
    """
    doc = result.model_dump(exclude={"reused"})
    key = result.fidelity.key if result.fidelity is not None else None
    runs = [r for r in _runs(db, candidate_id) if _run_key(r) != key]
    converged_elsewhere = any(r.get("status") == "converged" for r in runs)
    runs.append(doc)
    update: dict[str, Any] = {"$set": {"relaxed.dft_by_fidelity": runs}}
    if result.usable and not converged_elsewhere:
        update["$set"].update({"relaxed.dft": doc, "energy_per_atom.dft": result.energy_per_atom,
                               "status": "dft_done"})  # fmt: skip
        update["$unset"] = {"failure_reason": ""}
    elif not result.usable and not converged_elsewhere:
        update["$set"].update(
            {"relaxed.dft": doc, "status": "failed",
             "failure_reason": f"dft {result.status}: {result.reason}"}
        )  # fmt: skip
        update["$unset"] = {"energy_per_atom.dft": ""}
    _coll(db).update_one({"candidate_id": candidate_id}, update)


def mark_dft_duplicate(db: Database, candidate_id: str, of: str, fidelity: str) -> None:
    """Record that at fidelity ``fidelity`` the DFT result of ``candidate_id`` is the minimum of
    ``of`` (at a higher energy). The whole candidate becomes ``duplicate_of`` only when it has
    no converged DFT result at another fidelity, so a duplicate found at one fidelity never
    hides a candidate from another fidelity's hull."""
    if candidate_id == of:
        raise ValueError(f"a candidate cannot duplicate itself ({candidate_id})")
    runs = _runs(db, candidate_id)
    for run in runs:
        if _run_key(run) == fidelity:
            run["duplicate_of"] = of
    sets: dict[str, Any] = {"relaxed.dft_by_fidelity": runs}
    cur = _coll(db).find_one({"candidate_id": candidate_id}, {"relaxed.dft.fidelity": 1})
    if ((((cur or {}).get("relaxed") or {}).get("dft") or {}).get("fidelity") or {}).get(
        "key"
    ) == fidelity:
        sets["relaxed.dft.duplicate_of"] = of
    _coll(db).update_one({"candidate_id": candidate_id}, {"$set": sets})
    if not any(r.get("status") == "converged" and _run_key(r) != fidelity for r in runs):
        mark_duplicate(db, candidate_id, of)


def campaign_mlip_fidelity(db: Database, campaign: str) -> dict[str, Any] | None:
    """The MLIP fidelity of the campaign's most recent usable pre-relaxation (None: none)."""
    query: dict[str, Any] = {**usable_query("mlip"), "campaign": campaign}
    query["relaxed.mlip.fidelity"] = {"$ne": None}
    order = [("iteration", -1), ("created_at", -1)]
    doc = _coll(db).find_one(query, {"relaxed.mlip.fidelity": 1}, sort=order)
    return None if doc is None else dict(doc["relaxed"]["mlip"]["fidelity"])


def other_fidelity_pool(
    db: Database, formulas: Sequence[str], fidelity: str, per_formula: int
) -> list[str]:
    """Ids of candidates with a converged DFT result at another fidelity but none (of any
    outcome) at ``fidelity``: per formula the ``per_formula`` lowest by their other-fidelity
    energy. A campaign at a new fidelity computes these itself (docs/fidelity.md)."""
    query = {
        "formula": {"$in": list(formulas)},
        "duplicate_of": {"$in": [None]},
        "relaxed.dft_by_fidelity": {"$elemMatch": {"status": "converged"}},
        "relaxed.dft_by_fidelity.fidelity.key": {"$ne": fidelity},
    }
    proj = {"_id": 0, "candidate_id": 1, "formula": 1, "energy_per_atom": 1}
    best: dict[str, list[tuple[float, str]]] = {}
    for doc in _coll(db).find(query, proj):
        e = (doc.get("energy_per_atom") or {}).get("dft")
        if e is None:
            continue
        best.setdefault(doc["formula"], []).append((float(e), doc["candidate_id"]))
    out: list[str] = []
    for formula in formulas:
        out += [cid for _, cid in sorted(best.get(formula, []))[:per_formula]]
    return out


def set_hull(
    db: Database,
    e_above_hull: dict[str, float],
    level: str,
    version: int,
    fidelity: str | None = None,
) -> None:
    """Record each candidate's energy above hull version ``version`` (built at ``level`` and
    ``fidelity``; the hull document holds every fidelity's values, the candidate the last)."""
    from pymongo import UpdateOne

    _check_level(level)
    ops = [
        UpdateOne(
            {"candidate_id": cid},
            {
                "$set": {
                    "e_above_hull": e,
                    "e_above_hull_level": level,
                    "hull_version": version,
                    "e_above_hull_fidelity": fidelity,
                }
            },
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
    structures: bool = False,
) -> list[dict[str, Any]]:
    """Pre-relaxed (or already selected), non-duplicate candidates a selection weighs.

    ``candidate_ids`` when given; else the iteration's own candidates and older ones (of the
    system) that the campaign re-screened to join this iteration (a ``screenings`` entry of
    this campaign with ``joins_iteration`` = iteration). With ``structures`` the documents
    also hold ``relaxed.mlip.structure`` (a committee evaluates it).
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
    if structures:
        projection["relaxed.mlip.structure"] = 1
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
    proj = {"_id": 0, "candidate_id": 1, "energy_per_atom": 1, "structure": 1, "source": 1,
            "params.operator": 1, "relaxed.mlip.structure": 1, "relaxed.dft.structure": 1,
            "dedup_forms.mlip.fingerprint": 1, "dedup_forms.dft.fingerprint": 1}  # fmt: skip
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
    db: Database,
    chemsystems: list[str],
    campaign: str | None,
    max_iteration: int | None,
    fidelity: str | None = None,
) -> list[dict[str, Any]]:
    """Candidates with a converged DFT relaxation (duplicates too: a candidate marked duplicate
    after its DFT relaxation still has its own trajectory, real labelled data).

    With ``fidelity`` only those with a converged result of that fidelity, and ``relaxed.dft``
    of each returned document is that result (never another fidelity's labels).
    """
    query: dict[str, Any] = {"chemsys": {"$in": chemsystems}, "relaxed.dft.status": "converged"}
    if fidelity is not None:
        del query["relaxed.dft.status"]
        query["relaxed.dft_by_fidelity"] = {
            "$elemMatch": {"fidelity.key": fidelity, "status": "converged"}
        }
    if campaign is not None:
        query["campaign"] = campaign
    if max_iteration is not None:
        query["iteration"] = up_to_iteration(max_iteration)
    fields = {"candidate_id": 1, "relaxed.dft": 1, "relaxed.dft_by_fidelity": 1}
    docs = list(_coll(db).find(query, fields).sort("candidate_id", 1))
    if fidelity is not None:
        for doc in docs:
            doc["relaxed"]["dft"] = dft_result_at(doc, fidelity)
    for doc in docs:
        doc["relaxed"].pop("dft_by_fidelity", None)
    return docs


def dft_chemsystems(db: Database, fidelity: str | None = None) -> list[str]:
    """Chemical systems with a converged DFT relaxation (of ``fidelity`` when given), sorted."""
    query: dict[str, Any] = {"relaxed.dft.status": "converged"}
    if fidelity is not None:
        query = {"relaxed.dft_by_fidelity": {"$elemMatch": {"fidelity.key": fidelity,
                                                            "status": "converged"}}}  # fmt: skip
    return sorted({d["chemsys"] for d in _coll(db).find(query, {"chemsys": 1}) if d.get("chemsys")})


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
