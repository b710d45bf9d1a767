"""Database-wide deduplication, shared by the stages (generate, prerelax, dft).

Modules, from the bottom up:

- :mod:`~cspflow.dedup.fingerprint`: invariant fingerprint, bucket keys, symmetry.
- :mod:`~cspflow.dedup.match`: the one StructureMatcher setup and pure matching of (reduced)
  cells.
- :mod:`~cspflow.dedup.locks`: bucket locks that serialise registrations across processes.
- :mod:`~cspflow.dedup.index`: ``find_duplicate`` / ``register`` / ``register_relaxed`` over
  MongoDB, and :class:`~cspflow.dedup.index.MemoryIndex` for batches without a database.

Names are imported lazily so ``import cspflow.dedup`` stays cheap. The function
``fingerprint`` is not re-exported here (its module has the same name): import it from
:mod:`cspflow.dedup.fingerprint`.
"""

from __future__ import annotations

from cspflow._lazy import lazy_exports

_EXPORTS = {
    "FP_TOLERANCE": "fingerprint",
    "Fingerprint": "fingerprint",
    "fingerprint_distance": "fingerprint",
    "bucket_keys": "fingerprint",
    "lock_key": "fingerprint",
    "legacy_query_key": "fingerprint",
    "fingerprint_hash": "fingerprint",
    "space_group": "fingerprint",
    "symmetry": "fingerprint",
    "chemsys_of": "fingerprint",
    "MATCHER_KWARGS": "match",
    "matcher": "match",
    "structures_match": "match",
    "reduced_cell": "match",
    "cells_match": "match",
    "cell_document": "match",
    "cell_from_document": "match",
    "content_hash": "match",
    "LEVELS": "index",
    "MemoryIndex": "index",
    "MongoIndex": "index",
    "find_duplicate": "index",
    "register": "index",
    "register_relaxed": "index",
    "find_relaxed_duplicate": "index",
    "candidate_document": "index",
    "fingerprint_document": "index",
    "new_candidate_id": "index",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
