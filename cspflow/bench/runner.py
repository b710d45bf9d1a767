"""Running a benchmark: its private database server, one campaign per entry, the whole set.

For each entry of a benchmark set an MLIP-only campaign (``dft.engine: none``) runs through the
real machinery (FireWorks + local workers) on a fresh database of a dedicated embedded server in
a temporary directory, which is removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cspflow.bench.options import BenchOptions, bench_campaign_spec, check_options
from cspflow.bench.score import (
    BenchReportDoc,
    BenchRunDoc,
    count_relaxed,
    evaluate_run,
    left_out_types,
    library_match,
    relaxed_candidates,
    scores_budget_left,
    summarize,
)
from cspflow.bench.sets import MatchSpec, PreparedEntry, load_set
from cspflow.errors import CspflowError

__all__ = ["bench_server", "run_entry", "run_benchmark"]

_PREFIX = "cspflow-bench-csp-"


class _Interrupted(Exception):
    """Raised in an entry's poll when the benchmark was interrupted (Ctrl-C in the main thread):
    the campaign loop then stops its workers and returns while the server is still up."""


def _report_path(path: str | Path) -> str:
    """``path`` relative to the current directory when under it, else absolute.

    Reports are kept in the repository (``bench/results``): they name files the way the command
    line did, not the layout of the machine that ran them.
    """
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _sweep_killed() -> None:
    """Remove data dirs left by benchmarks that were killed (their server's pid is dead)."""
    from cspflow.procs import _pid_alive

    for d in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            pid = int((d / "secantusd.pid").read_text().strip())
        except (OSError, ValueError):
            continue  # starting up, or already stopped cleanly
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def bench_server(base: Any = None) -> Iterator[Any]:
    """A dedicated embedded server in a fresh temporary data dir; both gone on exit.

    The server is bound to this process (it dies with it even on SIGKILL) and is stopped and
    its directory removed on any exit, including Ctrl-C; the directory of a benchmark killed
    with SIGKILL is removed by the next benchmark. Yields the benchmark's settings
    (``db_name`` is set per campaign by the caller) and the server's
    :class:`~cspflow.db.ServerInfo`.
    """
    from cspflow.db import start_server, stop_server
    from cspflow.settings import CspflowSettings, get_settings

    base = base or get_settings()
    _sweep_killed()
    data_dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
    settings = CspflowSettings(
        **{
            **base.model_dump(exclude={"db_uri", "data_dir", "db_port", "work_dir", "db_name"}),
            "db_uri": None,
            "data_dir": data_dir,
            "db_port": 0,
            "db_name": "bench",
            "work_dir": data_dir / "runs",  # else CSPFLOW_WORK_DIR would put runs in the user's
            # this throwaway database need not survive a crash; fsync per commit costs 3x
            "db_sync_on_commit": False,
        }
    )
    try:
        info = start_server(settings, bound_to_caller=True)
        yield settings, info
    finally:
        try:
            stop_server(settings)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def run_entry(
    entry: PreparedEntry,
    repeat: int,
    index: int,
    settings: Any,
    options: BenchOptions,
    top_k: int,
    match: MatchSpec,
    on_progress: Callable[[int], None] | None = None,
    interrupted: Callable[[], bool] | None = None,
    in_library: str | None = None,
    left_out: list[str] | None = None,
) -> BenchRunDoc:
    """Run one campaign on its own fresh database of the benchmark server and score it.

    ``interrupted`` is asked at every poll (entries run in threads, which Ctrl-C does not
    reach): when it says so, the campaign's workers are stopped and :class:`_Interrupted` is
    raised.
    """
    from cspflow.scheduler.local import run_campaign_locally, submit_campaign
    from cspflow.store import get_database

    seed = options.seed + 1000 * repeat
    name = f"bench-{entry.formula}-r{repeat}"
    run_settings = settings.model_copy(update={"db_name": f"bench_{index}_{repeat}"})
    spec = bench_campaign_spec(name, entry, options, seed, left_out)
    db = get_database(run_settings)
    t0 = time.monotonic()
    error = None
    state = {"relaxed": 0, "stopped": False}

    def poll(nodes: Any, elapsed: float) -> None:
        if interrupted is not None and interrupted():
            raise _Interrupted(name)
        n = count_relaxed(db, name)
        if on_progress:
            on_progress(n)
        if options.until_found and n != state["relaxed"] and not state["stopped"]:
            state["relaxed"] = n
            if evaluate_run(entry.reference, relaxed_candidates(db, name), top_k, match)["found"]:
                # decide ends the campaign after this iteration (its batch is relaxed at once)
                db.campaigns.update_one({"name": name}, {"$set": {"state": "paused"}})
                state["stopped"] = True

    try:
        _, created, nodes = submit_campaign(spec, run_settings)
        # one gpu worker per campaign (an iteration is one prerelax job): --workers W runs W
        # campaigns side by side instead
        run_campaign_locally(spec, run_settings, nodes, created=created, on_poll=poll,
                             gpu_workers=1)  # fmt: skip
    except CspflowError as exc:
        error = str(exc)
    wall = time.monotonic() - t0
    scores = evaluate_run(entry.reference, relaxed_candidates(db, name), top_k, match)
    if on_progress:
        on_progress(scores["relaxations"])
    return BenchRunDoc(
        formula=entry.formula,
        reference=_report_path(entry.reference_path),
        repeat=repeat,
        seed=seed,
        max_atoms=entry.max_atoms,
        reference_in_library=in_library,
        left_out=list(left_out or []),
        iterations=spec.stop.max_iterations,
        per_iteration=spec.generate.per_iteration,
        wall_s=round(wall, 1),
        error=error,
        stopped_early=state["stopped"] and scores_budget_left(spec, scores),
        **scores,
    )


def _run_parallel(
    tasks: list[tuple[int, int, PreparedEntry]],
    settings: Any,
    options: BenchOptions,
    top_k: int,
    match: MatchSpec,
    on_run_end: Callable[[BenchRunDoc], None] | None,
    lookups: dict[int, str | None],
    left: dict[int, list[str]],
) -> list[BenchRunDoc]:
    """``options.workers`` campaigns at once (threads waiting on worker processes).

    Ctrl-C reaches only the main thread: it tells every running entry to stop (its workers are
    terminated at the next poll, while the benchmark's server is still up), drops the entries
    not started, waits for the running ones to finish stopping, then goes on as an interrupt.
    """
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # each campaign runs a cpu and a gpu worker: share the cores instead of oversubscribing
    threads = max(1, (os.cpu_count() or 1) // (2 * options.workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    lock = threading.Lock()
    stop = threading.Event()

    def one(task: tuple[int, int, PreparedEntry]) -> BenchRunDoc:
        repeat, index, entry = task
        run = run_entry(entry, repeat, index, settings, options, top_k, match,
                        interrupted=stop.is_set, in_library=lookups[index],
                        left_out=left[index])  # fmt: skip
        if on_run_end:
            with lock:
                on_run_end(run)
        return run

    pool = ThreadPoolExecutor(max_workers=options.workers)
    try:
        futures = [pool.submit(one, task) for task in tasks]
        return [f.result() for f in futures]  # in task order, whichever finished first
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_benchmark(
    set_file: str | Path,
    options: BenchOptions,
    only: list[str] | None = None,
    on_run_start: Callable[[PreparedEntry, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_run_end: Callable[[BenchRunDoc], None] | None = None,
) -> BenchReportDoc:
    """Check the set and options, then run every entry x repeat on a dedicated server.

    Bad input raises :class:`CspflowError` before any server or campaign starts.
    """
    import os
    import platform

    bset, entries = load_set(set_file, only)
    check_options(options)
    top_k = options.top_k or bset.top_k
    report = BenchReportDoc(
        set_name=bset.name, set_file=_report_path(set_file), options=options,
        top_k=top_k, match=bset.match,
        host={"hostname": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "platform": platform.platform()},
    )  # fmt: skip
    t0 = time.monotonic()
    tasks = [(repeat, index, entry) for repeat in range(options.repeats)
             for index, entry in enumerate(entries)]  # fmt: skip
    # leave-one-out: the reference's own type leaves its entry's template library
    left = {index: left_out_types(entry) if options.leave_out_reference else []
            for index, entry in enumerate(entries)}  # fmt: skip
    # a run with a library source may find the reference by lookup: label it (score.py)
    lookups = {index: library_match(entry, bset.match, options.sources, left[index])
               if {"prototype", "template"} & set(options.sources) else None
               for index, entry in enumerate(entries)}  # fmt: skip
    with bench_server() as (settings, info):
        report.server = {"pid": info.pid, "uri": info.uri, "data_dir": str(info.data_dir)}
        if options.workers == 1:
            for repeat, index, entry in tasks:
                if on_run_start:
                    on_run_start(entry, repeat)
                run = run_entry(entry, repeat, index, settings, options, top_k, bset.match,
                                on_progress, in_library=lookups[index],
                                left_out=left[index])  # fmt: skip
                report.runs.append(run)
                if on_run_end:
                    on_run_end(run)
        else:
            report.runs.extend(_run_parallel(tasks, settings, options, top_k, bset.match,
                                             on_run_end, lookups, left))  # fmt: skip
    report.total_s = round(time.monotonic() - t0, 1)
    report.summary = summarize(report.runs, options.repeats, options.budget)
    return report
