"""Database-wide deduplication: fingerprint buckets + StructureMatcher within a bucket.

Every stored form of a candidate (the generated structure, and relaxed ones) has a small
document in ``fingerprints``: candidate id, level, formula, symmetry, bucket keys, the
fingerprint vector and the reduced cell StructureMatcher compares (``cell``: the primitive cell
of the Niggli cell, as float64 bytes; about 0.6 kB for 20 sites), not the structure. A lookup
reads the buckets of its fingerprint there (``fingerprints.bucket``, a multikey index; one key
per hash table, see :mod:`cspflow.dedup.fingerprint`), keeps the fingerprints within
:data:`~cspflow.dedup.fingerprint.FP_TOLERANCE`, closest first, and confirms with pymatgen's
StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5, scale=True, primitive cells;
:mod:`cspflow.dedup.match`). Both sides enter the matcher already reduced
(``fit(..., skip_structure_reduction=True)``): the stored side's reduction was done once when
it was filed, the query's once per lookup. That is the same comparison as
``StructureMatcher.fit`` on the original structures, which spends about 75% of its time on
those two reductions. Fingerprint documents written by older versions (no ``cell``, keys of the
old scheme) are still found and checked the old way, with the structure from ``candidates`` and
the full matcher.

Registration is atomic across processes: a writer holds the bucket lock of its structure
(:mod:`cspflow.dedup.locks`: formula, space group and primitive-cell size) while it looks up
and inserts, so exactly one of several near-identical structures is stored.

Relaxed structures: :func:`register_relaxed` files a candidate's relaxed structure (level
``mlip`` or ``dft``) under its own buckets, so later lookups match initial and relaxed forms.
Relaxed copies of one minimum are also found without the buckets: their space group at
``symprec`` 0.1 and their fingerprints drift with the optimizer's last steps (three copies of
CsCl-type DyCu within 0.6 meV/atom sat in different buckets and were all listed), so a relaxed
structure is also compared with every relaxed form of its formula at the same level whose
energy lies within :data:`RELAXED_ENERGY_WINDOW`, closest energy first
(:func:`find_relaxed_duplicate`), and relaxed registrations of one formula and level are
serialised by one lock.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Structure

from cspflow.dedup.fingerprint import (
    FP_TOLERANCE,
    Fingerprint,
    fingerprint,
    legacy_query_key,
    lock_key,
)
from cspflow.dedup.locks import _bucket_locks
from cspflow.dedup.match import (
    _Confirmation,
    cell_document,
    cell_from_document,
    content_hash,
    reduced_cell,
    structures_match,
)

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "LEVELS",
    "FINGERPRINTS",
    "RELAXED_ENERGY_WINDOW",
    "MemoryIndex",
    "MongoIndex",
    "find_duplicate",
    "register",
    "register_relaxed",
    "find_relaxed_duplicate",
    "candidate_document",
    "fingerprint_document",
    "new_candidate_id",
]

LEVELS = ("mlip", "dft")
FINGERPRINTS = "fingerprints"
#: relaxed forms of one formula and level within this energy (eV/atom) of each other are
#: compared as possibly one minimum (copies of one minimum relaxed to fmax 0.05 differ by
#: about 1 meV/atom)
RELAXED_ENERGY_WINDOW = 0.01


# ---------------------------------------------------------------------------------------------
# in-memory index (batches without a database, and the CLI's default)


class MemoryIndex:
    """The same bucket + matcher logic over a dict (one process, no database)."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[str]] = defaultdict(list)
        self._items: dict[str, tuple[Fingerprint, Structure]] = {}
        self._cells: dict[str, Structure] = {}  # reduced cells, computed when first compared

    def __len__(self) -> int:
        return len(self._items)

    def _cell(self, candidate_id: str) -> Structure:
        if candidate_id not in self._cells:
            self._cells[candidate_id] = reduced_cell(self._items[candidate_id][1])
        return self._cells[candidate_id]

    def _find(self, structure: Structure, fp: Fingerprint) -> tuple[str | None, Structure | None]:
        ids = {cid for key in fp.buckets() for cid in self._buckets.get(key, ())}
        hits = []
        for cid in ids:
            d = float(np.sqrt(np.mean((fp.vector - self._items[cid][0].vector) ** 2)))
            if d <= FP_TOLERANCE:
                hits.append((d, cid))
        query = _Confirmation(structure)
        for _, cid in sorted(hits):
            if query.matches(self._cell(cid)):
                return cid, query.cell
        return None, query.cell

    def find(self, structure: Structure, fp: Fingerprint | None = None) -> str | None:
        """Return the id of a stored duplicate, or None."""
        return self._find(structure, fp or fingerprint(structure))[0]

    def add(
        self,
        candidate_id: str,
        structure: Structure,
        fp: Fingerprint | None = None,
        cell: Structure | None = None,
    ) -> None:
        """File a structure under its buckets (``cell``: its reduced cell, if known)."""
        fp = fp or fingerprint(structure)
        self._items[candidate_id] = (fp, structure)
        if cell is not None:
            self._cells[candidate_id] = cell
        for key in fp.buckets():
            self._buckets[key].append(candidate_id)

    def register(
        self, structure: Structure, fp: Fingerprint, doc: dict[str, Any]
    ) -> tuple[str, bool]:
        """Return (id, True) after adding a new structure, or (existing id, False)."""
        dup, cell = self._find(structure, fp)
        if dup is not None:
            return dup, False
        self.add(doc["candidate_id"], structure, fp, cell)
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
    return doc.model_dump(exclude={"relaxed"})  # no relaxation yet: no sub-document


