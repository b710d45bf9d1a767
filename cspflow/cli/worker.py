"""``cspflow worker start|check|reconcile``: FireWorks workers for this node, and lost runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("start")
def start(
    category: Annotated[str, typer.Option("--category", "-c", help="gpu or cpu.")],
    until_empty: Annotated[
        bool, typer.Option("--until-empty", help="Stop when no firework of this category is ready.")
    ] = False,
    singleshot: Annotated[
        bool, typer.Option("--singleshot", help="Run at most one firework (what a Slurm job does).")
    ] = False,
    nlaunches: Annotated[
        int, typer.Option(help="Stop after this many launches (0: no limit).")
    ] = 0,
    sleep: Annotated[int, typer.Option(help="Seconds between polls when nothing is ready.")] = 5,
    launch_dir: Annotated[Path | None, typer.Option(help="Where launch directories go.")] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default host-category).")] = None,
) -> None:
    """Pull and run jobs of one category (rlaunch rapidfire with cspflow's LaunchPad).

    Without --until-empty or --singleshot it runs as a daemon until stopped.
    """
    from cspflow.scheduler.workers import make_fworker, run_worker

    make_fworker(category)  # validates the category before touching the database
    if category == "gpu":
        # gpu jobs run on the CPU of a node without CUDA when CSPFLOW_DEVICE allows it (auto,
        # cpu); a forced cuda on such a node is refused here, not by every job it would take
        from cspflow.mlip import resolve_device

        typer.echo(f"gpu worker: MLIP jobs run on {resolve_device()}", err=True)
    n: int | str  # a count, or "infinite" (FireWorks' rapidfire)
    if singleshot:
        n, max_loops = 1, 1
    elif until_empty:
        n, max_loops = nlaunches, -1
    else:
        n, max_loops = (nlaunches or "infinite"), -1
    count = run_worker(
        category,
        nlaunches=n,
        max_loops=max_loops,
        sleep_time=sleep,
        launch_dir=launch_dir,
        name=name,
        reconcile_first=not (singleshot or until_empty),  # a daemon: rerun lost runs first
    )
    typer.echo(f"{category} worker: {count} launch(es)")


@app.command("reconcile")
def reconcile(
    expiration: Annotated[
        float | None,
        typer.Option(
            help="Heartbeat expiration in seconds (default: setting "
            "lost_run_expiration_s, else FireWorks' RUN_EXPIRATION_SECS)."
        ),  # fmt: skip
    ] = None,
    slurm: Annotated[bool, typer.Option("--slurm/--no-slurm", help="Compare with squeue.")] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report lost runs, change nothing.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Find lost runs (worker process gone, Slurm job ended, no heartbeat) and rerun them.

    Safe to run at any time and from several places (cron, a login node): each lost launch is
    rerun once. Live workers keep pinging their launches and are left alone.
    """
    from cspflow.scheduler.launchpad import get_launchpad
    from cspflow.scheduler.reconcile import default_expiration_s
    from cspflow.scheduler.reconcile import reconcile as do_reconcile
    from cspflow.settings import get_settings

    settings = get_settings()
    lp = get_launchpad(settings)
    report = do_reconcile(lp, expiration or default_expiration_s(settings), slurm=slurm,
                          dry_run=dry_run)  # fmt: skip
    if json_out:
        print_json(report.as_dict())
        return
    for line in render.reconcile_lines(report, dry_run):
        typer.echo(line)


@app.command("check")
def check(json_out: JsonOpt = False) -> None:
    """Platform check: submit one cpu job and one gpu job, run both workers, show who ran what."""
    import time

    from rich.console import Console

    from cspflow.db import redact_uri, resolve_uri
    from cspflow.demo import platform_flow
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.scheduler.workers import run_worker
    from cspflow.settings import get_settings
    from cspflow.store import get_jobstore

    settings = get_settings()
    console = Console(stderr=json_out)
    uri = resolve_uri(settings)
    console.print(f"database: {redact_uri(uri)} (db {settings.db_name})")
    flow = platform_flow()
    t0 = time.perf_counter()
    ids = submit_flow(flow, settings, metadata={"cspflow": "demo"})
    fw_ids = sorted(ids.values())
    console.print(f"submitted workflow with fireworks {fw_ids}")
    lp = get_launchpad(settings)
    launches = {"cpu": 0, "gpu": 0}
    state = "READY"
    for _ in range(10):
        for category in ("cpu", "gpu"):
            launches[category] += run_worker(category, settings, nlaunches=0, sleep_time=1)
        state = lp.get_wf_by_fw_id(fw_ids[0]).state
        if state in ("COMPLETED", "FIZZLED"):
            break
    elapsed = time.perf_counter() - t0
    store = get_jobstore(settings)
    store.connect()
    rows = []
    for fw_id in fw_ids:
        fw = lp.get_fw_by_id(fw_id)
        try:
            output = store.get_output(fw.tasks[0]["job"].uuid)
        except ValueError:  # the job did not complete
            output = None
        launch = lp.launches.find_one({"fw_id": fw_id}, {"fworker": 1})
        rows.append(render.check_row(fw_id, fw, launch, output))
    if json_out:
        print_json(
            render.check_json(state, elapsed, launches, rows, redact_uri(uri), settings.db_name)
        )
    else:
        for part in render.check_report(rows, state, elapsed):
            console.print(part)
    if state != "COMPLETED":
        raise typer.Exit(1)
