"""A MongoDB-wire server with SCRAM authentication works end to end; the password never leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pymongo
import pytest

PASSWORD = "s3cret-Pw-9d1"


def _serve(storage: Path, port: int, *extra: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("secantusd-py")
    proc = subprocess.Popen([str(exe), "--host", "127.0.0.1", "--port", str(port),
                             "--storage-path", str(storage), "--sync-on-commit", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                serverSelectionTimeoutMS=300).admin.command("ping")  # fmt: skip
            return proc
        except pymongo.errors.PyMongoError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture
def auth_uri(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = tmp_path / "authdb"
    proc = _serve(storage, port)
    pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true").admin.command(
        "createUser", "alice", pwd=PASSWORD, roles=[{"role": "root", "db": "admin"}]
    )
    proc.terminate()
    proc.wait(timeout=20)
    time.sleep(1.0)  # WiredTiger releases its lock after the process exits
    proc = _serve(storage, port, "--auth")
    yield f"mongodb://alice:{PASSWORD}@127.0.0.1:{port}/?directConnection=true&authSource=admin"
    proc.terminate()
    proc.wait(timeout=20)


def test_authenticated_database_end_to_end_without_leaking_the_password(auth_uri, tmp_path):
    port = auth_uri.split("@127.0.0.1:")[1].split("/")[0]
    anonymous = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                                    serverSelectionTimeoutMS=2000)  # fmt: skip
    with pytest.raises(pymongo.errors.OperationFailure):
        anonymous.cspflow.fireworks.insert_one({"x": 1})

    env = {k: v for k, v in os.environ.items() if not k.startswith("CSPFLOW_")}
    env.update(CSPFLOW_DB_URI=auth_uri, CSPFLOW_DB_NAME="secure", CSPFLOW_DATA_DIR=str(tmp_path / "d"),
               CSPFLOW_CONFIG_FILE=str(tmp_path / "none.yaml"))  # fmt: skip
    check = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "worker", "check", "--json"],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    assert json.loads(check.stdout)["workflow_state"] == "COMPLETED"
    assert "alice:***@" in check.stdout  # the URI is shown redacted
    assert PASSWORD not in check.stdout + check.stderr

    status = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "db", "status"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0 and PASSWORD not in status.stdout + status.stderr

    wrong = dict(env, CSPFLOW_DB_URI=auth_uri.replace(PASSWORD, "wrong-password"))
    bad = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "worker", "check"], env=wrong,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "refused the credentials" in bad.stderr
    assert "wrong-password" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

    # nothing stored anywhere in the database carries the password
    db = pymongo.MongoClient(auth_uri).secure
    leaks = [(name, doc.get("_id")) for name in db.list_collection_names()
             for doc in db[name].find() if PASSWORD in json.dumps(doc, default=str)]  # fmt: skip
    print(
        f"\ncollections scanned: {len(db.list_collection_names())}, documents with the password: {len(leaks)}"
    )
    assert leaks == []
    logs = " ".join(p.read_text(errors="replace") for p in (tmp_path / "d").rglob("*") if p.is_file()
                    and p.suffix in (".log", ".json", ".error", ".out", ""))  # fmt: skip
    assert PASSWORD not in logs