def fingerprint_document(
    candidate_id: str,
    level: str,
    structure: Structure,
    fp: Fingerprint,
    cell: Structure | None = None,
    energy_per_atom: float | None = None,
    fidelity: str | None = None,
) -> dict[str, Any]:
    """Build the ``fingerprints`` document of one stored form of a candidate.

    Small on purpose (no structure): a lookup reads every document of its buckets, and the
    server reads each document whole. The vector is stored as little-endian float32 bytes,
    which the server and the client handle as one value; ``cell`` holds the reduced cell
    (``cell`` argument, else :func:`~cspflow.dedup.match.reduced_cell` of the structure) for
    the confirmation; ``energy_per_atom`` (relaxed forms) lets :func:`find_relaxed_duplicate`
    find it by energy.
    """
    from bson import Binary

    cell = cell if cell is not None else reduced_cell(structure)
    return {
        "_id": f"{candidate_id}|{level}" + (f"|{fidelity}" if fidelity else ""),
        "fidelity_key": fidelity,
        "candidate_id": candidate_id,
        "level": level,
        "formula": fp.formula,
        "chemsys": fp.chemsys,
        "spacegroup": fp.spacegroup,
        "nprim": fp.nprim,
        "nsites": len(structure),
        "bucket": fp.buckets(),
        "fp": Binary(np.asarray(fp.vector, dtype="<f4").tobytes()),
        "cell": cell_document(cell),
        "energy_per_atom": energy_per_atom,
    }


def _close_hits(
    fp: Fingerprint, docs: list[dict[str, Any]]
) -> list[tuple[float, str, dict[str, Any]]]:
    """(distance, _id, document) of the documents within FP_TOLERANCE, closest first."""
    want = np.asarray(fp.vector, dtype=float)
    rows = list({d["_id"]: d for d in docs if len(d["fp"]) == 4 * want.size}.values())
    if not rows:
        return []
    vecs = np.frombuffer(b"".join(d["fp"] for d in rows), dtype="<f4").reshape(len(rows), -1)
    dist = np.sqrt(np.mean((vecs - want) ** 2, axis=1))
    hits = [(float(x), d["_id"], d) for x, d in zip(dist, rows, strict=True)]
    return sorted((h for h in hits if h[0] <= FP_TOLERANCE), key=lambda h: h[:2])


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
    cell: Structure | None = None,
) -> str | None:
    """Return the id of a stored candidate that is the same structure, or None.

    Reads the buckets of the structure's fingerprint in the small ``fingerprints`` collection
    (one query), keeps the fingerprints within
    :data:`~cspflow.dedup.fingerprint.FP_TOLERANCE`, and confirms them, closest first, with
    StructureMatcher on the reduced cells (:func:`~cspflow.dedup.match.cells_match`); a
    document written by an older version, without a reduced cell, is confirmed with the
    structure from ``candidates`` and :func:`~cspflow.dedup.match.structures_match`. Matches
    against every stored form: the generated structure and any relaxed structure filed with
    :func:`register_relaxed`. Works across campaigns.

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
    cell
        Its reduced cell (:func:`~cspflow.dedup.match.reduced_cell`), when already computed.
    """
    fp = fp or fingerprint(structure)
    query: dict[str, Any] = {"bucket": {"$in": [*fp.buckets(), legacy_query_key(fp)]}}
    if exclude is not None:
        query["candidate_id"] = {"$ne": exclude}
    fields = {"candidate_id": 1, "level": 1, "fp": 1, "cell": 1}
    confirm = _Confirmation(structure, cell)
    for _, _, doc in _close_hits(fp, list(db[FINGERPRINTS].find(query, fields))):
        if doc.get("cell") is not None:
            if confirm.matches(cell_from_document(doc["cell"])):
                return doc["candidate_id"]
            continue
        stored = _stored_structure(db, doc["candidate_id"], doc["level"])  # older document
        if stored is not None and structures_match(structure, stored):
            return doc["candidate_id"]
    return None


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
    cell = reduced_cell(structure)  # before the lock: the lookup and the new document use it
    doc = candidate_document(structure, fp, **fields)
    with _bucket_locks(db, [lock_key(fp)]):
        dup = find_duplicate(db, structure, fp, cell=cell)
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
        fdoc = fingerprint_document(doc["candidate_id"], "initial", structure, fp, cell)
        db[FINGERPRINTS].replace_one({"_id": fdoc["_id"]}, fdoc, upsert=True)
    return doc["candidate_id"], True


