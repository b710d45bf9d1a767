"""qlaunch set-up for tests on the single-host Slurm cluster (slurm/local_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from cspflow.settings import CspflowSettings

__all__ = ["BIN", "qlaunch_configs", "qlaunch_env", "qlaunch", "squeue_ids"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def qlaunch_configs(settings: CspflowSettings, tmp_path: Path) -> dict:
    """Write my_launchpad.yaml and per-category my_fworker / my_qadapter files from fw_configs/.

    Returns ``{"launchpad": path, "cpu": (fworker, qadapter), "gpu": (fworker, qadapter)}``.
    """
    assert settings.db_uri is not None  # the Slurm tests run against a configured server
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text(yaml.safe_dump({"host": settings.db_uri.get_secret_value(), "uri_mode": True,
                                  "name": settings.db_name, "strm_lvl": "ERROR"}))  # fmt: skip
    files: dict = {"launchpad": lp}
    for cat in ("cpu", "gpu"):
        fworker = yaml.safe_load((REPO / "fw_configs" / f"my_fworker_{cat}.yaml").read_text())
        (tmp_path / f"my_fworker_{cat}.yaml").write_text(yaml.safe_dump(fworker))
        qa = yaml.safe_load((REPO / "fw_configs" / f"my_qadapter_{cat}.yaml").read_text())
        qa["_fw_template_file"] = str(REPO / qa["_fw_template_file"])
        qa["walltime"] = "00:10:00"
        # a login shell (#!/bin/bash -l) resets PATH: activate the environment as users do
        qa["pre_rocket"] = f"source {BIN / 'activate'}"
        (tmp_path / f"my_qadapter_{cat}.yaml").write_text(yaml.safe_dump(qa))
        files[cat] = (tmp_path / f"my_fworker_{cat}.yaml", tmp_path / f"my_qadapter_{cat}.yaml")
    return files


def qlaunch_env(settings: CspflowSettings, work_dir: Path) -> dict[str, str]:
    """The environment qlaunch (and through sbatch, the job) runs with."""
    assert settings.db_uri is not None  # the Slurm tests run against a configured server
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        CSPFLOW_DB_URI=settings.db_uri.get_secret_value(),
        CSPFLOW_DB_NAME=settings.db_name,
        CSPFLOW_DATA_DIR=str(settings.data_dir),
        CSPFLOW_WORK_DIR=str(work_dir),
    )
    return env


def qlaunch(files: dict, category: str, launch_dir: Path, env: dict[str, str], *args: str,
            mode: str = "singleshot") -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``qlaunch ... MODE ARGS`` for one category in ``launch_dir``."""
    fworker, qadapter = files[category]
    launch_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(BIN / "qlaunch"), "-l", str(files["launchpad"]), "-w", str(fworker), "-q", str(qadapter),
         "--launch_dir", str(launch_dir), mode, *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=launch_dir,
    )  # fmt: skip


def squeue_ids() -> set[str]:
    """Ids of the jobs squeue lists now."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60)
    return {ln.strip() for ln in out.stdout.splitlines() if ln.strip()}
