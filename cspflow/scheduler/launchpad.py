"""The LaunchPad and routing: jobflow Flows on a FireWorks LaunchPad, routed to gpu / cpu workers.

Routing is decided in one place: :func:`cspflow.jobs.category_for` maps a job's
``metadata["stage"]`` to the FireWorks ``_category``, and :class:`CspflowLaunchPad` applies it
to every firework it writes, including those a running job adds dynamically
(``Response(addition=...)``, ``replace``, detours).

:class:`CspflowLaunchPad` also takes FireWorks' id counters from the post-image of
``findAndModify``: SecantusDB (the embedded server) can hand the same pre-image to two
concurrent clients, and FireWorks' own counters use the pre-image form. The post-image form is
equally correct on a real MongoDB.

Workers ride out database outages (:mod:`cspflow.store.outage`): every LaunchPad operation, the
jobflow output store and cspflow's own database access wait with backoff while the database is
unreachable, and a task that the outage interrupted is run again in the same launch (jobs are
idempotent), so a restart of the database neither kills a worker nor fails its firework.
Launches whose worker died are found and rerun by :mod:`cspflow.scheduler.reconcile`; the
workers themselves are in :mod:`cspflow.scheduler.workers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fireworks import LaunchPad
from pymongo import ReturnDocument

from cspflow.jobs import category_for

if TYPE_CHECKING:
    from fireworks import Firework, Workflow
    from jobflow import Flow, Job, JobStore

    from cspflow.settings import CspflowSettings
    from cspflow.store.outage import Retry

__all__ = [
    "CspflowLaunchPad",
    "get_launchpad",
    "job_stage",
    "route_firework",
    "flow_to_workflow",
    "submit_flow",
    "FW_CONFIG_DIR",
]

FW_CONFIG_DIR = Path(__file__).resolve().parents[2] / "fw_configs"


class _PostImageCollection:
    """A pymongo collection whose ``find_one_and_update`` answers from the post-image.

    Callers (FireWorks) expect the pre-image. For ``$inc`` updates the pre-image values are
    recovered exactly by subtracting the increments from the post-image, which, unlike the
    pre-image, is unique per caller on SecantusDB. Other updates return the post-image, which
    FireWorks only reads ``fw_id`` from.
    """

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def find_one_and_update(self, filter: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        if args or "return_document" in kwargs or not isinstance(update, dict):
            return self._collection.find_one_and_update(filter, update, *args, **kwargs)
        doc = self._collection.find_one_and_update(
            filter, update, return_document=ReturnDocument.AFTER, **kwargs
        )
        if doc is not None:
            for key, amount in update.get("$inc", {}).items():
                doc[key] = doc[key] - amount
        return doc


class CspflowLaunchPad(LaunchPad):
    """FireWorks LaunchPad with unique ids on any MongoDB-wire server and stage routing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fw_id_assigner = _PostImageCollection(self.db.fw_id_assigner)
        # Checkout (READY -> RESERVED) must hand each firework to exactly one worker.
        self.fireworks = _PostImageCollection(self.db.fireworks)

    _retry: Retry | None = None

    def _upsert_fws(self, fws: list[Firework], reassign_all: bool = False) -> dict:
        for fw in fws:
            route_firework(fw)
        return super()._upsert_fws(fws, reassign_all=reassign_all)

    def ride_out_outages(self, retry: Retry) -> None:
        """Make every operation on FireWorks' collections wait out database outages.

        Checkout, heartbeat, checkpoint and completion all go through these collections, so a
        worker neither dies nor loses its firework when the database restarts under it. Only
        for workers: interactive commands should fail at once with one line.
        """
        from cspflow.store.outage import RetryingCollection

        self._retry = retry
        for name in ("fireworks", "launches", "workflows", "fw_id_assigner", "offline_runs"):
            setattr(self, name, RetryingCollection(getattr(self, name), retry))

    def checkout_fw(self, *args: Any, **kwargs: Any) -> tuple[Firework | None, int | None]:
        m_fw, launch_id = super().checkout_fw(*args, **kwargs)
        if m_fw is not None and self._retry is not None:
            m_fw.tasks = [_RerunOnOutage(task, self._retry) for task in m_fw.tasks]
        return m_fw, launch_id


