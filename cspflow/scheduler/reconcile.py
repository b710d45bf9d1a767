"""Lost runs: RUNNING launches whose worker is gone, found and rerun (``cspflow worker reconcile``).

A worker killed with SIGKILL, a node that dies or a Slurm job cancelled or preempted mid-run
leaves its firework RUNNING for ever: nothing in FireWorks moves it on by itself. A launch is
lost, for the first of these reasons that holds:

- ``slurm``: it ran in Slurm job J of this cluster (cspflow workers record ``SLURM_JOB_ID``
  and ``SLURM_CLUSTER_NAME`` in the launch's ``fworker.env``) and J has left squeue (or ended)
  since the launch started; when squeue cannot be asked, nothing is lost on Slurm grounds;
- ``process``: it ran in process P on this host (same pid namespace) and P no longer exists;
- ``heartbeat``: FireWorks' ping has not touched it for ``expiration_s`` (the only test that
  works for any worker, plain ``rlaunch`` included, wherever it ran).

A lost launch is claimed atomically (so two reconcilers never rerun the same firework), its
firework is rerun (its launches are archived, the state goes back to READY) and the launch is
marked FIZZLED with a ``lost`` record saying why. ``cspflow campaign status`` counts these.
Reservations (``qlaunch --reserve``) whose Slurm job ended are cancelled the same way.

:func:`rerun_lost_local` is the other way back for a firework: ``campaign run``, resuming, reruns
what a dead local runner of this host left RUNNING or RESERVED. Both release the workflow lock
the dead worker may hold (:func:`release_workflow_locks`).
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fireworks import LaunchPad

    from cspflow.settings import CspflowSettings

__all__ = [
    "LostRun",
    "ReconcileReport",
    "live_slurm_jobs",
    "slurm_cluster_name",
    "find_lost_runs",
    "rerun_lost_runs",
    "rerun_lost_local",
    "release_workflow_locks",
    "reconcile",
    "reconcile_lost_runs",
    "worker_identity",
    "default_expiration_s",
]

# squeue states of a job that will not run its firework any further
_ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})  # fmt: skip
# a claim older than this was left by a reconciler that died before rerunning the firework
_STALE_CLAIM_S = 120.0
# a reservation gets its Slurm job id only after sbatch returns: give sbatch this long
_RESERVATION_GRACE_S = 300.0


@dataclass(frozen=True)
class LostRun:
    """One lost launch and why it is considered lost."""

    fw_id: int
    launch_id: int
    name: str
    reason: str
    detail: str
    host: str | None = None
    worker: str | None = None


@dataclass
class ReconcileReport:
    """What one reconciliation pass saw and did (``worker reconcile --json`` prints it)."""

    running: int = 0
    lost: list[LostRun] = field(default_factory=list)
    rerun: list[int] = field(default_factory=list)
    reservations_cancelled: list[int] = field(default_factory=list)
    slurm: str = "not checked"
    expiration_s: float = 0.0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_identity() -> dict[str, Any]:
    """What a cspflow worker records in its launches (``fworker.env``) to be found when lost."""
    from cspflow.procs import pid_namespace

    ident: dict[str, Any] = {"cspflow_host": socket.gethostname(), "cspflow_pid": os.getpid(),
                             "cspflow_pidns": pid_namespace()}  # fmt: skip
    if os.environ.get("SLURM_JOB_ID"):
        ident["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        ident["slurm_cluster"] = os.environ.get("SLURM_CLUSTER_NAME")
    return ident


def default_expiration_s(settings: CspflowSettings | None = None) -> float:
    """Heartbeat expiration: the setting, else FireWorks' RUN_EXPIRATION_SECS (4 pings)."""
    if settings is not None and settings.lost_run_expiration_s:
        return float(settings.lost_run_expiration_s)
    from fireworks.fw_config import RUN_EXPIRATION_SECS

    return float(RUN_EXPIRATION_SECS)


def _run(*cmd: str) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_cluster_name() -> str | None:
    """The ClusterName of the Slurm that squeue answers for (None when unknown)."""
    out = _run("scontrol", "show", "config") or ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip() or None
    return None


def live_slurm_jobs() -> set[str] | None:
    """Ids of the jobs squeue still lists as active; None when squeue is absent or fails.

    None means "cannot tell": no launch is ever declared lost on Slurm grounds then.
    """
    out = _run("squeue", "-h", "-o", "%i %T")
    if out is None:
        return None
    alive = set()
    for line in out.splitlines():
        job_id, _, state = line.strip().partition(" ")
        if job_id and state.strip().upper() not in _ENDED:
            alive.add(job_id)
    return alive


