"""Running a campaign on this machine (``campaign run``) and submitting one (``campaign submit``).

:func:`submit_campaign` registers a campaign and adds its first iteration to the LaunchPad;
:func:`run_campaign_locally` then runs it to the end with a cpu and a gpu worker started as
subprocesses (:class:`LocalWorkers`), holding the campaign's run lock and rerunning lost runs
(:mod:`cspflow.scheduler.reconcile`) as it polls. The checks refuse a campaign whose models or
DFT engine cannot be found before anything is stored.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cspflow.procs import _die_with_parent
from cspflow.scheduler.launchpad import get_launchpad, submit_flow
from cspflow.scheduler.reconcile import reconcile_lost_runs, rerun_lost_local
from cspflow.scheduler.workers import worker_command, worker_env

if TYPE_CHECKING:
    from cspflow.settings import CspflowSettings

__all__ = [
    "LocalWorkers",
    "local_gpu_workers",
    "submit_campaign",
    "check_models",
    "check_local_engine",
    "take_run_lock",
    "run_campaign_locally",
]


#: most gpu workers ``campaign run`` starts on a machine whose MLIP runs on the CPU
MAX_CPU_GPU_WORKERS = 8


def _cuda_visible() -> bool:
    """Whether this machine shows a CUDA device, without importing torch (the NVIDIA driver's
    control node; ``CUDA_VISIBLE_DEVICES`` set empty or -1 hides it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists()


def local_gpu_workers(settings: CspflowSettings) -> int:
    """How many gpu-category workers ``campaign run`` starts here.

    ``settings.local_gpu_workers`` when set; else one where the MLIP runs on a CUDA device,
    and one per core (at most :data:`MAX_CPU_GPU_WORKERS`) where it runs on the CPU: there one
    worker relaxes on one core, so an iteration's prerelax jobs run side by side instead of
    leaving the other cores idle (docs/prerelax.md).
    """
    if settings.local_gpu_workers is not None:
        return settings.local_gpu_workers
    on_gpu = settings.device == "cuda" or (settings.device == "auto" and _cuda_visible())
    return 1 if on_gpu else max(1, min(os.cpu_count() or 1, MAX_CPU_GPU_WORKERS))


class LocalWorkers:
    """One cpu and one or more gpu rapidfire workers as subprocesses (``campaign run``).

    One cpu worker and ``gpu_workers`` gpu workers (default :func:`local_gpu_workers`). They
    poll the LaunchPad every ``sleep`` seconds and are killed with their parent, so a killed
    ``campaign run`` leaves no worker behind; its RUNNING fireworks are rerun on resume.
    """

    def __init__(self, settings: CspflowSettings, categories: tuple[str, ...] = ("cpu", "gpu"),
                 sleep: int = 1, log_dir: Path | None = None,
                 gpu_workers: int | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.categories = categories
        self.sleep = sleep
        self.log_dir = Path(log_dir or settings.runs_dir)
        self.gpu_workers = gpu_workers or local_gpu_workers(settings)
        self.procs: dict[str, Any] = {}

    def _slots(self) -> list[tuple[str, str]]:
        """(category, slot name) of every worker: ``cpu``, ``gpu``, ``gpu1``, ..."""
        slots = []
        for category in self.categories:
            n = self.gpu_workers if category == "gpu" else 1
            slots += [(category, category if k == 0 else f"{category}{k}") for k in range(n)]
        return slots

    def _env(self, category: str) -> dict[str, str]:
        env = worker_env(self.settings)
        # the local workers share this machine's cores: without a cap, torch (gpu workers) and
        # BLAS/OpenMP codes (cpu worker) each spin as many threads as there are cores. The cpu
        # worker and a single gpu worker get half the cores each; several gpu workers (MLIP on
        # the CPU) share them, one thread each on a small machine
        cores = os.cpu_count() or 1
        n = self.gpu_workers if category == "gpu" else 1
        threads = max(1, cores // max(1, len(self.categories) - 1 + n))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        return env

    def ensure_running(self) -> None:
        """Start (or restart) every worker."""
        import subprocess

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for category, slot in self._slots():
            proc = self.procs.get(slot)
            if proc is not None and proc.poll() is None:
                continue
            log = open(self.log_dir / f"worker-{slot}.log", "ab")  # noqa: SIM115
            self.procs[slot] = subprocess.Popen(
                worker_command(category, sleep=self.sleep,
                               name=f"{socket.gethostname()}-{slot}-local"),
                env=self._env(category), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
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


def submit_campaign(spec: Any, settings: CspflowSettings) -> tuple[dict, bool, list[int]]:
    """Register the campaign and add its first iteration to the LaunchPad (once).

    Returns the campaign document, whether it was created now, and the workflow's fw ids.
    """
    from cspflow.campaign.loop import campaign_flow
    from cspflow.campaign.state import register_campaign
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
    assert wf is not None  # submitted just above
    return doc, created, list(wf["nodes"])


def check_models(spec: Any, db: Any) -> None:
    """Refuse a campaign whose pre-relaxation models (learn.foundation_model, the learning
    replay file) cannot be found or read, before anything is stored.

    Without this a missing or wrong ``mace:PATH`` is only found when the first prerelax job
    runs on a gpu node, after the campaign was registered and generation ran.
    """
    from cspflow.errors import CspflowError
    from cspflow.mlip import parse_model_spec

    checks = [("prerelax.model", spec.prerelax.model),
              *(("prerelax.committee", m) for m in spec.prerelax.committee)]  # fmt: skip
    learn = spec.learn
    fm = learn.foundation_model
    if learn.enabled and fm not in (None, "current", "chgnet"):
        # a bare path is a file of learn.model's architecture
        checks.append(("learn.foundation_model", fm if ":" in fm else f"{learn.model}:{fm}"))
    for field, model in checks:
        try:
            parsed = parse_model_spec(model)
        except CspflowError as exc:
            raise CspflowError(f"{field}: {exc}") from None
        if parsed.kind == "registry" and db.models.find_one({"model_id": parsed.value}) is None:
            raise CspflowError(f"{field}: model {parsed.value!r} is not in the registry; "
                               "list the registered models with `cspflow model list`")  # fmt: skip
        if field == "learn.foundation_model" and parsed.kind == "registry":
            kind = (db.models.find_one({"model_id": parsed.value}) or {}).get("kind") or "mace"
            if kind != learn.model:
                raise CspflowError(f"{field}: registry model {parsed.value} is a {kind} model but "
                                   f"learn.model is {learn.model}")  # fmt: skip
    if spec.learn.enabled and spec.learn.replay_file:
        # found only by the first learning round otherwise, after iterations of DFT
        from cspflow.learn.replay import check_replay_file

        try:
            check_replay_file(spec.learn.replay_file)
        except CspflowError as exc:
            raise CspflowError(f"learn.replay_file: {exc}") from None


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
    from cspflow.errors import CspflowError
    from cspflow.procs import _pid_alive

    doc = db.campaigns.find_one({"name": name}, {"runner": 1}) or {}
    runner = doc.get("runner") or {}
    host = socket.gethostname()
    if runner.get("host") == host and runner.get("pid") not in (None, os.getpid()):
        if _pid_alive(int(runner["pid"])):
            raise CspflowError(
                f"campaign {name!r} is already being run by process {runner['pid']} on this "
                "machine; watch it with `cspflow campaign status`"
            )
    db.campaigns.update_one(
        {"name": name}, {"$set": {"runner": {"host": host, "pid": os.getpid()}}}
    )


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
    gpu_workers: int | None = None,
) -> dict[str, Any]:
    """Run a submitted campaign to the end with local cpu and gpu workers (``campaign run``).

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
    gpu_workers
        How many gpu workers (None: :func:`local_gpu_workers`).
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

    workers = LocalWorkers(settings, gpu_workers=gpu_workers)
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
