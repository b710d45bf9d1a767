"""The relaxation-engine benchmark's replay and combine tools (bench/relax_replay.py,
bench/relax_engine.py --combine): the documented figure from the stored 64-candidate trace, and
unreadable inputs as one error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=BENCH.parent)  # fmt: skip


def test_replay_of_the_stored_trace_gives_the_documented_saving():
    proc = _run(str(BENCH / "relax_replay.py"), str(BENCH / "results/relax_trace_fire64.json"),
                "--fmax-screen", "0.15", "--hold", "3", "--window", "0.3,0.1",
                "--screen-steps", "0", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["full_evaluations"] == 8736
    rows = {r["window"]: r for r in out["rows"] if not r["screen_steps"]}
    # bench/README.md: 7255 (1.20x) at window 0.3, 6653 (1.31x) at 0.1, the five lowest kept
    assert (rows[0.3]["evaluations"], rows[0.3]["kept5"]) == (7255, 5)
    assert (rows[0.1]["evaluations"], rows[0.1]["kept5"]) == (6653, 5)


def test_unreadable_inputs_are_one_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    for args in ([str(BENCH / "relax_replay.py"), str(bad)],
                 [str(BENCH / "relax_engine.py"), "--combine", f"today={tmp_path / 'none.json'}"]):  # fmt: skip
        proc = _run(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot read"), proc.stderr
