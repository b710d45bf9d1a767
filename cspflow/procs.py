"""Process helpers: is a pid alive, in which pid namespace, and children that die with their parent.

Used below and beside the stages: the embedded database server (:mod:`cspflow.db`), lost-run
reconciliation (:mod:`cspflow.scheduler.reconcile`), local workers and dedup locks.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

__all__ = ["pid_namespace", "process_gone"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def pid_namespace() -> str | None:
    """This process's pid namespace: a pid is only meaningful inside the same one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_gone(host: str | None, pid: int | str | None, pidns: str | None) -> bool:
    """True when ``pid`` ran on this host, in this pid namespace, and that process is gone.

    Containers can share a host name but not a pid namespace; there the pid says nothing, and
    neither does a pid of another host: both give False (cannot tell).
    """
    if host != socket.gethostname() or not str(pid or "").isdigit() or pidns != pid_namespace():
        return False
    assert pid is not None  # a digit string or a positive int here
    return not _pid_alive(int(pid))


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
