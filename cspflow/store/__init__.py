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

from cspflow._lazy import lazy_exports

_EXPORTS = {
    "get_client": "client",
    "get_database": "client",
    "ensure_indexes": "client",
    "get_jobstore": "client",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
