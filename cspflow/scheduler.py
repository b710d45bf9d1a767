"""Submission and workers: jobflow Flows on a FireWorks LaunchPad, routed to gpu / cpu workers.

Routing is decided in one place: :func:`cspflow.stages.category_for` maps a job's
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
Launches whose worker died are found and rerun by :mod:`cspflow.reconcile`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fireworks import FWorker, LaunchPad
from pymongo import ReturnDocument

from cspflow.db import _die_with_parent
from cspflow.stages import category_for

if TYPE_CHECKING:
    from fireworks import Firework, Workflow
    from jobflow import Flow, Job, JobStore

    from cspflow.settings import CspflowSettings
    from cspflow.store.outage import Retry

__all__ = [
    "CspflowLaunchPad",
    "get_launchpad",
    "flow_to_workflow",
    "submit_flow",
    "make_fworker",
    "run_worker",
    "FW_CONFIG_DIR",
    "LocalWorkers",
    "rerun_lost_local",
    "submit_campaign",
    "check_models",
    "check_local_engine",
    "take_run_lock",
    "run_campaign_locally",
    "reconcile_lost_runs",
]

FW_CONFIG_DIR = Path(__file__).resolve().parent.parent / "fw_configs"


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


def get_launchpad(settings: CspflowSettings | None = None, *, init: bool = True) -> CspflowLaunchPad:
    """Return the LaunchPad on the configured (or embedded) database.

    With ``init`` the FireWorks collections are initialised when empty (never reset).
    """
    from cspflow.db import resolve_uri
    from cspflow.settings import get_settings
    from cspflow.store import get_client

    settings = settings or get_settings()
    get_client(settings)  # one clear line if the database is unreachable
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

    wf = _flow_to_workflow(flow, store=store)
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


def make_fworker(category: str, name: str | None = None) -> FWorker:
    """Return the FWorker for a node category ("gpu" or "cpu")."""
    if category not in ("gpu", "cpu"):
        from cspflow.errors import CspflowError

        raise CspflowError(f"unknown worker category {category!r}; use --category gpu or --category cpu")
    return FWorker(name=name or f"{socket.gethostname()}-{category}", category=category)


def run_worker(
    category: str,
    settings: CspflowSettings | None = None,
    nlaunches: int = 0,
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
    from cspflow.reconcile import worker_identity
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
    with riding_out(retry), _jobflow_store_env(settings, retry), contextlib.redirect_stdout(sys.stderr):
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


def reconcile_lost_runs(lp: LaunchPad, settings: CspflowSettings, **kwargs: Any) -> Any:
    """Rerun lost runs (dead worker process, ended Slurm job, stale heartbeat); see
    :func:`cspflow.reconcile.reconcile`. Returns its report."""
    from cspflow.reconcile import default_expiration_s, reconcile

    return reconcile(lp, default_expiration_s(settings), **kwargs)


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


class LocalWorkers:
    """A cpu and a gpu rapidfire worker as subprocesses of this process (``campaign run``).

    They poll the LaunchPad every ``sleep`` seconds and are killed with their parent, so a
    killed ``campaign run`` leaves no worker behind; its RUNNING fireworks are rerun on resume.
    """

    def __init__(self, settings: CspflowSettings, categories: tuple[str, ...] = ("cpu", "gpu"),
                 sleep: int = 1, log_dir: Path | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.categories = categories
        self.sleep = sleep
        self.log_dir = Path(log_dir or settings.runs_dir)
        self.procs: dict[str, Any] = {}

    def _env(self) -> dict[str, str]:
        from cspflow.db import resolve_uri

        env = dict(os.environ)
        env["CSPFLOW_DB_URI"] = resolve_uri(self.settings)
        env["CSPFLOW_DB_NAME"] = self.settings.db_name
        env["CSPFLOW_DATA_DIR"] = str(self.settings.data_dir)
        env["CSPFLOW_WORK_DIR"] = str(self.settings.runs_dir)
        # the local workers share this machine's cores: without a cap, torch (gpu worker) and
        # BLAS/OpenMP codes (cpu worker) each spin as many threads as there are cores
        threads = max(1, (os.cpu_count() or 1) // max(1, len(self.categories)))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        return env

    def ensure_running(self) -> None:
        """Start (or restart) one worker per category."""
        import subprocess
        import sys

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for category in self.categories:
            proc = self.procs.get(category)
            if proc is not None and proc.poll() is None:
                continue
            log = open(self.log_dir / f"worker-{category}.log", "ab")  # noqa: SIM115
            self.procs[category] = subprocess.Popen(
                [sys.executable, "-m", "cspflow.cli.main", "worker", "start", "--category",
                 category, "--sleep", str(self.sleep), "--name",
                 f"{socket.gethostname()}-{category}-local"],
                env=self._env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # a killed `campaign run` leaves no worker
            )  # fmt: skip

    def stop(self) -> None:
        """Stop the workers (they are idle when the campaign has ended)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except Exception:
                proc.kill()
        self.procs.clear()