class _RerunOnOutage:
    """A Firetask that runs its task again, in the same launch, when a database outage broke it.

    Without this, FireWorks marks the firework FIZZLED although the job itself did nothing
    wrong. Jobs are idempotent (results are keyed by content hash), so a second run is safe;
    the number of reruns is bounded so that a task that always fails this way still fails.
    """

    MAX_RERUNS = 5

    def __init__(self, task: Any, retry: Retry) -> None:
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_retry", retry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._task, name, value)

    def run_task(self, fw_spec: dict) -> Any:
        from cspflow.store.outage import is_outage, log_event

        reruns = 0
        while True:
            try:
                return self._task.run_task(fw_spec)
            except Exception as exc:
                if reruns >= self.MAX_RERUNS or not is_outage(exc):
                    raise
                self._retry.wait_until_up(what=f"task {self._task.fw_name}")
                reruns += 1
                log_event(f"task {self._task.fw_name} was interrupted by the database outage "
                          f"({type(exc).__name__}); running it again (rerun {reruns})")  # fmt: skip


def _job_of(fw: Firework) -> Any:
    for task in fw.tasks:
        job = task.get("job") if hasattr(task, "get") else None
        if job is not None:
            return job
    return None


def job_stage(fw: Firework) -> str | None:
    """Return the cspflow stage of the jobflow job inside a firework, if any."""
    job = _job_of(fw)
    if job is None:
        return None
    metadata = job.get("metadata") if isinstance(job, dict) else getattr(job, "metadata", None)
    return (metadata or {}).get("stage")


def route_firework(fw: Firework) -> None:
    """Set ``spec._category`` from the stage of the job the firework runs (the one routing rule)."""
    stage = job_stage(fw)
    if stage is not None:
        fw.spec["_category"] = category_for(stage)


def get_launchpad(
    settings: CspflowSettings | None = None, *, init: bool = True
) -> CspflowLaunchPad:
    """Return the LaunchPad on the configured (or embedded) database.

    With ``init`` the FireWorks collections are initialised when empty (never reset).
    """
    from cspflow.db import resolve_uri
    from cspflow.settings import get_settings
    from cspflow.store import get_database

    settings = settings or get_settings()
    # one clear line if the database is unreachable; a database of an earlier release is
    # upgraded before a worker deserializes its fireworks (cspflow.store.migrate)
    get_database(settings)
    lp = CspflowLaunchPad(
        host=resolve_uri(settings),
        name=settings.db_name,
        uri_mode=True,
        strm_lvl="WARNING",
        mongoclient_kwargs={"serverSelectionTimeoutMS": settings.db_server_selection_timeout_ms},
    )
    if init and lp.fw_id_assigner.find_one({}) is None:
        lp.fw_id_assigner.insert_one({"next_fw_id": 1, "next_launch_id": 1})
        lp.tuneup()
    return lp


def flow_to_workflow(flow: Flow | Job, store: JobStore | None = None) -> Workflow:
    """Convert a jobflow Flow to a FireWorks Workflow with every firework routed by stage."""
    from jobflow.managers.fireworks import flow_to_workflow as _flow_to_workflow

    # jobflow annotates store as JobStore but defaults it to None (its settings' store)
    wf = _flow_to_workflow(flow, store=store)  # type: ignore[arg-type]
    for fw in wf.fws:
        route_firework(fw)
    return wf


def submit_flow(
    flow: Flow | Job,
    settings: CspflowSettings | None = None,
    metadata: dict | None = None,
) -> dict[int, int]:
    """Add a flow to the LaunchPad (routing applied); return FireWorks' old -> new id map.

    The JobStore is not baked into the workflow: workers use the store of their own
    settings (``JOBFLOW_*`` / ``jobflow.yaml`` or cspflow's), as jobflow's FireWorks manager does.
    """
    lp = get_launchpad(settings)
    wf = flow_to_workflow(flow)
    if metadata:
        wf.metadata.update(metadata)
    return lp.add_wf(wf)
