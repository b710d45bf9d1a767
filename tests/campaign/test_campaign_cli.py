"""campaign CLI bad input: every spec error listed at once, nothing submitted."""

from __future__ import annotations

import os
import subprocess
import sys


def test_spec_errors_listed_and_nothing_submitted(settings, db, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\ncompositions: [NaXx]\nmax_atoms: 8\ngenerate: {per_iteration: 10, colour: red}\n"
        "dft: {engine: gpaw, budget: -1}\nstop: {max_iterations: 2}\n"
    )
    env = dict(os.environ, CSPFLOW_DB_URI=settings.db_uri.get_secret_value(),
               CSPFLOW_DB_NAME=settings.db_name)  # fmt: skip
    for verb in ("run", "submit"):
        proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "campaign", verb, str(spec)],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2
        err = proc.stderr
        assert "3 problem(s)" in err
        assert "compositions.0: 'NaXx' has unknown element(s) ['Xx']" in err
        assert "generate.colour: unknown key" in err
        assert "dft.budget:" in err
        assert "Traceback" not in err
    assert db.campaigns.count_documents({}) == 0
    assert "fireworks" not in db.list_collection_names() or db.fireworks.count_documents({}) == 0


def test_pause_resume_without_running_anything(settings, db, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("name: p\ncompositions: [Si]\nmax_atoms: 2\ndft: {engine: none}\n")
    env = dict(os.environ, CSPFLOW_DB_URI=settings.db_uri.get_secret_value(),
               CSPFLOW_DB_NAME=settings.db_name)  # fmt: skip

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cspflow.cli.main", *args], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    assert cli("campaign", "submit", str(spec)).returncode == 0
    assert db.fireworks.count_documents({"state": "READY"}) >= 1
    assert cli("campaign", "pause", "p").returncode == 0
    assert db.fireworks.count_documents({"state": "READY"}) == 0
    assert db.fireworks.count_documents({"state": "PAUSED"}) >= 1
    refused = cli("campaign", "run", str(spec))
    assert refused.returncode == 2
    assert (
        refused.stderr.strip() == "error: campaign p is paused; `cspflow campaign resume p` first"
    )
    assert cli("campaign", "resume", "p").returncode == 0
    assert db.fireworks.count_documents({"state": "PAUSED"}) == 0
    assert db.campaigns.find_one({"name": "p"})["state"] == "running"