def find_relaxed_duplicate(
    db: Database,
    structure: Structure,
    level: str,
    energy_per_atom: float,
    *,
    exclude: str | None = None,
    cell: Structure | None = None,
    formula: str | None = None,
    fidelity: str | None = None,
) -> str | None:
    """Return the id of another candidate whose relaxed form at ``level`` is this minimum.

    With ``fidelity`` only forms filed at that fidelity are compared (energies of two
    fidelities are not comparable).

    Compares with every relaxed form of the formula at the level whose energy is within
    :data:`RELAXED_ENERGY_WINDOW` of ``energy_per_atom``, closest energy first, by
    StructureMatcher on reduced cells (:func:`~cspflow.dedup.match.cells_match`). Unlike
    :func:`find_duplicate` it does not go through the fingerprint buckets, whose space group
    and fingerprint cells split copies of one minimum that the optimizer left slightly apart.
    """
    formula = formula or structure.composition.reduced_formula
    query: dict[str, Any] = {
        "formula": formula,
        "level": level,
        "energy_per_atom": {
            "$gte": energy_per_atom - RELAXED_ENERGY_WINDOW,
            "$lte": energy_per_atom + RELAXED_ENERGY_WINDOW,
        },
    }
    if exclude is not None:
        query["candidate_id"] = {"$ne": exclude}
    if fidelity is not None:
        query["fidelity_key"] = fidelity
    fields = {"candidate_id": 1, "cell": 1, "energy_per_atom": 1}
    docs = sorted(
        db[FINGERPRINTS].find(query, fields),
        key=lambda d: (abs(d["energy_per_atom"] - energy_per_atom), d["candidate_id"]),
    )
    confirm = _Confirmation(structure, cell)
    for doc in docs:
        if doc.get("cell") is not None and confirm.matches(cell_from_document(doc["cell"])):
            return str(doc["candidate_id"])
    return None


def register_relaxed(
    db: Database,
    candidate_id: str,
    structure: Structure,
    level: str,
    energy_per_atom: float | None = None,
    fidelity: str | None = None,
) -> str | None:
    """File a candidate's relaxed structure for deduplication; return a duplicate's id or None.

    The relaxed structure is stored under the candidate's ``dedup_forms.<level>`` and its
    fingerprint in ``fingerprints`` (replacing an earlier one of the same level), so later
    lookups match it too. With ``energy_per_atom`` the relaxed forms of the same formula and
    level near that energy are searched as well (:func:`find_relaxed_duplicate`): copies of one
    minimum are found even where their symmetry or fingerprint drifted apart.

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
    energy_per_atom
        The relaxed energy at that level (eV/atom).
    fidelity
        Fidelity key of the relaxation (DFT): the form is filed per fidelity
        (``dedup_forms["dft@KEY"]``) and the energy window compares forms of that fidelity only.

    Returns
    -------
    str or None
        The id of another candidate that is the same structure (the relaxation converged to a
        known structure; where that one is itself marked ``duplicate_of``, the candidate it
        points to), else None.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    fp = fingerprint(structure)
    cell = reduced_cell(structure)
    from cspflow.schemas.fidelity import field_key

    form = f"{level}@{field_key(fidelity)}" if fidelity else level
    with _bucket_locks(db, [lock_key(fp), f"{fp.formula}|relaxed|{level}"]):
        dup = find_duplicate(db, structure, fp, exclude=candidate_id, cell=cell)
        if dup is None and energy_per_atom is not None:
            dup = find_relaxed_duplicate(
                db, structure, level, energy_per_atom,
                exclude=candidate_id, cell=cell, formula=fp.formula, fidelity=fidelity,
            )  # fmt: skip
        db["candidates"].update_one(
            {"candidate_id": candidate_id},
            {
                "$set": {
                    f"dedup_forms.{form}": {
                        "fingerprint": [round(float(x), 5) for x in fp.vector],
                        "structure": structure.as_dict(),
                        "spacegroup": fp.spacegroup,
                        "fidelity_key": fidelity,
                    }
                },
            },
        )
        fdoc = fingerprint_document(
            candidate_id, level, structure, fp, cell, energy_per_atom, fidelity
        )
        db[FINGERPRINTS].replace_one({"_id": fdoc["_id"]}, fdoc, upsert=True)
    if dup is None:
        return None
    representative = _representative(db, dup)
    # a candidate whose match points back at it (a rerun) is its minimum's representative
    return None if representative == candidate_id else representative


def _representative(db: Database, candidate_id: str) -> str:
    """Follow ``duplicate_of`` from a candidate to the one that stands for its minimum."""
    seen = {candidate_id}
    while True:
        doc = db["candidates"].find_one({"candidate_id": candidate_id}, {"duplicate_of": 1})
        nxt = (doc or {}).get("duplicate_of")
        if not nxt or nxt in seen:
            return candidate_id
        seen.add(nxt)
        candidate_id = nxt


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
