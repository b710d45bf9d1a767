"""``cspflow bench csp``: a real tiny benchmark run, its cleanup, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "bench" / "sets" / "dev"


def _nacl_cif(tmp_path: Path) -> Path:
    src = DEV / "NaCl.cif"
    if src.is_file():
        return Path(shutil.copy(src, tmp_path / "NaCl.cif"))
    from pymatgen.core import Lattice, Structure

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    rocksalt.to(filename=str(tmp_path / "NaCl.cif"))
    return tmp_path / "NaCl.cif"


def _write_set(tmp_path: Path, entries: str, name: str = "set.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        "name: tiny\nmatch: {ltol: 0.2, stol: 0.3, angle_tol: 5}\ntop_k: 5\n"
        # prototype/spacegroup are documentation: the search must not receive them
        f"entries:\n{entries}"
    )
    return path


def _cli_env(settings, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CSPFLOW_DB_URI=settings.db_uri.get_secret_value(), CSPFLOW_DB_NAME=settings.db_name,
               CSPFLOW_DATA_DIR=str(settings.data_dir), CSPFLOW_WORK_DIR=str(tmp_path / "runs"),
               CSPFLOW_CONFIG_FILE=str(tmp_path / "no-config.yaml"))  # fmt: skip
    return env


def _bench(args: list[str], env: dict[str, str], timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "cspflow.cli.main", "bench", "csp", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _snapshot(db) -> dict[str, int]:
    return {name: db[name].count_documents({}) for name in sorted(db.list_collection_names())}


@pytest.mark.slow
def test_tiny_run_finds_rocksalt_and_cleans_up(settings, db, tmp_path):
    from cspflow.db import ping
    from cspflow.procs import _pid_alive

    _nacl_cif(tmp_path)
    set_file = _write_set(
        tmp_path, "- composition: NaCl\n  reference: NaCl.cif\n  prototype: rocksalt\n"
        "  spacegroup: Fm-3m\n",
    )  # fmt: skip
    db.campaigns.insert_one({"name": "users-own", "state": "completed"})
    before = _snapshot(db)
    out = tmp_path / "report.json"
    proc = _bench([str(set_file), "--model", "chgnet", "--sources", "prototype,random_symmetric",
                   "--budget", "8", "--json", str(out)], _cli_env(settings, tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    (run,) = report["runs"]
    assert run["formula"] == "NaCl" and run["max_atoms"] == 8  # max(8, 2 x 2-atom primitive)
    assert run["relaxations"] == 8 and run["iterations"] * run["per_iteration"] == 8
    assert run["found"] is True and run["rank"] == 1  # CHGNet puts rocksalt lowest
    assert 1 <= run["first_found"] <= 8
    assert run["first_found_source"] in ("prototype", "random_symmetric")
    assert run["top"][0]["matches_reference"] and run["top"][0]["spacegroup"] == 225
    assert run["top"][0]["spacegroup_symbol"] == "Fm-3m"
    assert run["reference_spacegroup"] == 225 and run["top_spacegroup_match"] is True
    assert run["wall_s"] > 0 and run["error"] is None
    s = report["summary"]
    assert s["success_rate"] == 1.0 and s["median_relaxations_to_success"] == run["first_found"]
    assert s["per_entry"]["NaCl"] == {"found": 1, "runs": 1, "first_found": [run["first_found"]],
                                      "ranks": [1]}  # fmt: skip
    assert report["options"]["sources"] == {"prototype": 1.0, "random_symmetric": 1.0}
    assert report["total_s"] >= run["wall_s"]
    assert s["top_spacegroup_matches"] == 1
    assert s["success_curve"] == [
        {"budget": 5, "found": int(run["first_found"] <= 5), "runs": 1,
         "success_rate": float(run["first_found"] <= 5)},
        {"budget": 8, "found": 1, "runs": 1, "success_rate": 1.0},
    ]  # fmt: skip
    assert "success rate against budget" in proc.stdout
    # the table on stdout, progress on stderr
    assert "NaCl" in proc.stdout and "success rate 1/1 = 100%" in proc.stdout
    # the prototype source holds rocksalt: this run is a lookup, counted apart from searches
    assert run["reference_in_library"] == "rocksalt"
    assert s["lookup"] == {"runs": 1, "runs_found": 1, "success_rate": 1.0}
    assert s["search_only"] == {"runs": 0, "runs_found": 0, "success_rate": None}
    assert "search only 0/0" in proc.stdout  # the summary line says so too
    assert "NaCl repeat 0: found, rank 1" in proc.stderr

    # the benchmark's own server and data dir are gone; the user's database is untouched
    server = report["server"]
    assert server["uri"] != settings.db_uri.get_secret_value()
    assert not Path(server["data_dir"]).exists()
    assert not _pid_alive(server["pid"]) and not ping(server["uri"], timeout_ms=500)
    assert _snapshot(db) == before
    assert [c["name"] for c in db.campaigns.find()] == ["users-own"]
    assert not (tmp_path / "runs").exists()  # workers ran in the benchmark's dir, not the user's


@pytest.mark.slow
def test_until_found_stops_after_the_iteration_that_found_it_two_at_once(settings, db, tmp_path):
    _nacl_cif(tmp_path)
    set_file = _write_set(tmp_path, "- composition: NaCl\n  reference: NaCl.cif\n"
                          "- composition: NaCl\n  reference: NaCl.cif\n  max_atoms: 4\n")  # fmt: skip
    out = tmp_path / "report.json"
    proc = _bench([str(set_file), "--sources", "prototype", "--budget", "16", "--per-iteration",
                   "4", "--until-found", "--workers", "2", "--json", str(out)],
                  _cli_env(settings, tmp_path), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["options"]["until_found"] and report["options"]["workers"] == 2
    assert [r["max_atoms"] for r in report["runs"]] == [8, 4]  # set order, though run at once
    for run in report["runs"]:
        # rocksalt is among the first prototypes: found in iteration 0, the other 3 never run
        assert run["found"] and run["stopped_early"] and run["relaxations"] == 4, run
    assert "(stopped: found)" in proc.stderr
    print(f"until-found: {[r['relaxations'] for r in report['runs']]} of 16 relaxations each")


def test_bad_input_one_line_exit_2_nothing_started(settings, db, tmp_path):
    env = _cli_env(settings, tmp_path)
    before = _snapshot(db)
    bench_dirs = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("cspflow-bench-csp-*"))
    _nacl_cif(tmp_path)
    cases = {
        "missing set": ([str(tmp_path / "nope.yaml")], "cannot read benchmark set"),
        "unknown element": (
            [str(_write_set(tmp_path, "- composition: NaXx\n  reference: NaCl.cif\n", "xx.yaml"))],
            "entries.0: 'NaXx' has unknown element(s) ['Xx']",
        ),
    }
    bad_ref = tmp_path / "bad"
    bad_ref.mkdir()
    (bad_ref / "junk.cif").write_text("this is not a CIF\n")
    (bad_ref / "set.yaml").write_text("entries:\n- composition: NaCl\n  reference: junk.cif\n")
    cases["unreadable reference"] = ([str(bad_ref / "set.yaml")], "cannot read reference")
    (bad_ref / "missing.yaml").write_text("entries:\n- composition: NaCl\n  reference: gone.cif\n")
    cases["missing reference"] = ([str(bad_ref / "missing.yaml")], "cannot read reference")
    good = str(_write_set(tmp_path, "- composition: NaCl\n  reference: NaCl.cif\n"))
    cases["unknown source"] = ([good, "--sources", "random_symmetric,external"], "external")
    cases["only not in set"] = ([good, "--only", "Si"], "--only: Si not in")
    cases["unknown prior"] = ([good, "--spacegroup-prior", "icsd"], "unknown space-group prior")
    cases["unknown wyckoff"] = ([good, "--wyckoff", "most"], "unknown wyckoff choice")
    cases["unknown optimizer"] = ([good, "--prerelax", "optimizer=PRECON"],
                                  "--prerelax optimizer: Input should be")  # fmt: skip
    cases["not KEY=VALUE"] = ([good, "--prerelax", "BFGS"], "--prerelax: 'BFGS' is not KEY=VALUE")
    cases["negative rattle"] = ([good, "--prerelax", "symmetry_rattle=-1"],
                                "--prerelax symmetry_rattle: Input should be greater")  # fmt: skip
    for what, (args, needle) in cases.items():
        proc = _bench(args, env, timeout=120)
        assert proc.returncode == 2, (what, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (
            what,
            lines,
        )
        assert proc.stdout == ""
    assert _snapshot(db) == before
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("cspflow-bench-csp-*")) == bench_dirs


def _set_match(a, b):
    """The set's default matcher, as evaluate_run builds it."""
    from cspflow.bench.score import _matcher
    from cspflow.bench.sets import MatchSpec

    return _matcher(MatchSpec()).fit(a, b)


