#!/usr/bin/env python3
"""A real single-host Slurm cluster (Debian slurm-wlm + munge) in a directory, for tests.

    python slurm/local_cluster.py start DIR    # prints `export SLURM_CONF=...`
    python slurm/local_cluster.py stop DIR

munged, slurmctld and slurmd run as daemons with every file (key, sockets, state, logs) under
DIR; partitions ``cpu`` (default) and ``gpu`` share this node, which advertises one fake GPU
(a character device made with mknod) so ``--gres=gpu:1`` jobs schedule and see
``CUDA_VISIBLE_DEVICES``. Needs root (slurmd runs jobs as their submitting user).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SBIN = Path("/usr/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(root: Path, host: str, cpus: int, mem_mb: int) -> Path:
    fake_gpu = root / "dev" / "nvidia0"
    fake_gpu.parent.mkdir(parents=True, exist_ok=True)
    if not fake_gpu.exists():
        os.mknod(fake_gpu, 0o666 | 0o020000, os.makedev(195, 0))  # char device like /dev/nvidia0
    for sub in ("state", "spool", "log", "run", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o755)
    ctl_port, d_port = _free_port(), _free_port()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=cspflow-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
GresTypes=gpu
MinJobAge=300
SchedulerParameters=sched_interval=1
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
    )
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File={fake_gpu}\n")
    (root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")
    return conf


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def start(root: Path, timeout: float = 60.0) -> dict[str, str]:
    """Start munged, slurmctld and slurmd under ``root``; return the environment to use them."""
    root = root.resolve()
    for exe in ("munged", "slurmctld", "slurmd"):
        if not (SBIN / exe).exists() and shutil.which(exe) is None:
            raise RuntimeError(f"{exe} not found: install Debian's slurm-wlm and munge (make setup)")
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem_mb = 1024
    conf = _write_config(root, host, cpus, mem_mb)
    env = dict(os.environ, SLURM_CONF=str(conf))
    key = root / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    _run(
        [str(SBIN / "munged"), "--force", f"--socket={root}/munge/munge.socket.2",
         f"--key-file={key}", f"--pid-file={root}/run/munged.pid",
         f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/munge.seed"],
        env,
    )  # fmt: skip
    _run([str(SBIN / "slurmctld"), "-f", str(conf)], env)
    _run([str(SBIN / "slurmd"), "-f", str(conf), "-N", host], env)
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True
        )
        state = out.stdout.strip()
        if out.returncode == 0 and state and all(s.startswith(("idle", "mix")) for s in state.split()):
            return {"SLURM_CONF": str(conf)}
        time.sleep(0.3)
    logs = (root / "log" / "slurmctld.log").read_text(errors="replace")[-2000:]
    stop(root)
    raise RuntimeError(f"Slurm node not idle after {timeout:.0f} s (state {state!r}):\n{logs}")


def stop(root: Path) -> None:
    """Stop the daemons started by :func:`start` (job processes included)."""
    root = root.resolve()
    for name in ("slurmd-*.pid", "slurmctld.pid", "munged.pid"):
        for pid_file in (root / "run").glob(name):
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
            except (ValueError, ProcessLookupError, OSError):
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[2])
    root.mkdir(parents=True, exist_ok=True)
    if argv[1] == "start":
        env = start(root)
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    else:
        stop(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
