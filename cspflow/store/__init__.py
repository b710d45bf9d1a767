"""The database layer: cspflow's MongoDB collections, the jobflow JobStore, outages, reports.

Modules:

- :mod:`~cspflow.store.client`: the pymongo client, cspflow's collections and their indexes,
  jobflow's JobStore.
- :mod:`~cspflow.store.reports`: read-only reports on a campaign (workflow, fireworks, reruns,
  candidates, top structures).
- :mod:`~cspflow.store.outage`: riding out database outages (backoff, retrying collections).

The client API (``get_client``, ``get_database``, ``ensure_indexes``, ``get_jobstore``) is
importable from here; names are imported lazily so ``import cspflow.store.outage`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "get_client": "client",
    "get_database": "client",
    "ensure_indexes": "client",
    "get_jobstore": "client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"cspflow.store.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cspflow.store' has no attribute {name!r}")
