"""The embedded database through the real CLI: start/stop/status, persistence, bad input."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest


def cli(args, data_dir, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSPFLOW_")}
    env.update(
        CSPFLOW_DATA_DIR=str(data_dir),
        CSPFLOW_DB_PORT="0",
        CSPFLOW_CONFIG_FILE=str(Path(data_dir) / "absent.yaml"),
        CSPFLOW_DB_SERVER_SELECTION_TIMEOUT_MS="1500",
    )
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "cspflow.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def one_line_error(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "WiredTiger.lock"
    }


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    yield d
    cli(["db", "stop"], d)


def test_start_ping_stop_start_keeps_data_and_survives_kill9(data_dir):
    started = cli(["db", "start"], data_dir)
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip()
    assert uri.startswith("mongodb://127.0.0.1:")
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000)
    assert client.admin.command("ping")["ok"] == 1.0
    client.keep.things.insert_one({"k": "before-stop"})
    client.close()

    # idempotent: a second start reuses the running server
    assert cli(["db", "start"], data_dir).stdout.strip() == uri
    status = cli(["db", "status"], data_dir)
    assert status.returncode == 0 and uri in status.stdout

    assert "stopped" in cli(["db", "stop"], data_dir).stdout
    assert cli(["db", "status"], data_dir).returncode == 1
    uri2 = cli(["db", "start"], data_dir).stdout.strip()
    assert uri2 == uri  # same port across restarts, so configs stay valid
    client = pymongo.MongoClient(uri2, serverSelectionTimeoutMS=3000)
    assert client.keep.things.find_one({"k": "before-stop"}) is not None
    client.keep.things.insert_one({"k": "before-kill"})
    client.close()

    pid = int((data_dir / "secantusd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert cli(["db", "status"], data_dir).returncode == 1
    restarted = cli(["db", "start"], data_dir)
    assert restarted.returncode == 0, restarted.stderr
    client = pymongo.MongoClient(restarted.stdout.strip(), serverSelectionTimeoutMS=3000)
    found = {d["k"] for d in client.keep.things.find()}
    client.close()
    print(f"\nafter kill -9: {len(found)} of 2 documents present")
    assert found == {"before-stop", "before-kill"}


def test_server_listens_on_loopback_only(data_dir):
    uri = cli(["db", "start"], data_dir).stdout.strip()
    port = int(uri.split(":")[2].split("/")[0])
    # the kernel's own table of listening sockets (state 0A), addresses as little-endian hex
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                listening.append(addr)
    assert listening and all(a == "0100007F" for a in listening), listening  # 127.0.0.1 only
    # a non-loopback host is refused before anything starts
    err = one_line_error(cli(["db", "start"], data_dir.parent / "other", CSPFLOW_DB_HOST="0.0.0.0"))
    assert "loopback" in err


def test_port_in_use_is_one_line_and_nothing_started(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli(["db", "start"], tmp_path / "d", CSPFLOW_DB_PORT=str(port))
    err = one_line_error(proc)
    assert f"port {port}" in err and "CSPFLOW_DB_PORT" in err
    assert not (tmp_path / "d" / "secantusd.pid").exists()


def test_corrupt_data_dir_is_one_line_and_nothing_deleted(tmp_path):
    data = tmp_path / "corrupt"
    (data / "db").mkdir(parents=True)
    (data / "db" / "WiredTiger.wt").write_bytes(os.urandom(20000))
    (data / "db" / "WiredTiger.turtle").write_text("garbage\n")
    (data / "db" / "WiredTiger").write_text("WiredTiger\n")
    before = tree_digest(data / "db")
    err = one_line_error(cli(["db", "start"], data))
    assert "could not open its data directory" in err and "nothing was deleted" in err
    assert tree_digest(data / "db") == before


def test_unwritable_data_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    err = one_line_error(cli(["db", "start"], blocker / "sub"))
    assert "CSPFLOW_DATA_DIR" in err


def test_unreachable_uri_is_one_line_without_password(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"mongodb://alice:s3cret-pw@127.0.0.1:{port}/?authSource=admin"
    for args in (["db", "status"], ["demo"]):
        proc = cli(args, tmp_path / "d", CSPFLOW_DB_URI=uri)
        err = one_line_error(proc)
        assert "cannot reach the database" in err
        assert "s3cret-pw" not in proc.stderr + proc.stdout
        assert "alice:***@" in err
