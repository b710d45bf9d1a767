"""Bucket locks: registrations of near-identical structures are serialised across processes.

Registration is atomic across processes: a writer takes a lock document (``dedup_locks``, keyed
by ``_id``, so the server's own unique ``_id`` index arbitrates) for the formula, space group
and primitive-cell size of its structure (:func:`~cspflow.dedup.fingerprint.lock_key`),
looks up, inserts, and releases. Every structure a lookup could match has the same key, so
registrations of near-identical structures are serialised and exactly one of them is stored.
The unique (chemsys, fingerprint_hash) index is a second guard against exact repeats. A lock
left behind is taken over at once when its owner is known to be gone (a process of this host
that has exited, or an earlier attempt of this process that a database outage broke off before
it could release), else after :data:`LOCK_STALE_S` seconds; a writer waits up to
:data:`LOCK_WAIT_S`, which is longer.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["LOCKS", "LOCK_STALE_S", "LOCK_WAIT_S"]

LOCKS = "dedup_locks"
LOCK_STALE_S = 30.0
LOCK_WAIT_S = 90.0
# owner tokens of the bucket locks this process holds right now
_HELD: set[str] = set()


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def _bucket_locks(db: Database, keys: list[str], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold lock documents for every key (sorted, so two writers cannot deadlock).

    cspflow takes one key per registration (:func:`~cspflow.dedup.fingerprint.lock_key`).
    """
    from pymongo.errors import DuplicateKeyError

    from cspflow.procs import pid_namespace

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
    from cspflow.procs import pid_namespace, process_gone

    host, _, rest = str(lock.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if (
        host == socket.gethostname()
        and pid == str(os.getpid())
        and lock.get("pidns") == pid_namespace()
    ):
        return lock["owner"] not in _HELD
    return process_gone(host, pid, lock.get("pidns"))