def rerun_lost_local(lp: LaunchPad, fw_ids: list[int], host: str | None = None) -> list[int]:
    """Rerun fireworks left RUNNING or RESERVED by a local runner that died.

    Only call this when no worker of this host can be running them (``campaign run`` holds the
    campaign's run lock). Returns the fw ids rerun.
    """
    host = host or socket.gethostname()
    # A worker killed while it held FireWorks' workflow lock leaves the lock behind; every
    # later update of the workflow would wait for it to expire (5 min), then fail.
    lp.workflows.update_many(
        {"nodes": {"$in": fw_ids}, "locked": {"$exists": True}}, {"$unset": {"locked": ""}}
    )
    rerun = []
    for fw in lp.fireworks.find(
        {"fw_id": {"$in": fw_ids}, "state": {"$in": ["RUNNING", "RESERVED"]}},
        {"fw_id": 1, "launches": 1},
    ):
        launch = lp.launches.find_one({"launch_id": {"$in": fw.get("launches", [])}},
                                      {"host": 1}, sort=[("launch_id", -1)])  # fmt: skip
        if launch is None or launch.get("host") == host:
            lp.rerun_fw(fw["fw_id"])
            rerun.append(fw["fw_id"])
    return rerun


def submit_campaign(spec: Any, settings: CspflowSettings) -> tuple[dict, bool, list[int]]:
    """Register the campaign and add its first iteration to the LaunchPad (once).

    Returns the campaign document, whether it was created now, and the workflow's fw ids.
    """
    from cspflow.campaign import campaign_flow, register_campaign
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow

    db = get_database(settings)
    check_models(spec, db)
    doc, created = register_campaign(db, spec)
    wf = campaign_workflow(db, spec.name)
    if wf is None:
        submit_flow(campaign_flow(spec, int(doc.get("iteration", 0))), settings,
                    metadata={"campaign": spec.name})  # fmt: skip
        wf = campaign_workflow(db, spec.name)
    return doc, created, list(wf["nodes"])


def check_models(spec: Any, db: Any) -> None:
    """Refuse a campaign whose pre-relaxation models cannot be found, before anything is stored.

    Without this a missing or wrong ``mace:PATH`` is only found when the first prerelax job
    runs on a gpu node, after the campaign was registered and generation ran.
    """
    from cspflow.errors import CspflowError
    from cspflow.mlip import parse_model_spec

    for field, model in [("prerelax.model", spec.prerelax.model),
                         *(("prerelax.committee", m) for m in spec.prerelax.committee)]:  # fmt: skip
        try:
            parsed = parse_model_spec(model)
        except CspflowError as exc:
            raise CspflowError(f"{field}: {exc}") from None
        if parsed.kind == "registry" and db.models.find_one({"model_id": parsed.value}) is None:
            raise CspflowError(f"{field}: model {parsed.value!r} is not in the registry; "
                               "list the registered models with `cspflow model list`")  # fmt: skip


def check_local_engine(spec: Any, settings: CspflowSettings) -> None:
    """Refuse to run a campaign locally when this machine cannot run its DFT engine.

    Local workers use this machine's settings, so a missing VASP command, CP2K binary or GPAW
    setup is known before anything is stored; found later, every DFT job would fail and the
    campaign would end without DFT. (``campaign submit`` does not check: cluster workers have
    their own settings, and a failing DFT job names the problem there.)
    """
    from pymatgen.core import Composition

    engine = spec.dft.engine
    elements = sorted({el.symbol for f in spec.formulas() for el in Composition(f).elements})
    if engine == "vasp":
        from cspflow.dft.vasp import check_vasp

        check_vasp(settings.vasp_cmd, elements, spec.dft.potcar_spec)
    elif engine == "cp2k":
        from cspflow.dft.cp2k import check_cp2k_cmd

        check_cp2k_cmd(settings.cp2k_cmd)
    elif engine == "gpaw":
        from cspflow.dft.gpaw import check_gpaw, gpaw_setup_dir

        xc = (spec.dft.gpaw or {}).get("xc", "PBE")
        check_gpaw(elements, gpaw_setup_dir(settings.gpaw_setup_path), xc)


