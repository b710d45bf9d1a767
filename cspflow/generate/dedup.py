"""Database-wide deduplication: fingerprint buckets + StructureMatcher within a bucket.

Every stored form of a candidate (the generated structure, and relaxed ones) has a small
document in ``fingerprints``: candidate id, level, formula, symmetry, bucket keys, the
fingerprint vector and the reduced cell StructureMatcher compares (``cell``: the primitive cell
of the Niggli cell, as float64 bytes; about 0.6 kB for 20 sites), not the structure. A lookup
reads the buckets of its fingerprint there (``fingerprints.bucket``, a multikey index; one key
per hash table, see :mod:`cspflow.generate.fingerprint`), keeps the fingerprints within
:data:`~cspflow.generate.fingerprint.FP_TOLERANCE`, closest first, and confirms with pymatgen's
StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5, scale=True, primitive cells). Both sides
enter the matcher already reduced (``fit(..., skip_structure_reduction=True)``): the stored
side's reduction was done once when it was filed, the query's once per lookup. That is the
same comparison as ``StructureMatcher.fit`` on the original structures, which spends about 75%
of its time on those two reductions. Fingerprint documents written by older versions (no
``cell``, keys of the old scheme) are still found and checked the old way, with the structure
from ``candidates`` and the full matcher.

Registration is atomic across processes: a writer takes a lock document (``dedup_locks``, keyed
by ``_id``, so the server's own unique ``_id`` index arbitrates) for the formula, space group
and primitive-cell size of its structure (:func:`~cspflow.generate.fingerprint.lock_key`),
looks up, inserts, and releases. Every structure a lookup could match has the same key, so
registrations of near-identical structures are serialised and exactly one of them is stored.
The unique (chemsys, fingerprint_hash) index is a second guard against exact repeats. A lock
left behind is taken over at once when its owner is known to be gone (a process of this host
that has exited, or an earlier attempt of this process that a database outage broke off before
it could release), else after :data:`LOCK_STALE_S` seconds; a writer waits up to
:data:`LOCK_WAIT_S`, which is longer.

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

import hashlib
import itertools
import json
import os
import socket
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
    legacy_query_key,
    lock_key,
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
    "reduced_cell",
    "cells_match",
    "cell_document",
    "cell_from_document",
    "find_duplicate",
    "register",
    "register_relaxed",
    "find_relaxed_duplicate",
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
#: relaxed forms of one formula and level within this energy (eV/atom) of each other are
#: compared as possibly one minimum (copies of one minimum relaxed to fmax 0.05 differ by
#: about 1 meV/atom)
RELAXED_ENERGY_WINDOW = 0.01
LOCK_STALE_S = 30.0
LOCK_WAIT_S = 90.0
# owner tokens of the bucket locks this process holds right now
_HELD: set[str] = set()


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_matcher = None


def _get_matcher() -> Any:
    global _matcher
    if _matcher is None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        _matcher = StructureMatcher(**MATCHER_KWARGS)
    return _matcher


def structures_match(a: Structure, b: Structure) -> bool:
    """True when pymatgen's StructureMatcher (cspflow's tolerances) finds a and b the same."""
    return bool(_get_matcher().fit(a, b))


def reduced_cell(structure: Structure) -> Structure:
    """Return the cell StructureMatcher compares: the primitive cell of the Niggli cell.

    The same two steps, in the same order and with the same defaults, as the matcher's own
    preprocessing with ``primitive_cell=True`` (``StructureMatcher._get_reduced_structure``),
    so ``cells_match(reduced_cell(a), reduced_cell(b)) == structures_match(a, b)``.
    """
    return _niggli_cell(structure).get_primitive_structure()


def _niggli_cell(structure: Structure) -> Structure:
    return Structure.from_sites(structure).get_reduced_structure(reduction_algo="niggli")


class _Confirmation:
    """Confirms stored reduced cells against one query structure, reducing it at most once.

    Before the primitive-cell search (the costly half of :func:`reduced_cell`), the query's
    Niggli cell is compared with the stored cell by :func:`_same_cell`: a stored structure
    re-submitted in its primitive cell (rotated, shifted, reordered, rescaled) is the same cell
    already, and where the check says so the two are one crystal to 1e-3, which
    StructureMatcher calls a match.
    """

    def __init__(self, structure: Structure, cell: Structure | None = None) -> None:
        self.structure = structure
        self.cell = cell  # reduced_cell(structure) once computed
        self._niggli: Structure | None = None

    def matches(self, stored: Structure) -> bool:
        """True when the query and a stored reduced cell are the same structure."""
        if self.cell is None:
            if self._niggli is None:
                self._niggli = _niggli_cell(self.structure)
            if _same_cell(self._niggli, stored):
                return True
            self.cell = self._niggli.get_primitive_structure()  # reduced_cell, same steps
        return cells_match(self.cell, stored)


def cells_match(a: Structure, b: Structure) -> bool:
    """:func:`structures_match` for cells already reduced by :func:`reduced_cell`.

    pymatgen's ``fit(..., skip_structure_reduction=True)``: the matcher skips only the
    reduction it would otherwise repeat on every comparison. Two cells that are the same up
    to rotation, origin, site order and volume (:func:`_same_cell`, 1e-3 tolerances, far
    inside the matcher's) are a match without running it: a repeat of a stored structure is
    the common case, and that check costs a fifth of the matcher.
    """
    return _same_cell(a, b) or bool(_get_matcher().fit(a, b, skip_structure_reduction=True))


#: proper changes of basis that permute and flip the axes (a Niggli cell is unique up to these
#: where lengths or angles coincide)
_AXIS_SWAPS = [
    m
    for m in (
        np.array([[sign[i] * (perm[i] == j) for j in range(3)] for i in range(3)], dtype=float)
        for perm in itertools.permutations(range(3))
        for sign in itertools.product((1, -1), repeat=3)
    )
    if np.linalg.det(m) > 0
]


def _same_cell(a: Structure, b: Structure, tol: float = 1e-3) -> bool:
    """True when a and b are one cell up to rotation, origin, site order and volume.

    Lattices are compared at one atom per unit volume (the matcher's ``scale=True``), as metric
    tensors (so rotation does not matter), under each of :data:`_AXIS_SWAPS`; sites must map
    one to one within ``tol`` after one translation. Where this holds, StructureMatcher finds
    the same lattice and translation within its far larger tolerances (ltol 0.2, stol 0.3,
    angle_tol 5), so a True never disagrees with it; a False proves nothing.
    """
    n = len(a)
    if n != len(b):
        return False
    sa = np.array([site.species_string for site in a])
    sb = np.array([site.species_string for site in b])
    if sorted(sa) != sorted(sb):
        return False
    la = a.lattice.matrix * (n / a.volume) ** (1 / 3)
    lb = b.lattice.matrix * (n / b.volume) ** (1 / 3)
    ga = la @ la.T
    same = sa[:, None] == sb[None, :]
    values, counts = np.unique(sa, return_counts=True)
    anchor = int(np.flatnonzero(sa == values[np.argmin(counts)])[0])
    fa = a.frac_coords
    for m in _AXIS_SWAPS:
        lm = m @ lb
        if np.abs(lm @ lm.T - ga).max() > tol:
            continue
        fb = b.frac_coords @ m.T  # m is orthogonal: its inverse
        for j in np.flatnonzero(sb == sa[anchor]):
            d = fa[:, None, :] + (fb[j] - fa[anchor]) - fb[None, :, :]
            d -= np.round(d)
            dist = np.linalg.norm(d @ lm, axis=-1)
            dist[~same] = np.inf
            k = dist.argmin(axis=1)
            if dist[np.arange(n), k].max() < tol and len(set(k.tolist())) == n:
                return True
    return False


def cell_document(cell: Structure) -> dict[str, Any]:
    """Compact, exact form of a reduced cell: float64 lattice and fractional coordinates."""
    from bson import Binary

    return {
        "lattice": Binary(np.asarray(cell.lattice.matrix, dtype="<f8").tobytes()),
        "species": " ".join(site.species_string for site in cell),
        "frac": Binary(np.asarray(cell.frac_coords, dtype="<f8").tobytes()),
    }


def cell_from_document(doc: dict[str, Any]) -> Structure:
    """Rebuild the cell written by :func:`cell_document`, bit for bit."""
    lattice = np.frombuffer(doc["lattice"], dtype="<f8").reshape(3, 3).copy()
    frac = np.frombuffer(doc["frac"], dtype="<f8").reshape(-1, 3).copy()
    return Structure(lattice, doc["species"].split(" "), frac)


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
    return doc.model_dump()


def fingerprint_document(
    candidate_id: str,
    level: str,
    structure: Structure,
    fp: Fingerprint,
    cell: Structure | None = None,
    energy_per_atom: float | None = None,
) -> dict[str, Any]:
    """Build the ``fingerprints`` document of one stored form of a candidate.

    Small on purpose (no structure): a lookup reads every document of its buckets, and the
    server reads each document whole. The vector is stored as little-endian float32 bytes,
    which the server and the client handle as one value; ``cell`` holds the reduced cell
    (``cell`` argument, else :func:`reduced_cell` of the structure) for the confirmation;
    ``energy_per_atom`` (relaxed forms) lets :func:`find_relaxed_duplicate` find it by energy.
    """
    from bson import Binary

    cell = cell if cell is not None else reduced_cell(structure)
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
    :data:`~cspflow.generate.fingerprint.FP_TOLERANCE`, and confirms them, closest first, with
    StructureMatcher on the reduced cells (:func:`cells_match`); a document written by an older
    version, without a reduced cell, is confirmed with the structure from ``candidates`` and
    :func:`structures_match`. Matches against every stored form: the generated structure and
    any relaxed structure filed with :func:`register_relaxed`. Works across campaigns.

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
        Its reduced cell (:func:`reduced_cell`), when already computed.
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


@contextmanager
def _bucket_locks(db: Database, keys: list[str], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold lock documents for every key (sorted, so two writers cannot deadlock).

    cspflow takes one key per registration (:func:`~cspflow.generate.fingerprint.lock_key`).
    """
    from pymongo.errors import DuplicateKeyError

    from cspflow.db import pid_namespace

    locks = db[LOCKS]
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    held: list[str] = []
    deadline = time.monotonic() + wait_s
    delay = 0.002
    _HELD.add(owner)
    try:
        for key in sorted(set(keys)):
            while True:
                try:
                    locks.insert_one({"_id": key, "owner": owner, "at": _utcnow(),
                                      "pidns": pid_namespace()})  # fmt: skip
                    held.append(key)
                    break
                except DuplicateKeyError:
                    holder = locks.find_one({"_id": key}) or {}
                    if holder.get("owner") == owner:  # our insert, its answer lost in an outage
                        held.append(key)
                        break
                    if _abandoned(holder):
                        from cspflow.store.outage import log_event

                        locks.delete_one({"_id": key, "owner": holder["owner"]})
                        log_event(f"dedup bucket {key!r}: took over the lock of "
                                  f"{holder['owner']}, which is gone")  # fmt: skip
                        continue
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
        _HELD.discard(owner)
        for key in held:
            locks.delete_one({"_id": key, "owner": owner})


def _abandoned(lock: dict[str, Any]) -> bool:
    """True when the owner of ``lock`` is known to be gone: an attempt of this process that no
    longer holds it (broken off by an outage), or an exited process of this host and pid
    namespace. Owners elsewhere are judged by age alone (:data:`LOCK_STALE_S`)."""
    from cspflow.db import pid_namespace, process_gone

    host, _, rest = str(lock.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid == str(os.getpid()) and lock.get("pidns") == pid_namespace():
        return lock["owner"] not in _HELD
    return process_gone(host, pid, lock.get("pidns"))


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
) -> str | None:
    """Return the id of another candidate whose relaxed form at ``level`` is this minimum.

    Compares with every relaxed form of the formula at the level whose energy is within
    :data:`RELAXED_ENERGY_WINDOW` of ``energy_per_atom``, closest energy first, by
    StructureMatcher on reduced cells (:func:`cells_match`). Unlike :func:`find_duplicate`
    it does not go through the fingerprint buckets, whose space group and fingerprint cells
    split copies of one minimum that the optimizer left slightly apart.
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
    with _bucket_locks(db, [lock_key(fp), f"{fp.formula}|relaxed|{level}"]):
        dup = find_duplicate(db, structure, fp, exclude=candidate_id, cell=cell)
        if dup is None and energy_per_atom is not None:
            dup = find_relaxed_duplicate(
                db, structure, level, energy_per_atom,
                exclude=candidate_id, cell=cell, formula=fp.formula,
            )  # fmt: skip
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
        fdoc = fingerprint_document(candidate_id, level, structure, fp, cell, energy_per_atom)
        db[FINGERPRINTS].replace_one({"_id": fdoc["_id"]}, fdoc, upsert=True)
    return _representative(db, dup) if dup is not None else None


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
