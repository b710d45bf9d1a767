"""Run the ``cspflow`` command line in a subprocess against a test's database."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def cli_env(settings: Any, **extra: str) -> dict[str, str]:
    """This process's environment pointed at ``settings``' database and run directory."""
    return dict(os.environ, CSPFLOW_DB_URI=settings.db_uri.get_secret_value(),
                CSPFLOW_DB_NAME=settings.db_name, CSPFLOW_WORK_DIR=str(settings.runs_dir),
                **extra)  # fmt: skip


def run_cli(*args: str, env: dict[str, str], timeout: float = 1500) -> subprocess.CompletedProcess:
    """``python -m cspflow.cli.main ARGS``; fails the test with the tail of stderr unless exit 0."""
    proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
