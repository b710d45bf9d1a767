"""Shared fixtures: a real SecantusDB server for the session, a fresh database per test.

No mocks of the database anywhere: every test that touches MongoDB talks to a real
MongoDB-wire server started through cspflow's own ``cspflow.db.start_server``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cspflow.settings import CspflowSettings, get_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def db_server(tmp_path_factory):
    """A real embedded SecantusDB daemon for the whole test session."""
    from cspflow.db import start_server, stop_server

    data_dir = tmp_path_factory.mktemp("cspflow-data")
    settings = CspflowSettings(data_dir=data_dir, db_uri=None, db_port=0)
    info = start_server(settings, bound_to_caller=True)
    yield info
    stop_server(settings)


@pytest.fixture
def settings(db_server, tmp_path, monkeypatch):
    """Settings pointing at the session server with a database of this test's own."""
    for key in list(os.environ):
        if key.startswith("CSPFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CSPFLOW_CONFIG_FILE", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("CSPFLOW_DATA_DIR", str(db_server.data_dir))
    monkeypatch.setenv("CSPFLOW_DB_URI", db_server.uri)
    monkeypatch.setenv("CSPFLOW_DB_NAME", f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("CSPFLOW_WORK_DIR", str(tmp_path / "runs"))
    get_settings.cache_clear()
    s = get_settings()
    yield s
    get_settings.cache_clear()
    import pymongo

    client = pymongo.MongoClient(db_server.uri, serverSelectionTimeoutMS=2000)
    try:
        client.drop_database(s.db_name)
    except Exception:
        pass
    finally:
        client.close()


@pytest.fixture
def db(settings):
    """The cspflow database (indexes created) for this test."""
    from cspflow.store import get_database

    return get_database(settings)


def _load_local_cluster():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cspflow_local_cluster", REPO / "slurm" / "local_cluster.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-host Slurm cluster (munged + slurmctld + slurmd), partitions cpu and gpu.

    Skipped on a developer machine without root or Debian's slurm-wlm; in CI (CI=true) a
    missing cluster is a failure, not a skip.
    """
    import shutil

    cluster = _load_local_cluster()
    problem = None
    if os.geteuid() != 0:
        problem = "the local Slurm cluster needs root"
    elif shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        problem = "slurm-wlm is not installed (make setup installs it)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("slurm")
    env = cluster.start(root)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    yield root
    cluster.stop(root)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