def test_evaluate_run_rank_and_first_found():
    """Scoring without a database: generation order, duplicates, failures, energy ranking."""
    from pymatgen.core import Lattice, Structure

    from cspflow.bench.options import plan_iterations
    from cspflow.bench.score import evaluate_run
    from cspflow.bench.sets import MatchSpec

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])

    def row(cid, s, e, dup=None):
        sg = {id(cscl): 221}.get(id(s), 225)  # what the relaxation record would say
        return {"candidate_id": cid, "structure": s, "energy_per_atom": e, "duplicate_of": dup,
                "spacegroup": sg, "nsites": None if s is None else len(s),
                "source": f"mutation:{cid}"}  # fmt: skip

    relaxed = [row("a", cscl, -3.70), row("b", None, None), row("c", rocksalt, -3.65),
               row("d", rocksalt.copy(), -3.66, dup="c"), row("e", cscl.copy(), -3.69)]  # fmt: skip
    out = evaluate_run(rocksalt, relaxed, top_k=1, match=MatchSpec())
    assert out["first_found"] == 3  # the failed relaxation counts as spent
    assert out["first_found_source"] == "mutation:c"  # which generator made that first match
    assert out["relaxations"] == 5 and out["failed"] == 1
    assert out["unique"] == 2  # "d" is a duplicate, "e" matches "a"
    assert out["rank"] == 2 and out["found"] is False  # rank 2 > top_k 1
    # the minimum's energy is its lowest member's ("d", -3.66), not the first one's
    assert out["reference_delta_mev"] == pytest.approx(40.0)
    # CSPBench's metric: the top-ranked (CsCl-type, Pm-3m) is not the reference's Fm-3m
    assert out["reference_spacegroup"] == 225 and out["top_spacegroup_match"] is False
    assert evaluate_run(rocksalt, relaxed, top_k=2, match=MatchSpec())["found"] is True
    below = [row("c", rocksalt, -3.75), *relaxed[:2]]
    assert evaluate_run(rocksalt, below, top_k=1, match=MatchSpec())["top_spacegroup_match"]
    # the campaign put the reference's relaxation into another structure's minimum (its dedup is
    # looser than the set's matcher): that minimum is where the reference was found
    distorted = rocksalt.copy()
    distorted.apply_strain([0.12, 0.0, -0.1])
    assert not _set_match(rocksalt, distorted)
    grouped = [row("a", cscl, -3.70), row("f", distorted, -3.68),
               row("g", rocksalt.copy(), -3.60, dup="f")]  # fmt: skip
    out = evaluate_run(rocksalt, grouped, top_k=2, match=MatchSpec())
    assert out["unique"] == 2 and out["first_found"] == 3
    assert out["rank"] == 2 and out["found"] is True
    assert out["reference_delta_mev"] == pytest.approx(20.0)
    assert plan_iterations(20) == (1, 20) and plan_iterations(200) == (10, 20)
    n, per = plan_iterations(25)
    assert n * per <= 25 and n * per >= 25 - n


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live direct children of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(stat.parent.name), cmd))
    return out


