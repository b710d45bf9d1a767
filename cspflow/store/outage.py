"""Riding out database outages: wait and retry with capped exponential backoff.

A campaign's workers run for days against one MongoDB. When that database restarts (or the
embedded server is killed and started again), pymongo raises as soon as its server-selection
timeout passes, and a plain FireWorks rapidfire worker then dies or marks its running firework
FIZZLED (measured: docs/errors.md). A worker should instead wait for the database and carry on.

:class:`Backoff` is the policy (first delay, factor, cap, how long to wait at most);
:class:`Retry` applies it to one call, logging one line per attempt to stderr with the
password redacted; :class:`RetryingCollection` applies it to every operation of a pymongo
collection (FireWorks' LaunchPad collections and jobflow's output store in a worker).
:func:`riding_out` switches the process into "worker mode", in which
:func:`cspflow.store.get_client` waits for the database instead of failing at once.

Only outages are retried (:func:`is_outage`): connection failures, server-selection timeouts
and "shutting down" answers. Authentication failures, bad queries and duplicate keys raise at
once, as before.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cspflow.errors import DatabaseUnreachable

if TYPE_CHECKING:
    from cspflow.settings import CspflowSettings

__all__ = [
    "Backoff",
    "Retry",
    "RetryingCollection",
    "is_outage",
    "log_event",
    "riding_out",
    "active_retry",
    "retry_for",
]

T = TypeVar("T")

# Server answers that mean "not now, try again" rather than "your request is wrong".
_TRANSIENT_CODES = frozenset({91, 189, 6, 7, 89, 9001, 10107, 11600, 11602, 13435, 13436})

_ACTIVE: Retry | None = None

# set by every retried ``find_one_and_update`` with a ``$set``: lets a retry recognise its own
# write when the server applied it but the answer was lost (RetryingCollection)
OP_MARKER = "_cspflow_op"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first_s``, then times ``factor`` per attempt, at most ``cap_s``.

    ``max_wait_s`` bounds the whole wait (0: do not wait at all, fail at the first outage).
    """

    first_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 60.0
    max_wait_s: float = 6 * 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        return min(self.cap_s, self.first_s * self.factor ** max(0, attempt - 1))

    @classmethod
    def from_settings(cls, settings: CspflowSettings) -> Backoff:
        return cls(cap_s=settings.db_retry_cap_s, max_wait_s=settings.db_outage_max_wait_s)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the database is unreachable.

    The chain is followed because jobs wrap database errors in their own (cspflow turns a
    failed ping into a one-line :class:`~cspflow.errors.CspflowError`).
    """
    from pymongo.errors import ConnectionFailure, OperationFailure

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionFailure | DatabaseUnreachable):
            return True
        if isinstance(cur, OperationFailure) and cur.code in _TRANSIENT_CODES:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _kind(exc: BaseException) -> str:
    """Name of the pymongo error behind ``exc`` (what the log line reports)."""
    cur: BaseException | None = exc
    for _ in range(10):
        if cur is None:
            break
        if type(cur).__module__.startswith("pymongo"):
            return type(cur).__name__
        cur = cur.__cause__ or cur.__context__
    return type(exc).__name__


def log_event(message: str) -> None:
    """Write one time-stamped line to stderr (what a worker reports while it waits)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} cspflow: {message}\n")
    sys.stderr.flush()