def take_run_lock(db: Any, name: str) -> None:
    """Record this process as the campaign's local runner; refuse when another live one is."""
    from cspflow.db import _pid_alive
    from cspflow.errors import CspflowError

    doc = db.campaigns.find_one({"name": name}, {"runner": 1}) or {}
    runner = doc.get("runner") or {}
    host = socket.gethostname()
    if runner.get("host") == host and runner.get("pid") not in (None, os.getpid()):
        if _pid_alive(int(runner["pid"])):
            raise CspflowError(
                f"campaign {name!r} is already being run by process {runner['pid']} on this "
                "machine; watch it with `cspflow campaign status`"
            )
    db.campaigns.update_one({"name": name}, {"$set": {"runner": {"host": host, "pid": os.getpid()}}})


def run_campaign_locally(
    spec: Any,
    settings: CspflowSettings,
    nodes: list[int],
    *,
    created: bool,
    timeout: float = 0,
    poll_s: float = 1.0,
    on_start: Any = None,
    on_poll: Any = None,
    reconcile_every_s: float = 30.0,
    on_reconcile: Any = None,
) -> dict[str, Any]:
    """Run a submitted campaign to the end with a local cpu and gpu worker (``campaign run``).

    Takes the run lock, reruns fireworks a dead local runner left behind (when resuming), keeps
    the workers alive and polls the workflow every ``poll_s`` seconds until it is COMPLETED or
    FIZZLED. Every ``reconcile_every_s`` seconds lost runs (a worker killed mid-job, an ended
    Slurm job, a stale heartbeat) are rerun. A database outage is waited out like in the
    workers. The workers are stopped and the lock released however the loop ends.

    Parameters
    ----------
    spec
        The campaign's :class:`~cspflow.schemas.campaign.CampaignSpec`.
    settings
        Settings of the database the campaign lives in (the workers get the same).
    nodes
        The workflow's fw ids as returned by :func:`submit_campaign`.
    created
        Whether the campaign was created by this submission (False: resuming).
    timeout
        Give up with a CspflowError after this many seconds (0: never).
    on_start
        ``f(lost_fw_ids)`` called once before the workers start.
    on_poll
        ``f(nodes, elapsed_s)`` called on every poll while the campaign runs.
    reconcile_every_s
        How often lost runs are looked for (0: never).
    on_reconcile
        ``f(report)`` called when a reconciliation reran something.

    Returns
    -------
    dict
        ``state`` (COMPLETED), ``nodes`` and ``elapsed_s``.

    Raises
    ------
    CspflowError
        Another live runner holds the campaign, the timeout passed, or a job failed (FIZZLED).
    """
    import time

    from cspflow.db import resolve_uri
    from cspflow.errors import CspflowError
    from cspflow.store import get_database
    from cspflow.store.outage import retry_for
    from cspflow.store.reports import campaign_workflow

    db = get_database(settings)
    take_run_lock(db, spec.name)
    lp = get_launchpad(settings)
    lost = [] if created else rerun_lost_local(lp, nodes)
    if on_start is not None:
        on_start(lost)
    retry = retry_for(settings, resolve_uri(settings))
    if retry is not None:
        lp.ride_out_outages(retry)

    def call(fn: Any, *args: Any) -> Any:
        return fn(*args) if retry is None else retry.call(fn, *args, what="campaign poll")

    workers = LocalWorkers(settings)
    t0 = last_reconcile = time.monotonic()
    state = "RUNNING"
    try:
        while True:
            wf = call(campaign_workflow, db, spec.name) or {}
            nodes = list(wf.get("nodes", nodes))
            state = wf.get("state", state)
            if state in ("COMPLETED", "FIZZLED"):
                break
            workers.ensure_running()
            elapsed = time.monotonic() - t0
            if on_poll is not None:
                call(on_poll, nodes, elapsed)
            if reconcile_every_s and time.monotonic() - last_reconcile >= reconcile_every_s:
                report = reconcile_lost_runs(lp, settings)
                last_reconcile = time.monotonic()
                if report.rerun and on_reconcile is not None:
                    on_reconcile(report)
            if timeout and elapsed > timeout:
                raise CspflowError(f"campaign {spec.name} not finished after {timeout:.0f} s; "
                                   "run the same command again to resume")  # fmt: skip
            time.sleep(poll_s)
    finally:
        workers.stop()
        call(db.campaigns.update_one, {"name": spec.name}, {"$unset": {"runner": ""}})
    if state == "FIZZLED":
        failed = [
            (fw["fw_id"], fw["name"]) for fw in db.fireworks.find(
                {"fw_id": {"$in": nodes}, "state": "FIZZLED"}, {"fw_id": 1, "name": 1})
        ]  # fmt: skip
        raise CspflowError(
            f"campaign {spec.name} stopped: job(s) failed {failed}; see `lpad get_fws -i ID -d all`"
            " for the error, fix it and run the same command again"
        )
    return {"state": state, "nodes": nodes, "elapsed_s": time.monotonic() - t0}