@pytest.mark.slow
def _ctrl_c_reaches_python() -> None:
    """Ctrl-C as at a terminal: a suite started in the background (no job control) inherits
    SIGINT ignored (or blocked), and Python then installs no KeyboardInterrupt handler: a
    fresh-clone CI run's benchmark never saw the interrupt (faulthandler: main thread still
    waiting on its entries)."""
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_with_two_workers_stops_every_campaign_and_cleans_up(settings, db, tmp_path):
    import signal
    import time

    from cspflow.procs import _pid_alive

    _nacl_cif(tmp_path)
    set_file = _write_set(tmp_path, "- composition: NaCl\n  reference: NaCl.cif\n"
                          "- composition: NaCl\n  reference: NaCl.cif\n  max_atoms: 4\n")  # fmt: skip
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    dirs_before = set(tmp.glob("cspflow-bench-csp-*"))
    bench = subprocess.Popen(
        [sys.executable, "-m", "cspflow.cli.main", "bench", "csp", str(set_file), "--sources",
         "random_symmetric", "--budget", "400", "--per-iteration", "8", "--workers", "2"],
        env={**_cli_env(settings, tmp_path), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ctrl_c_reaches_python,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        workers: list[tuple[int, str]] = []
        while time.monotonic() < deadline and bench.poll() is None:
            workers = [c for c in _children(bench.pid) if "worker start" in c[1]]
            if len(workers) >= 4:  # both entries' campaigns run a cpu and a gpu worker
                break
            time.sleep(0.5)
        assert len(workers) >= 4, (workers, bench.poll())
        (data_dir,) = set(tmp.glob("cspflow-bench-csp-*")) - dirs_before
        server_pid = int((data_dir / "secantusd.pid").read_text())
        time.sleep(2)  # both campaigns are polling
        t0 = time.monotonic()
        bench.send_signal(signal.SIGINT)
        try:
            _, err = bench.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            # show where every thread waits
            bench.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER dumps all threads
            _, err = bench.communicate(timeout=30)
            pytest.fail(f"bench csp still running 120 s after Ctrl-C; its threads:\n{err[-8000:]}")
        stopped_s = time.monotonic() - t0
    finally:
        if bench.poll() is None:
            bench.kill()
    print(f"\ninterrupted with {len(workers)} workers running: stopped in {stopped_s:.1f} s")
    assert bench.returncode == 130, err[-2000:]  # interrupted, as with one worker
    assert stopped_s < 60
    # every worker of both campaigns, the benchmark's server and its data dir are gone
    assert not [pid for pid, _ in workers if _pid_alive(pid)]
    assert not _pid_alive(server_pid)
    assert not data_dir.exists()


def test_library_match_names_the_prototype_a_reference_is():
    """A prototype run on a library structure is labelled; a structure outside it is not."""
    from pymatgen.core import Lattice, Structure

    from cspflow.bench.score import library_match
    from cspflow.bench.sets import MatchSpec, PreparedEntry

    def entry(structure, formula="NaCl"):
        return PreparedEntry(formula=formula, reference_path=Path("x.cif"),
                             reference=structure, max_atoms=8)  # fmt: skip

    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.6), ["Na", "Cl"],
                                         [[0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    cscl = Structure(Lattice.cubic(3.4), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    odd = Structure(Lattice.from_parameters(3.9, 4.6, 5.3, 71, 83, 101), ["Na", "Cl"],
                    [[0, 0, 0], [0.31, 0.12, 0.45]])  # fmt: skip
    assert library_match(entry(rocksalt), MatchSpec()) == "rocksalt"
    assert library_match(entry(cscl, "CsCl"), MatchSpec()) == "cscl"
    assert library_match(entry(odd), MatchSpec()) is None


def test_prerelax_options_reach_every_campaign_and_the_rest_stays():
    from pymatgen.core import Lattice, Structure

    from cspflow.bench.options import BenchOptions, bench_campaign_spec, parse_overrides
    from cspflow.bench.sets import PreparedEntry

    ref = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    entry = PreparedEntry(formula="NaCl", reference_path=Path("x.cif"), reference=ref,
                          max_atoms=8)  # fmt: skip
    over = parse_overrides("optimizer=BFGS,symmetry_stage=true,prune.window=0.2")
    assert over == {"optimizer": "BFGS", "symmetry_stage": True, "prune": {"window": 0.2}}
    spec = bench_campaign_spec("b", entry, BenchOptions(prerelax=over, max_steps=120), seed=3)
    p = spec.prerelax
    assert p.optimizer == "BFGS" and p.symmetry_stage and p.prune.window == 0.2
    assert p.max_steps == 120 and p.model == "chgnet"  # the benchmark's own fields stay
    from cspflow.schemas.prerelax import PrerelaxSettings

    plain = bench_campaign_spec("b", entry, BenchOptions(), seed=3).prerelax
    defaults = PrerelaxSettings()
    assert (plain.optimizer, plain.cell_factor, plain.symmetry_stage) == (
        defaults.optimizer, defaults.cell_factor, defaults.symmetry_stage)  # fmt: skip


def _report(tmp_path: Path, firsts: list[int | None], ranks: list[int | None]):
    """A saved two-entry report as an earlier release wrote it (schema 1: top[].spacegroup the
    symbol, no space-group check)."""
    from cspflow.bench.options import BenchOptions
    from cspflow.bench.score import BenchReportDoc, BenchRunDoc
    from cspflow.bench.sets import MatchSpec

    ref = _nacl_cif(tmp_path)
    runs = [
        BenchRunDoc(
            formula=f"NaCl{k}",
            reference=str(ref),
            repeat=0,
            seed=k,
            max_atoms=8,
            iterations=2,
            per_iteration=20,
            relaxations=40,
            found=rank is not None and rank <= 5,
            rank=rank,
            first_found=first,
            top=[{"rank": 1, "spacegroup": "Fm-3m" if rank == 1 else "Pm-3m"}],
        )  # fmt: skip
        for k, (first, rank) in enumerate(zip(firsts, ranks, strict=True))
    ]
    report = BenchReportDoc(set_name="tiny", set_file="set.yaml", top_k=5, match=MatchSpec(),
                            options=BenchOptions(budget=40), runs=runs)  # fmt: skip
    path = tmp_path / "old.json"
    data = json.loads(report.model_dump_json())
    data["schema_version"] = 1
    for run in data["runs"]:
        del run["reference_spacegroup"], run["top_spacegroup_match"]
    path.write_text(json.dumps(data))
    return path


def test_success_curve_counts_runs_found_within_each_budget():
    from cspflow.bench.score import BenchRunDoc, success_curve

    def run(first, found=True):
        return BenchRunDoc(formula="X", reference="x.cif", repeat=0, seed=0, max_atoms=8,
                           iterations=1, per_iteration=20, found=found, first_found=first)  # fmt: skip

    # a reference obtained at 7 but not in the top-k when the run ended is no success
    runs = [run(3), run(30), run(None, False), run(7, False)]
    curve = {p["budget"]: (p["found"], p["success_rate"]) for p in success_curve(runs, 40)}
    assert list(curve) == [5, 10, 20, 40]
    assert curve == {5: (1, 0.25), 10: (1, 0.25), 20: (1, 0.25), 40: (2, 0.5)}


def test_bench_report_upgrades_an_old_report_and_plots_the_curve(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cspflow.cli.main import app

    old = _report(tmp_path, firsts=[4, 25], ranks=[1, 3])
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["bench", "report", str(old), "--plot", "curve.png",
                                   "--json", "new.json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "top-ranked space group = reference's in 1/2" in " ".join(out.output.split())
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    new = json.loads((tmp_path / "new.json").read_text())
    assert new["schema_version"] == 3
    assert [r["top_spacegroup_match"] for r in new["runs"]] == [True, False]
    assert new["runs"][0]["reference_spacegroup"] == 225
    assert new["summary"]["top_spacegroup_matches"] == 1
    rates = {p["budget"]: p["found"] for p in new["summary"]["success_curve"]}
    assert rates == {5: 1, 10: 1, 20: 1, 40: 2}
    gone = json.loads(old.read_text())
    gone["runs"][0]["reference"] = str(tmp_path / "gone.cif")
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    lost = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "bench", "report", "gone.json"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert lost.returncode == 2 and lost.stdout == ""
    (line,) = lost.stderr.strip().splitlines()
    assert line.startswith("error: gone.json: cannot read the reference") and "NaCl0" in line
    (tmp_path / "junk.json").write_text("{not json")
    bad = subprocess.run([sys.executable, "-m", "cspflow.cli.main", "bench", "report", "junk.json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read the benchmark report junk")