def _as_time(value: Any) -> datetime.datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _history(launch: dict, state: str) -> dict:
    entries = [h for h in launch.get("state_history") or [] if h.get("state") == state]
    return entries[-1] if entries else {}


def _pid_gone(env: dict) -> bool:
    """True when the worker ran on this host, in this pid namespace, and its process is gone."""
    from cspflow.procs import process_gone

    return process_gone(env.get("cspflow_host"), env.get("cspflow_pid"), env.get("cspflow_pidns"))


@dataclass(frozen=True)
class _Slurm:
    """One squeue answer: the live job ids (None: cannot tell), the cluster, when it was asked."""

    live: set[str] | None
    cluster: str | None
    asked_at: datetime.datetime


def _why_lost(launch: dict, slurm: _Slurm, now: datetime.datetime, expiration_s: float,
              pids: bool) -> tuple[str, str] | None:  # fmt: skip
    env = (launch.get("fworker") or {}).get("env") or {}
    entry = _history(launch, "RUNNING")
    started = _as_time(entry.get("created_on"))
    job = env.get("slurm_job_id")
    # only a launch of this cluster that started before squeue was asked can be judged by it
    same_cluster = not env.get("slurm_cluster") or env["slurm_cluster"] == slurm.cluster
    if (job and same_cluster and slurm.live is not None and started is not None
            and started < slurm.asked_at and str(job) not in slurm.live):  # fmt: skip
        return "slurm", f"Slurm job {job} is no longer in squeue"
    if pids and _pid_gone(env):
        return "process", f"worker process {env['cspflow_pid']} on {env['cspflow_host']} is gone"
    beat = _as_time(entry.get("updated_on")) or started
    if beat is not None and (now - beat).total_seconds() > expiration_s:
        return (
            "heartbeat",
            f"no heartbeat for {(now - beat).total_seconds():.0f} s (> {expiration_s:g} s)",
        )
    return None


def _slurm_snapshot(check: bool) -> tuple[_Slurm, str]:
    """squeue's answer (taken before the launches are read) and a status word for the report."""
    live = live_slurm_jobs() if check else None
    cluster = slurm_cluster_name() if live is not None else None
    status = (
        "not checked" if not check else ("squeue ok" if live is not None else "squeue unavailable")
    )
    return _Slurm(live, cluster, datetime.datetime.now(datetime.UTC)), status


def find_lost_runs(lp: LaunchPad, expiration_s: float, *, slurm: bool = True,
                   pids: bool = True) -> tuple[list[LostRun], int, str]:  # fmt: skip
    """Return the lost RUNNING launches of current fireworks, the number checked, and the
    Slurm check's status ("squeue ok", "squeue unavailable" or "not checked")."""
    snap, status = _slurm_snapshot(slurm)
    lost, running = _find(lp, expiration_s, snap, pids)
    return lost, running, status


def _find(
    lp: LaunchPad, expiration_s: float, snap: _Slurm, pids: bool
) -> tuple[list[LostRun], int]:
    launches = list(lp.launches.find(
        {"state": "RUNNING"},
        {"launch_id": 1, "fw_id": 1, "fworker": 1, "host": 1, "state_history": 1, "lost": 1},
    ))  # fmt: skip
    current = {
        lid: fw
        for fw in lp.fireworks.find(
            {
                "launches": {"$in": [ln["launch_id"] for ln in launches]},
                "state": {"$in": ["RUNNING", "RESERVED"]},
            },
            {"fw_id": 1, "name": 1, "launches": 1},
        )  # fmt: skip
        for lid in fw.get("launches", [])
    }
    now = datetime.datetime.now(datetime.UTC)
    lost = []
    for launch in launches:
        fw = current.get(launch["launch_id"])
        if fw is None:  # finished, or already rerun (the launch is archived)
            continue
        why = _why_lost(launch, snap, now, expiration_s, pids)
        if why is None:
            continue
        lost.append(LostRun(fw_id=fw["fw_id"], launch_id=launch["launch_id"], name=fw.get("name", ""),
                            reason=why[0], detail=why[1], host=launch.get("host"),
                            worker=(launch.get("fworker") or {}).get("name")))  # fmt: skip
    return lost, len(launches)


