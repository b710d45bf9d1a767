"""MongoDB access: the pymongo client, the jobflow JobStore, cspflow's collections and indexes.

FireWorks owns ``fireworks``/``workflows``/``launches``; jobflow's JobStore owns ``outputs``
(+ GridFS ``outputs_blobs``); cspflow owns ``candidates``, ``hull``, ``models`` and ``campaigns``.
All functions take an explicit database or read the settings at call time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from cspflow.db import redact_uri, resolve_uri
from cspflow.errors import CspflowError, DatabaseUnreachable
from cspflow.settings import CspflowSettings, get_settings

if TYPE_CHECKING:
    from jobflow import JobStore
    from pymongo import MongoClient
    from pymongo.database import Database

__all__ = [
    "CSPFLOW_COLLECTIONS",
    "get_client",
    "get_database",
    "ensure_indexes",
    "get_jobstore",
]

CSPFLOW_COLLECTIONS = (
    "candidates", "fingerprints", "dedup_locks", "hull", "models", "campaigns", "cspflow_meta"
)  # fmt: skip

# (collection, keys, options): one place lists every index cspflow relies on.
_INDEXES: tuple[tuple[str, list[tuple[str, int]], dict], ...] = (
    ("candidates", [("chemsys", 1), ("fingerprint_hash", 1)], {"unique": True, "name": "dedup"}),
    ("candidates", [("campaign", 1), ("iteration", 1), ("status", 1)], {"name": "campaign_stage"}),
    ("candidates", [("formula", 1), ("energy_per_atom.mlip", 1)], {"name": "by_energy_mlip"}),
    ("candidates", [("formula", 1), ("energy_per_atom.dft", 1)], {"name": "by_energy_dft"}),
    ("candidates", [("candidate_id", 1)], {"unique": True, "name": "candidate_id"}),
    ("fingerprints", [("bucket", 1)], {"name": "bucket"}),
    ("fingerprints", [("candidate_id", 1)], {"name": "candidate_id"}),
    (
        "fingerprints",
        [("formula", 1), ("level", 1), ("energy_per_atom", 1)],
        {"name": "relaxed_energy"},
    ),  # fmt: skip
    (
        "hull",
        [("chemsys", 1), ("fidelity_key", 1), ("version", -1)],
        {"unique": True, "name": "chemsys_fidelity_version"},
    ),
    ("hull_references", [("fidelity_key", 1)], {"name": "fidelity_key"}),
    (
        "candidates",
        [("relaxed.dft_by_fidelity.fidelity.key", 1)],
        {"name": "dft_fidelity_key"},
    ),
    ("candidates", [("relaxed.mlip.fidelity.key", 1)], {"name": "mlip_fidelity_key"}),
    ("models", [("model_id", 1)], {"unique": True, "name": "model_id"}),
    ("models", [("chemsys", 1), ("created_at", -1)], {"name": "chemsys_created"}),
    ("models", [("chemsys", 1), ("promoted", 1), ("created_at", -1)], {"name": "current_model"}),
    ("models", [("chemsys", 1), ("fidelity_key", 1), ("promoted", 1)], {"name": "fidelity_model"}),
    ("campaigns", [("name", 1)], {"unique": True, "name": "name"}),
)


@lru_cache(maxsize=8)
def _client_for(uri: str, timeout_ms: int) -> MongoClient:
    import pymongo

    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=False)


def get_client(settings: CspflowSettings | None = None) -> MongoClient:
    """Return a (cached) pymongo client for the configured or embedded database.

    In a worker riding out outages (:func:`cspflow.store.outage.riding_out`) this waits, with
    backoff, for the database to answer instead of failing at once.

    Raises
    ------
    CspflowError
        When the database does not answer (:class:`~cspflow.errors.DatabaseUnreachable`) or
        refuses the credentials; the message never contains the password.
    """
    from cspflow.store.outage import active_retry

    settings = settings or get_settings()
    uri = resolve_uri(settings)
    client = _client_for(uri, settings.db_server_selection_timeout_ms)
    retry = active_retry()
    if retry is not None:
        retry.call(_ping, client, uri, what="ping")
    else:
        _ping(client, uri)
    return client


def _ping(client: MongoClient, uri: str) -> None:
    """Ping the server; turn a failure into one line that says what to check."""
    try:
        client.admin.command("ping")
    except Exception as exc:
        kind = type(exc).__name__
        if getattr(exc, "code", None) == 18:  # AuthenticationFailed
            raise CspflowError(
                f"the database at {redact_uri(uri)} refused the credentials (authentication "
                "failed); check the user, password and authSource in CSPFLOW_DB_URI"
            ) from None
        raise DatabaseUnreachable(
            f"cannot reach the database at {redact_uri(uri)} ({kind}); check CSPFLOW_DB_URI, "
            "or unset it to use the embedded server (`cspflow db start`)"
        ) from None


def get_database(settings: CspflowSettings | None = None) -> Database:
    """Return the cspflow database with its indexes in place, upgraded to this release's
    layout (:func:`cspflow.store.migrate.upgrade`, checked once per process)."""
    from cspflow.store.migrate import upgrade

    settings = settings or get_settings()
    db = get_client(settings)[settings.db_name]
    ensure_indexes(db)
    upgrade(db)
    return db


def ensure_indexes(db: Database) -> None:
    """Create cspflow's indexes; safe to call any number of times."""
    for coll, keys, options in _INDEXES:
        db[coll].create_index(keys, **options)


def get_jobstore(settings: CspflowSettings | None = None) -> JobStore:
    """Return jobflow's JobStore: outputs in MongoDB, large blobs (``data``) in GridFS."""
    from jobflow import JobStore
    from maggma.stores import GridFSStore, MongoStore

    settings = settings or get_settings()
    uri = resolve_uri(settings)
    # the same server-selection timeout as cspflow's own clients (pymongo's default is 30 s)
    kwargs = {"serverSelectionTimeoutMS": settings.db_server_selection_timeout_ms}
    docs = MongoStore(database=settings.db_name, collection_name="outputs", uri=uri,
                      mongoclient_kwargs=kwargs)  # fmt: skip
    blobs = GridFSStore(database=settings.db_name, collection_name="outputs_blobs", uri=uri,
                        mongoclient_kwargs=kwargs)  # fmt: skip
    return JobStore(docs, additional_stores={"data": blobs})
