"""Database-wide deduplication: fingerprint buckets + StructureMatcher within a bucket.

Every stored form of a candidate (the generated structure, and relaxed ones) has a small
document in ``fingerprints``: candidate id, level, formula, symmetry, bucket keys and the
fingerprint vector, no structure. A lookup reads one bucket there (``fingerprints.bucket``, a
multikey index), keeps the fingerprints within
:data:`~cspflow.generate.fingerprint.FP_TOLERANCE`, and only for those fetches the structure
from ``candidates`` and confirms with pymatgen's StructureMatcher (ltol 0.2, stol 0.3,
angle_tol 5, scale=True, primitive cells). The server reads each matching document whole, so
keeping the bucket's documents small is what keeps a lookup fast as the store grows.

Registration is atomic across processes: a writer takes a lock document (``dedup_locks``, keyed
by ``_id``, so the server's own unique ``_id`` index arbitrates) for every bucket its structure
is filed under, looks up, inserts, and releases. Two near-identical structures always share at
least one bucket, so their registrations are serialised and exactly one of them is stored. The
unique (chemsys, fingerprint_hash) index is a second guard against exact repeats. A lock left by
a killed process expires after :data:`LOCK_STALE_S` seconds.

Relaxed structures: :func:`register_relaxed` files a candidate's relaxed structure (level
``mlip`` or ``dft``) under its own buckets, so later lookups match initial and relaxed forms.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Structure

from cspflow.errors import CspflowError
from cspflow.generate.fingerprint import (
    FP_TOLERANCE,
    Fingerprint,
    fingerprint,
    fingerprint_distance,
)

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "MATCHER_KWARGS",
    "LEVELS",
    "MemoryIndex",
    "MongoIndex",
    "content_hash",
    "structures_match",
    "find_duplicate",
    "register",
    "register_relaxed",
    "candidate_document",
    "fingerprint_document",
]

MATCHER_KWARGS: dict[str, Any] = {
    "ltol": 0.2,
    "stol": 0.3,
    "angle_tol": 5,
    "primitive_cell": True,
    "scale": True,
    "attempt_supercell": True,
}
LEVELS = ("mlip", "dft")
LOCKS = "dedup_locks"
FINGERPRINTS = "fingerprints"
LOCK_STALE_S = 120.0
LOCK_WAIT_S = 60.0


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_matcher = None


def structures_match(a: Structure, b: Structure) -> bool:
    """True when pymatgen's StructureMatcher (cspflow's tolerances) finds a and b the same."""
    global _matcher
    if _matcher is None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        _matcher = StructureMatcher(**MATCHER_KWARGS)
    return bool(_matcher.fit(a, b))


def content_hash(structure: Structure) -> str:
    """Hash of the exact cell and sites (order-independent), rounded to 1e-5."""
    lat = np.round(structure.lattice.matrix, 5) + 0.0
    sites = sorted(
        (site.specie.symbol, *[round(float(x) % 1.0, 5) % 1.0 + 0.0 for x in site.frac_coords])
        for site in structure
    )
    blob = json.dumps({"lattice": lat.tolist(), "sites": sites}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# in-memory index (batches without a database, and the CLI's default)


class MemoryIndex:
    """The same bucket + matcher logic over a dict (one process, no database)."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[str]] = defaultdict(list)
        self._items: dict[str, tuple[Fingerprint, Structure]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def find(self, structure: Structure, fp: Fingerprint | None = None) -> str | None:
        """Return the id of a stored duplicate, or None."""
        fp = fp or fingerprint(structure)
        hits = []
        for cid in self._buckets.get(fp.query_key(), []):
            other_fp, other = self._items[cid]
            d = fingerprint_distance(fp.vector, other_fp.vector)
            if d <= FP_TOLERANCE:
                hits.append((d, cid, other))
        for _, cid, other in sorted(hits, key=lambda h: h[0]):
            if structures_match(structure, other):
                return cid
        return None

    def add(self, candidate_id: str, structure: Structure, fp: Fingerprint | None = None) -> None:
        """File a structure under its buckets."""
        fp = fp or fingerprint(structure)
        self._items[candidate_id] = (fp, structure)
        for key in fp.buckets():
            self._buckets[key].append(candidate_id)

    def register(
        self, structure: Structure, fp: Fingerprint, doc: dict[str, Any]
    ) -> tuple[str, bool]:
        """Return (id, True) after adding a new structure, or (existing id, False)."""
        dup = self.find(structure, fp)
        if dup is not None:
            return dup, False
        self.add(doc["candidate_id"], structure, fp)
        return doc["candidate_id"], True


# ---------------------------------------------------------------------------------------------
# MongoDB


def new_candidate_id(formula: str) -> str:
    """A fresh candidate id such as ``MgAl2O4-3f9c2a1b7d4e``."""
    return f"{formula}-{uuid.uuid4().hex[:12]}"


def candidate_document(
    structure: Structure,
    fp: Fingerprint | None = None,
    *,
    source: str = "external",
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    parent_ids: list[str] | None = None,
    campaign: str | None = None,
    iteration: int | None = None,
    candidate_id: str | None = None,
) -> dict[str, Any]:
    """Build the ``candidates`` document of a structure (validated by CandidateDoc)."""
    from cspflow.schemas.candidate import CandidateDoc

    fp = fp or fingerprint(structure)
    doc = CandidateDoc(
        candidate_id=candidate_id or new_candidate_id(fp.formula),
        campaign=campaign,
        iteration=iteration,
        composition={el.symbol: float(n) for el, n in structure.composition.items()},
        formula=fp.formula,
        chemsys=fp.chemsys,
        nsites=len(structure),
        structure=structure.as_dict(),
        spacegroup=fp.spacegroup,
        fingerprint=[round(float(x), 5) for x in fp.vector],
        fingerprint_hash=fp.hash(),
        bucket=fp.buckets(),
        content_hash=content_hash(structure),
        source=source,
        params=params or {},
        seed=seed,
        parent_ids=parent_ids or [],
    )
    return doc.model_dump()


def fingerprint_document(
    candidate_id: str, level: str, structure: Structure, fp: Fingerprint
) -> dict[str, Any]:
    """Build the ``fingerprints`` document of one stored form of a candidate.

    Small on purpose (no structure): a lookup reads every document of one bucket, and the
    server reads each document whole. The vector is stored as
    little-endian float32 bytes, which the server and the client handle as one value.
    """
    from bson import Binary

    return {
        "_id": f"{candidate_id}|{level}",
        "candidate_id": candidate_id,
        "level": level,
        "formula": fp.formula,
        "chemsys": fp.chemsys,
        "spacegroup": fp.spacegroup,
        "nprim": fp.nprim,
        "nsites": len(structure),
        "bucket": fp.buckets(),
        "fp": Binary(np.asarray(fp.vector, dtype="<f4").tobytes()),
    }


def _close_hits(fp: Fingerprint, docs: list[dict[str, Any]]) -> list[tuple[float, str, str]]:
    """(distance, candidate id, level) of the documents within FP_TOLERANCE, closest first."""
    want = np.asarray(fp.vector, dtype=float)
    rows = [d for d in docs if len(d["fp"]) == 4 * want.size]
    if not rows:
        return []
    vecs = np.frombuffer(b"".join(d["fp"] for d in rows), dtype="<f4").reshape(len(rows), -1)
    dist = np.sqrt(np.mean((vecs - want) ** 2, axis=1))
    hits = [(float(x), d["candidate_id"], d["level"]) for x, d in zip(dist, rows, strict=True)]
    return sorted(h for h in hits if h[0] <= FP_TOLERANCE)


def _stored_structure(db: Database, candidate_id: str, level: str) -> Structure | None:
    field = "structure" if level == "initial" else f"dedup_forms.{level}.structure"
    data: Any = db["candidates"].find_one({"candidate_id": candidate_id}, {"_id": 0, field: 1})
    for part in field.split("."):
        data = (data or {}).get(part)
    return Structure.from_dict(data) if data else None


def find_duplicate(
    db: Database,
    structure: Structure,
    fp: Fingerprint | None = None,
    exclude: str | None = None,
) -> str | None:
    """Return the id of a stored candidate that is the same structure, or None.

    Reads one bucket of the small ``fingerprints`` collection, keeps the fingerprints within
    :data:`~cspflow.generate.fingerprint.FP_TOLERANCE`, and fetches from ``candidates`` only
    those structures, closest first, for StructureMatcher. Matches against every stored form:
    the generated structure and any relaxed structure filed with :func:`register_relaxed`.
    Works across campaigns.

    Parameters
    ----------
    db
        The cspflow database.
    structure
        Structure to look up (any cell, orientation, origin, atom order or volume).
    fp
        Its fingerprint, when already computed.
    exclude
        A candidate id to ignore (the structure's own document).
    """
    fp = fp or fingerprint(structure)
    query: dict[str, Any] = {"bucket": fp.query_key()}
    if exclude is not None:
        query["candidate_id"] = {"$ne": exclude}
    docs = list(db[FINGERPRINTS].find(query, {"_id": 0, "candidate_id": 1, "level": 1, "fp": 1}))
    for _, cid, level in _close_hits(fp, docs):
        stored = _stored_structure(db, cid, level)
        if stored is not None and structures_match(structure, stored):
            return cid
    return None


@contextmanager
def _bucket_locks(db: Database, keys: list[str], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold lock documents for every key (sorted, so two writers cannot deadlock)."""
    from pymongo.errors import DuplicateKeyError

    locks = db[LOCKS]
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    held: list[str] = []
    deadline = time.monotonic() + wait_s
    delay = 0.002
    try:
        for key in sorted(set(keys)):
            while True:
                try:
                    locks.insert_one({"_id": key, "owner": owner, "at": _utcnow()})
                    held.append(key)
                    break
                except DuplicateKeyError:
                    stale = _utcnow() - timedelta(seconds=LOCK_STALE_S)
                    locks.delete_one({"_id": key, "at": {"$lt": stale}})
                    if time.monotonic() > deadline:
                        raise CspflowError(
                            f"dedup bucket {key!r} stayed locked for {wait_s:.0f} s; another "
                            f"writer may hang (locks expire after {LOCK_STALE_S:.0f} s), retry"
                        ) from None
                    time.sleep(delay * (1 + np.random.random()))
                    delay = min(delay * 2, 0.2)
        yield
    finally:
        for key in held:
            locks.delete_one({"_id": key, "owner": owner})


def register(
    db: Database,
    structure: Structure,
    fp: Fingerprint | None = None,
    **fields: Any,
) -> tuple[str, bool]:
    """Store a structure unless the database already holds it.

    Parameters
    ----------
    db
        The cspflow database (indexes from :func:`cspflow.store.ensure_indexes`).
    structure
        The structure.
    fp
        Its fingerprint, when already computed.
    **fields
        Passed to :func:`candidate_document` (source, params, seed, parent_ids, campaign,
        iteration, candidate_id).

    Returns
    -------
    tuple
        ``(candidate_id, True)`` for a new document, ``(existing_id, False)`` for a duplicate.
    """
    from pymongo.errors import DuplicateKeyError

    fp = fp or fingerprint(structure)
    doc = candidate_document(structure, fp, **fields)
    with _bucket_locks(db, doc["bucket"]):
        dup = find_duplicate(db, structure, fp)
        if dup is not None:
            return dup, False
        try:
            db["candidates"].insert_one(dict(doc))
        except DuplicateKeyError:
            same = db["candidates"].find_one(
                {"chemsys": doc["chemsys"], "fingerprint_hash": doc["fingerprint_hash"]},
                {"candidate_id": 1},
            )
            if same is None:
                raise
            return same["candidate_id"], False
        # After the candidate, so a lookup never meets a fingerprint without its structure.
        fdoc = fingerprint_document(doc["candidate_id"], "initial", structure, fp)
        db[FINGERPRINTS].replace_one({"_id": fdoc["_id"]}, fdoc, upsert=True)
    return doc["candidate_id"], True


def register_relaxed(
    db: Database, candidate_id: str, structure: Structure, level: str
) -> str | None:
    """File a candidate's relaxed structure for deduplication; return a duplicate's id or None.

    The relaxed structure is stored under the candidate's ``dedup_forms.<level>`` and its
    fingerprint in ``fingerprints`` (replacing an earlier one of the same level), so later
    lookups match it too.

    Parameters
    ----------
    db
        The cspflow database.
    candidate_id
        The candidate that was relaxed.
    structure
        Its relaxed structure.
    level
        ``"mlip"`` or ``"dft"``.

    Returns
    -------
    str or None
        The id of another candidate that is the same structure (the relaxation converged to a
        known structure), else None.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    fp = fingerprint(structure)
    keys = fp.buckets()
    with _bucket_locks(db, keys):
        dup = find_duplicate(db, structure, fp, exclude=candidate_id)
        db["candidates"].update_one(
            {"candidate_id": candidate_id},
            {
                "$set": {
                    f"dedup_forms.{level}": {
                        "fingerprint": [round(float(x), 5) for x in fp.vector],
                        "structure": structure.as_dict(),
                        "spacegroup": fp.spacegroup,
                    }
                },
            },
        )
        fdoc = fingerprint_document(candidate_id, level, structure, fp)
        db[FINGERPRINTS].replace_one({"_id": fdoc["_id"]}, fdoc, upsert=True)
    return dup


class MongoIndex:
    """:func:`register` with fixed campaign/iteration, in the interface of :class:`MemoryIndex`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, structure: Structure, fp: Fingerprint | None = None) -> str | None:
        """Return the id of a stored duplicate, or None."""
        return find_duplicate(self.db, structure, fp)

    def register(
        self, structure: Structure, fp: Fingerprint, doc: dict[str, Any]
    ) -> tuple[str, bool]:
        """Register (atomically); return (id, is_new)."""
        fields = {k: doc[k] for k in ("source", "params", "seed", "parent_ids", "campaign",
                                      "iteration", "candidate_id") if k in doc}  # fmt: skip
        return register(self.db, structure, fp, **fields)
