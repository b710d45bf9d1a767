"""Workers: the FWorker of a category, the rapidfire loop, and the one worker command line.

``cspflow worker start`` runs :func:`run_worker` in this process. Whoever starts a worker as a
subprocess (``campaign run``'s :class:`~cspflow.scheduler.local.LocalWorkers`, tests,
benchmarks) builds its command line with :func:`worker_command` and its environment with
:func:`worker_env`, so that there is one place that says how a worker is started.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fireworks import FWorker

from cspflow.scheduler.launchpad import get_launchpad
from cspflow.scheduler.reconcile import reconcile_lost_runs

if TYPE_CHECKING:
    from cspflow.settings import CspflowSettings
    from cspflow.store.outage import Retry

__all__ = ["make_fworker", "run_worker", "worker_command", "worker_env"]


def worker_command(category: str, *, sleep: int | None = None, name: str | None = None,
                   until_empty: bool = False) -> list[str]:  # fmt: skip
    """Return the command line of a ``cspflow worker start`` process run by this Python.

    Parameters
    ----------
    category
        "gpu" or "cpu".
    sleep
        ``--sleep``: seconds between polls when nothing is ready (None: the command's default).
    name
        ``--name``: the worker name recorded in its launches (None: host-category).
    until_empty
        ``--until-empty``: stop when no firework of this category is ready (else a daemon).
    """
    cmd = [sys.executable, "-m", "cspflow.cli.main", "worker", "start", "--category", category]
    if sleep is not None:
        cmd += ["--sleep", str(sleep)]
    if name is not None:
        cmd += ["--name", name]
    if until_empty:
        cmd.append("--until-empty")
    return cmd


def worker_env(settings: CspflowSettings, **extra: str) -> dict[str, str]:
    """Return this process's environment pointed at ``settings``' database and directories.

    A worker subprocess reads its settings from ``CSPFLOW_*`` variables; these make it use the
    same database (URI and name), data directory and run directory as ``settings``. ``extra``
    variables are added last.
    """
    from cspflow.db import resolve_uri

    env = dict(os.environ)
    env["CSPFLOW_DB_URI"] = resolve_uri(settings)
    env["CSPFLOW_DB_NAME"] = settings.db_name
    env["CSPFLOW_DATA_DIR"] = str(settings.data_dir)
    env["CSPFLOW_WORK_DIR"] = str(settings.runs_dir)
    env.update(extra)
    return env


def make_fworker(category: str, name: str | None = None) -> FWorker:
    """Return the FWorker for a node category ("gpu" or "cpu")."""
    if category not in ("gpu", "cpu"):
        from cspflow.errors import CspflowError

        raise CspflowError(
            f"unknown worker category {category!r}; use --category gpu or --category cpu"
        )
    return FWorker(name=name or f"{socket.gethostname()}-{category}", category=category)


def run_worker(
    category: str,
    settings: CspflowSettings | None = None,
    nlaunches: int | str = 0,
    sleep_time: int = 5,
    max_loops: int = -1,
    launch_dir: str | os.PathLike | None = None,
    name: str | None = None,
    reconcile_first: bool = False,
) -> int:
    """Run a rapidfire worker of one category until nothing is ready (``nlaunches=0``).

    jobflow's JobStore for the jobs comes from cspflow's settings (the same database).
    Database outages are waited out with backoff (``db_outage_max_wait_s``, logged one line
    per attempt to stderr). The launches record this worker's host, pid and Slurm job id, so
    that ``cspflow worker reconcile`` can tell when it is gone. With ``reconcile_first``, lost
    runs are rerun before the first checkout. Returns the number of launches made.
    """
    from fireworks.core.rocket_launcher import rapidfire

    from cspflow.db import resolve_uri
    from cspflow.scheduler.reconcile import worker_identity
    from cspflow.settings import get_settings
    from cspflow.store.outage import retry_for, riding_out

    settings = settings or get_settings()
    lp = get_launchpad(settings)  # an unreachable database at start-up: one line, no waiting
    retry = retry_for(settings, resolve_uri(settings))
    if retry is not None:
        lp.ride_out_outages(retry)
    if reconcile_first:
        reconcile_lost_runs(lp, settings)
    fworker = make_fworker(category, name)
    fworker.env.update(worker_identity())
    base = Path(launch_dir or settings.runs_dir) / category
    base.mkdir(parents=True, exist_ok=True)
    before = lp.launches.count_documents({"fworker.category": category})
    import contextlib
    import sys

    # job logs go to stderr so that stdout stays clean for --json output
    with (
        riding_out(retry),
        _jobflow_store_env(settings, retry),
        contextlib.redirect_stdout(sys.stderr),
    ):
        rapidfire(
            lp,
            fworker=fworker,
            nlaunches=nlaunches,
            max_loops=max_loops,
            sleep_time=sleep_time,
            m_dir=str(base),
            strm_lvl="WARNING",
        )
    return lp.launches.count_documents({"fworker.category": category}) - before


class _jobflow_store_env:
    """Point jobflow's default JobStore (used by JobFiretask) at cspflow's database.

    With a ``retry`` policy the output collection waits out database outages, so a job whose
    result is ready when the database drops out stores it once the database is back instead of
    failing (and being computed again).
    """

    def __init__(self, settings: CspflowSettings, retry: Retry | None = None) -> None:
        self.settings = settings
        self.retry = retry
        self._old: Any = None

    def __enter__(self) -> None:
        from jobflow import SETTINGS

        from cspflow.store import get_jobstore
        from cspflow.store.outage import RetryingCollection

        self._old = SETTINGS.JOB_STORE
        store = get_jobstore(self.settings)
        if self.retry is not None:
            docs: Any = store.docs_store  # a maggma MongoStore
            docs.connect()
            docs._coll = RetryingCollection(docs._coll, self.retry)
        SETTINGS.JOB_STORE = store

    def __exit__(self, *exc: object) -> None:
        from jobflow import SETTINGS

        SETTINGS.JOB_STORE = self._old