def _claim(lp: LaunchPad, run: LostRun) -> bool:
    """Mark the launch as lost unless another reconciler (or its own worker) got there first."""
    now = datetime.datetime.now(datetime.UTC)
    stale = now - datetime.timedelta(seconds=_STALE_CLAIM_S)
    claimed = lp.launches.find_one_and_update(
        {"launch_id": run.launch_id, "state": "RUNNING",
         "$or": [{"lost": {"$exists": False}}, {"lost.detected_at": {"$lt": stale}}]},
        {"$set": {"lost": {"reason": run.reason, "detail": run.detail, "detected_at": now,
                           "by": f"{socket.gethostname()}:{os.getpid()}"}}},
    )  # fmt: skip
    return claimed is not None


def release_workflow_locks(lp: LaunchPad, fw_ids: list[int]) -> None:
    """Drop FireWorks' workflow lock on the workflows of ``fw_ids``.

    A worker killed while it held FireWorks' workflow lock leaves the lock behind; every
    later update of the workflow (a rerun included) would wait for it to expire (5 min), then fail.
    """
    lp.workflows.update_many(
        {"nodes": {"$in": fw_ids}, "locked": {"$exists": True}}, {"$unset": {"locked": ""}}
    )


def rerun_lost_runs(lp: LaunchPad, lost: list[LostRun]) -> list[int]:
    """Rerun the fireworks of lost launches; return the fw ids this process reran."""
    rerun = []
    for run in lost:
        if not _claim(lp, run):
            continue
        # release a workflow lock the dead worker may hold, or the rerun would wait 5 min for it
        release_workflow_locks(lp, [run.fw_id])
        lp.rerun_fw(run.fw_id)
        now = datetime.datetime.now(datetime.UTC).isoformat()
        lp.launches.update_one(
            {"launch_id": run.launch_id, "state": "RUNNING"},
            {"$set": {"state": "FIZZLED"},
             "$push": {"state_history": {"state": "FIZZLED", "created_on": now,
                                         "reason": f"lost: {run.detail}"}}},
        )  # fmt: skip
        rerun.append(run.fw_id)
    return rerun


def _ended_reservations(
    lp: LaunchPad, live: set[str] | None, snapshot: datetime.datetime
) -> list[int]:
    """Launch ids reserved by a ``qlaunch --reserve`` Slurm job that has ended."""
    if live is None:
        return []
    cutoff = snapshot - datetime.timedelta(seconds=_RESERVATION_GRACE_S)
    ended = []
    for launch in lp.launches.find({"state": "RESERVED"}, {"launch_id": 1, "state_history": 1}):
        entry = _history(launch, "RESERVED")
        job, since = entry.get("reservation_id"), _as_time(entry.get("created_on"))
        if job and since is not None and since < cutoff and str(job) not in live:
            ended.append(launch["launch_id"])
    return ended


def reconcile(lp: LaunchPad, expiration_s: float, *, slurm: bool = True, pids: bool = True,
              dry_run: bool = False) -> ReconcileReport:  # fmt: skip
    """Find lost runs (Slurm, process, heartbeat) and rerun them; return what was done.

    Safe to call from several places at once: each lost launch is claimed by one caller.
    """
    snap, status = _slurm_snapshot(slurm)
    lost, running = _find(lp, expiration_s, snap, pids)
    report = ReconcileReport(running=running, lost=lost, slurm=status, expiration_s=expiration_s,
                             dry_run=dry_run)  # fmt: skip
    if dry_run:
        return report
    report.rerun = rerun_lost_runs(lp, lost)
    for launch_id in _ended_reservations(lp, snap.live, snap.asked_at):
        lp.cancel_reservation(launch_id)
        report.reservations_cancelled.append(launch_id)
    return report


def reconcile_lost_runs(lp: LaunchPad, settings: CspflowSettings, **kwargs: Any) -> Any:
    """Rerun lost runs (dead worker process, ended Slurm job, stale heartbeat); see
    :func:`reconcile`. Returns its report."""
    return reconcile(lp, default_expiration_s(settings), **kwargs)


def rerun_lost_local(lp: LaunchPad, fw_ids: list[int], host: str | None = None) -> list[int]:
    """Rerun fireworks left RUNNING or RESERVED by a local runner that died.

    Only call this when no worker of this host can be running them (``campaign run`` holds the
    campaign's run lock). Returns the fw ids rerun.
    """
    host = host or socket.gethostname()
    release_workflow_locks(lp, fw_ids)
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
