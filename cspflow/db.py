"""The embedded MongoDB-wire database: SecantusDB run as a daemon on loopback.

``cspflow db start`` launches ``secantusd-py`` with a data directory, writes ``secantusd.pid``
and ``secantusd.uri`` beside it, and prints the URI. When no ``CSPFLOW_DB_URI`` is configured,
:func:`resolve_uri` starts (or reuses) this server, so every command works out of the box.
Nothing here ever deletes data: a start that fails leaves the data directory as it was.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cspflow.errors import CspflowError
from cspflow.procs import _die_with_parent, _pid_alive
from cspflow.settings import CspflowSettings, get_settings

__all__ = [
    "ServerInfo",
    "start_server",
    "stop_server",
    "server_status",
    "resolve_uri",
    "redact_uri",
    "ping",
]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded server."""

    pid: int
    uri: str
    data_dir: Path

    @property
    def storage_path(self) -> Path:
        return self.data_dir / "db"


def _paths(data_dir: Path) -> tuple[Path, Path, Path, Path]:
    return (
        data_dir / "db",
        data_dir / "secantusd.pid",
        data_dir / "secantusd.uri",
        data_dir / "secantusd.log",
    )


def redact_uri(uri: str) -> str:
    """Return ``uri`` with any password replaced by ``***`` (safe for logs and errors)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def ping(uri: str, timeout_ms: int = 2000) -> bool:
    """Return True when a MongoDB-wire server answers ``ping`` at ``uri``."""
    import pymongo

    client: pymongo.MongoClient = pymongo.MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _previous_port(data_dir: Path, host: str) -> int | None:
    """Reuse the last port of this data dir when free, so the URI stays the same across restarts."""
    try:
        port = int((data_dir / "secantusd.port").read_text().strip())
    except (OSError, ValueError):
        return None
    return port if _port_free(host, port) else None


def server_status(settings: CspflowSettings | None = None) -> ServerInfo | None:
    """Return the running embedded server for the configured data dir, or None."""
    settings = settings or get_settings()
    data_dir = Path(settings.data_dir).expanduser()
    _, pid_file, uri_file, _ = _paths(data_dir)
    if not (pid_file.is_file() and uri_file.is_file()):
        return None
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        return None
    uri = uri_file.read_text().strip()
    if not _pid_alive(pid) or not ping(uri, timeout_ms=1500):
        return None
    return ServerInfo(pid=pid, uri=uri, data_dir=data_dir)


def _check_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".cspflow-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CspflowError(
            f"cannot write to the data directory {data_dir} ({exc.strerror}); "
            "set CSPFLOW_DATA_DIR to a writable directory"
        ) from None


def start_server(
    settings: CspflowSettings | None = None, timeout: float = 30.0, bound_to_caller: bool = False
) -> ServerInfo:
    """Start the embedded server as a daemon (or return the one already running).

    With ``bound_to_caller`` (test sessions) the server is killed when the calling process dies,
    so an interrupted test run leaves no server behind.

    Raises
    ------
    CspflowError
        When the host is not loopback, the port is taken, the data directory is not writable,
        or the server exits during start-up (for example on a corrupt data directory).
    """
    settings = settings or get_settings()
    running = server_status(settings)
    if running is not None:
        return running
    host = settings.db_host
    if host not in LOOPBACK:
        raise CspflowError(
            f"the embedded database only listens on loopback, not {host!r}; "
            "set CSPFLOW_DB_HOST=127.0.0.1 or point CSPFLOW_DB_URI at a real MongoDB"
        )
    data_dir = Path(settings.data_dir).expanduser()
    _check_data_dir(data_dir)
    storage, pid_file, uri_file, log_file = _paths(data_dir)
    port = settings.db_port or _previous_port(data_dir, host) or _free_port(host)
    if not _port_free(host, port):
        raise CspflowError(
            f"port {port} on {host} is already in use by another program; "
            "set CSPFLOW_DB_PORT to a free port (or 0 to pick one)"
        )
    exe = Path(sys.executable).with_name("secantusd-py")
    cmd = [str(exe) if exe.exists() else "secantusd-py"]
    cmd += [
        "--host", host,
        "--port", str(port),
        "--storage-path", str(storage),
        "--log-level", "WARNING",
        "--oplog-max-entries", str(settings.db_oplog_max_entries),
        "--oplog-retention-seconds", str(settings.db_oplog_retention_seconds),
    ]  # fmt: skip
    if settings.db_sync_on_commit:
        cmd.append("--sync-on-commit")
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data_dir,
            preexec_fn=_die_with_parent if bound_to_caller else None,
        )
    uri = f"mongodb://{host}:{port}/?directConnection=true"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _last_error_line(log_file)
            raise CspflowError(
                f"the embedded database could not open its data directory {storage}: {tail} "
                f"(full log: {log_file}; nothing was deleted)"
            )
        if ping(uri, timeout_ms=500):
            pid_file.write_text(str(proc.pid))
            (data_dir / "secantusd.port").write_text(str(port))
            uri_file.write_text(uri)
            return ServerInfo(pid=proc.pid, uri=uri, data_dir=data_dir)
        time.sleep(0.1)
    proc.terminate()
    raise CspflowError(
        f"the embedded database did not answer within {timeout:.0f} s (log: {log_file})"
    )


def _last_error_line(log_file: Path) -> str:
    try:
        lines = [
            ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()
        ]
    except OSError:
        return "server exited"
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[-300:]
    return lines[-1][-300:] if lines else "server exited"


def stop_server(settings: CspflowSettings | None = None, timeout: float = 15.0) -> bool:
    """Stop the embedded server cleanly; return False when none was running."""
    settings = settings or get_settings()
    data_dir = Path(settings.data_dir).expanduser()
    _, pid_file, uri_file, _ = _paths(data_dir)
    if not pid_file.is_file():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid = -1
    stopped = False
    if pid > 0 and _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped = True
    pid_file.unlink(missing_ok=True)
    uri_file.unlink(missing_ok=True)
    return stopped


def resolve_uri(settings: CspflowSettings | None = None, start: bool = True) -> str:
    """Return the database URI: the configured one, else the embedded server's (started if needed)."""
    settings = settings or get_settings()
    if settings.db_uri is not None:
        return settings.db_uri.get_secret_value()
    info = server_status(settings)
    if info is None:
        if not start:
            raise CspflowError(
                "the embedded database is not running; start it with `cspflow db start`"
            )
        info = start_server(settings)
    return info.uri
