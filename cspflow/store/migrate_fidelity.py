"""Layout 3 of :mod:`cspflow.store.migrate`: fidelities for documents written before them.

Called by :func:`cspflow.store.migrate.upgrade`; every function only touches documents without
a fidelity, so running it again changes nothing (docs/fidelity.md, "Older databases").
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from cspflow.schemas.fidelity import mlip_fidelity, unknown_fidelity

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["fidelity_sets", "old_dft_fidelity", "hulls", "references", "models"]


def _campaign_fidelity(
    db: Database, campaign: str | None, cache: dict[str, dict[str, Any] | None]
) -> dict[str, Any] | None:
    from cspflow.store.reports import campaign_fidelity

    if not campaign:
        return None
    if campaign not in cache:
        try:
            cache[campaign] = campaign_fidelity(db, campaign)
        except Exception:  # a spec an older release stored that no longer validates
            cache[campaign] = None
    return cache[campaign]


def old_dft_fidelity(
    db: Database, dft: dict[str, Any], cache: dict[str, dict[str, Any] | None]
) -> dict[str, Any]:
    """The fidelity of a DFT result stored before fidelities: its campaign's spec fidelity when
    that spec's engine and preset are the result's, else an explicit unknown one."""
    fid = _campaign_fidelity(db, dft.get("campaign"), cache)
    if fid and fid.get("engine") == dft.get("engine") and fid.get("preset") == dft.get("preset"):
        return fid
    return unknown_fidelity("dft", dft.get("engine"), dft.get("preset")).model_dump()


def fidelity_sets(
    db: Database,
    doc: dict[str, Any],
    sets: dict[str, Any],
    cache: dict[str, dict[str, Any] | None],
) -> dict[str, Any]:
    """The ``$set`` fields that give an older candidate document its fidelities (``sets``:
    what the earlier steps of the same update set, e.g. ``relaxed.dft.campaign``)."""
    out: dict[str, Any] = {}
    relaxed = doc.get("relaxed") or {}
    mlip = relaxed.get("mlip")
    if mlip and not mlip.get("fidelity") and mlip.get("model_id"):
        out["relaxed.mlip.fidelity"] = mlip_fidelity(mlip["model_id"]).model_dump()
    dft = relaxed.get("dft")
    if dft and not dft.get("fidelity"):
        dft = {**dft, "campaign": sets.get("relaxed.dft.campaign", dft.get("campaign"))}
        fid = old_dft_fidelity(db, dft, cache)
        out["relaxed.dft.fidelity"] = fid
        if not relaxed.get("dft_by_fidelity"):
            out["relaxed.dft_by_fidelity"] = [{**dft, "fidelity": fid}]
    screenings = sets.get("screenings", doc.get("screenings")) or []
    if any(not s.get("fidelity") for s in screenings):
        out["screenings"] = [
            {**s, "fidelity": s.get("fidelity") or mlip_fidelity(s["model_id"]).model_dump()}
            for s in screenings
        ]
    return out


def fingerprints(db: Database) -> int:
    """DFT forms in ``fingerprints`` get the fidelity key of the candidate's DFT result."""
    from pymongo import UpdateOne

    ops = []
    query = {"level": "dft", "fidelity_key": {"$exists": False}}
    for fdoc in db["fingerprints"].find(query, {"candidate_id": 1}):
        cand = db["candidates"].find_one(
            {"candidate_id": fdoc["candidate_id"]}, {"relaxed.dft.fidelity.key": 1}
        )
        key = ((((cand or {}).get("relaxed") or {}).get("dft") or {}).get("fidelity") or {}).get(
            "key"
        )
        ops.append(UpdateOne({"_id": fdoc["_id"]}, {"$set": {"fidelity_key": key}}))
    if ops:
        db["fingerprints"].bulk_write(ops, ordered=False)
    return len(ops)


def _entry_fidelity(db: Database, hull: dict[str, Any]) -> dict[str, Any]:
    level = hull.get("level", "dft")
    ids = [e["entry_id"] for e in hull.get("entries", []) if e.get("source") == "candidate"]
    field = "relaxed.dft.fidelity" if level == "dft" else "relaxed.mlip.fidelity"
    found: dict[str, dict[str, Any]] = {}
    query = {"candidate_id": {"$in": ids}}
    for cand in db["candidates"].find(query, {field: 1, "candidate_id": 1}):
        fid = ((cand.get("relaxed") or {}).get(level) or {}).get("fidelity")
        if fid:
            found[cand["candidate_id"]] = fid
    keys = Counter(f["key"] for f in found.values())
    if len(keys) == 1 and len(found) == len(ids):
        key = next(iter(keys))
        return next(f for f in found.values() if f["key"] == key)
    return unknown_fidelity(level).model_dump()


def hulls(db: Database) -> int:
    """Hull versions get the fidelity their candidate entries share (else unknown); the old
    unique index on (chemsys, version) goes (versions now count per fidelity)."""
    if "chemsys_version" in db["hull"].index_information():
        db["hull"].drop_index("chemsys_version")
    n = 0
    for hull in db["hull"].find({"fidelity_key": {"$exists": False}}):
        fid = _entry_fidelity(db, hull)
        db["hull"].update_one(
            {"_id": hull["_id"]}, {"$set": {"fidelity": fid, "fidelity_key": fid["key"]}}
        )
        n += 1
    return n


def references(db: Database) -> int:
    """Reference entries get the fidelity of the campaign whose spec imported their file."""
    cache: dict[str, dict[str, Any] | None] = {}
    by_file = {
        c["spec"]["references"]: c["name"]
        for c in db["campaigns"].find({"spec.references": {"$ne": None}}, {"name": 1, "spec": 1})
        if (c.get("spec") or {}).get("references")
    }
    n = 0
    for ref in db["hull_references"].find({"fidelity_key": {"$exists": False}}):
        fid = _campaign_fidelity(db, by_file.get(ref.get("source_file", "")), cache)
        fid = fid or unknown_fidelity("dft").model_dump()
        db["hull_references"].update_one(
            {"_id": ref["_id"]}, {"$set": {"fidelity": fid, "fidelity_key": fid["key"]}}
        )
        n += 1
    return n


def models(db: Database) -> int:
    """Registry models get the DFT fidelity of the campaign that trained them (else unknown)."""
    cache: dict[str, dict[str, Any] | None] = {}
    n = 0
    for doc in db["models"].find({"fidelity_key": {"$exists": False}}, {"campaign": 1}):
        fid = _campaign_fidelity(db, doc.get("campaign"), cache)
        fid = fid or unknown_fidelity("dft").model_dump()
        db["models"].update_one(
            {"_id": doc["_id"]}, {"$set": {"fidelity": fid, "fidelity_key": fid["key"]}}
        )
        n += 1
    return n