@dataclass
class Retry:
    """Run calls against the database at ``uri``, waiting out outages under ``backoff``.

    ``uri`` only appears in log lines, always redacted.
    """

    uri: str
    backoff: Backoff = Backoff()

    def call(
        self, fn: Callable[..., T], *args: Any, what: str = "database call", **kwargs: Any
    ) -> T:
        """Return ``fn(*args, **kwargs)``, retrying while the database is unreachable.

        Raises
        ------
        DatabaseUnreachable
            When the outage outlasts ``backoff.max_wait_s`` (one line, password redacted).
        """
        attempt = 0
        started = 0.0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                attempt += 1
                started = started or time.monotonic()
                self._wait(attempt, started, exc, what)
                continue
            if attempt:
                log_event(f"database {self._where()} is back after {attempt} attempt(s), "
                     f"{time.monotonic() - started:.0f} s; {what} done")  # fmt: skip
            return result

    def _where(self) -> str:
        from cspflow.db import redact_uri

        return redact_uri(self.uri)

    def _wait(self, attempt: int, started: float, exc: BaseException, what: str) -> None:
        waited = time.monotonic() - started
        delay = self.backoff.delay(attempt)
        if waited + delay > self.backoff.max_wait_s:
            raise DatabaseUnreachable(
                f"the database at {self._where()} did not answer for {waited:.0f} s "
                f"({_kind(exc)} during {what}); giving up (db_outage_max_wait_s="
                f"{self.backoff.max_wait_s:g}); fireworks left RUNNING are rerun by "
                "`cspflow worker reconcile`"
            ) from None
        log_event(f"database {self._where()} unreachable ({_kind(exc)}) during {what}; "
             f"attempt {attempt}, retrying in {delay:.0f} s")  # fmt: skip
        time.sleep(delay)

    def wait_until_up(self, what: str = "waiting for the database") -> None:
        """Block until the database answers ``ping`` (same backoff and logging)."""
        from cspflow.db import ping

        def _ping() -> None:
            if not ping(self.uri, timeout_ms=2000):
                raise DatabaseUnreachable("no answer to ping")

        self.call(_ping, what=what)


class _RetryingCursor:
    """A lazy ``find``/``aggregate`` result that is fetched in one go under :class:`Retry`.

    Re-running a query from the start is the only safe retry once a cursor broke mid-way, so
    results are materialised (FireWorks' queries are small: ids and states).
    """

    _CHAIN = frozenset({"sort", "limit", "skip", "batch_size", "hint", "max_time_ms", "collation",
                        "comment", "where", "allow_disk_use", "max", "min", "projection"})  # fmt: skip

    def __init__(self, make: Callable[[], Any], retry: Retry, what: str) -> None:
        self._make = make
        self._retry = retry
        self._what = what
        self._rows: Iterator[Any] | None = None

    def _fetch(self) -> list[Any]:
        return self._retry.call(lambda: list(self._make()), what=self._what)

    def __getattr__(self, name: str) -> Any:
        if name in self._CHAIN:
            make = self._make

            def chained(*args: Any, **kwargs: Any) -> _RetryingCursor:
                return _RetryingCursor(lambda: getattr(make(), name)(*args, **kwargs),
                                       self._retry, self._what)  # fmt: skip

            return chained
        return getattr(self._make(), name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fetch())

    def __next__(self) -> Any:
        if self._rows is None:
            self._rows = iter(self._fetch())
        return next(self._rows)

    next = __next__

    def __getitem__(self, index: int) -> Any:
        return self._fetch()[index]

    def to_list(self, length: int | None = None) -> list[Any]:
        rows = self._fetch()
        return rows if length is None else rows[:length]

    def close(self) -> None:
        self._rows = None


class RetryingCollection:
    """A pymongo collection (or wrapper of one) whose operations wait out outages.

    Writes FireWorks and jobflow send are safe to repeat (upserts by id, state changes guarded
    by the previous state, ``$inc`` on id counters whose lost results only leave a gap).
    """

    _LAZY = frozenset(
        {"find", "aggregate", "find_raw_batches", "list_indexes", "aggregate_raw_batches"}
    )

    def __init__(self, collection: Any, retry: Retry) -> None:
        self._collection = collection
        self._retry = retry

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if _is_collection(attr):
            return RetryingCollection(attr, self._retry)
        if not callable(attr) or name.startswith("_"):
            return attr
        what = f"{getattr(self._collection, 'name', '?')}.{name}"
        if name in self._LAZY:
            return lambda *a, **kw: _RetryingCursor(lambda: attr(*a, **kw), self._retry, what)
        if name == "with_options":
            return lambda *a, **kw: RetryingCollection(attr(*a, **kw), self._retry)
        if name == "find_one_and_update":
            return lambda *a, **kw: self._find_one_and_update(attr, what, *a, **kw)
        if name in ("insert_one", "insert_many"):
            return lambda docs, *a, **kw: self._insert(name, attr, what, docs, *a, **kw)
        return lambda *a, **kw: self._retry.call(attr, *a, what=what, **kw)

    def _find_one_and_update(self, attr: Any, what: str, filter: Any, update: Any, *args: Any,
                             **kwargs: Any) -> Any:  # fmt: skip
        """``find_one_and_update`` that, retried, returns the document its lost first try changed.

        An update the server applied just before it died, its answer lost, must not be applied
        again to another document: a checkout (READY -> RESERVED) would take a second firework
        and strand the first, a workflow lock (``locked: {$exists: false}``) would find the
        workflow locked by this very call and wait for ever. Each ``$set`` therefore also sets
        a unique :data:`OP_MARKER`; a retry first looks for it. ``$inc`` updates are left as
        they are (their lost results only leave a gap in an id counter).
        """
        import uuid

        if args or not isinstance(update, dict) or "$set" not in update or "$inc" in update:
            return self._retry.call(attr, filter, update, *args, what=what, **kwargs)
        token = uuid.uuid4().hex
        marked = {**update, "$set": {**update["$set"], OP_MARKER: token}}
        tries = 0

        def once() -> Any:
            nonlocal tries
            tries += 1
            if tries > 1:
                mine = self._collection.find_one({OP_MARKER: token}, kwargs.get("projection"))
                if mine is not None:
                    return mine
            return attr(filter, marked, **kwargs)

        return self._retry.call(once, what=what)

    def _insert(self, name: str, attr: Any, what: str, docs: Any, *args: Any, **kwargs: Any) -> Any:
        """``insert_one``/``insert_many`` that, retried, inserts only what the lost try did not.

        The documents get their ``_id`` before the first try (a generator, which FireWorks
        passes, is read once), so a retry skips the ones already stored instead of failing
        with a duplicate key or, for a spent generator, with nothing to insert.
        """
        from bson import ObjectId
        from pymongo.results import InsertManyResult, InsertOneResult

        many = name == "insert_many"
        batch = list(docs) if many else [docs]
        for doc in batch:
            if isinstance(doc, dict):
                doc.setdefault("_id", ObjectId())
        ids = [doc["_id"] if isinstance(doc, dict) else None for doc in batch]
        tries = 0

        def once() -> Any:
            nonlocal tries
            tries += 1
            todo = batch
            if tries > 1 and None not in ids:
                stored = {
                    d["_id"] for d in self._collection.find({"_id": {"$in": ids}}, {"_id": 1})
                }
                todo = [doc for doc in batch if doc["_id"] not in stored]
                if not todo:
                    return InsertManyResult(ids, True) if many else InsertOneResult(ids[0], True)
            result = attr(todo, *args, **kwargs) if many else attr(todo[0], *args, **kwargs)
            return InsertManyResult(ids, True) if many and None not in ids else result

        return self._retry.call(once, what=what)

    def __getitem__(self, name: str) -> RetryingCollection:
        return RetryingCollection(self._collection[name], self._retry)

    def __eq__(self, other: object) -> bool:
        inner = other._collection if isinstance(other, RetryingCollection) else other
        return bool(self._collection == inner)

    def __hash__(self) -> int:
        return hash(self._collection)


def _is_collection(obj: Any) -> bool:
    from pymongo.collection import Collection

    return isinstance(obj, Collection)


def active_retry() -> Retry | None:
    """The process's retry policy while :func:`riding_out` is active (worker mode), else None."""
    return _ACTIVE


@contextmanager
def riding_out(retry: Retry | None) -> Iterator[Retry | None]:
    """Within the block, :func:`cspflow.store.get_client` waits out outages under ``retry``.

    Process-wide on purpose: jobs run in the worker's main thread and FireWorks' heartbeat in
    another, and both must wait rather than fail. ``None`` leaves the process as it is.
    """
    global _ACTIVE
    previous = _ACTIVE
    if retry is not None:
        _ACTIVE = retry
    try:
        yield retry
    finally:
        _ACTIVE = previous


def retry_for(settings: CspflowSettings, uri: str) -> Retry | None:
    """The worker retry policy of these settings (None when ``db_outage_max_wait_s`` is 0)."""
    if settings.db_outage_max_wait_s <= 0:
        return None
    return Retry(uri=uri, backoff=Backoff.from_settings(settings))
