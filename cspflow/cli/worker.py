"""``cspflow worker start --category gpu|cpu``: a FireWorks rapidfire worker for this node."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    nlaunches: Annotated[int, typer.Option(help="Stop after this many launches (0: no limit).")] = 0,
    sleep: Annotated[int, typer.Option(help="Seconds between polls when nothing is ready.")] = 5,
    launch_dir: Annotated[Path | None, typer.Option(help="Where launch directories go.")] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default host-category).")] = None,
) -> None:
    """Pull and run jobs of one category (rlaunch rapidfire with cspflow's LaunchPad).

    Without --until-empty or --singleshot it runs as a daemon until stopped.
    """
    from cspflow.scheduler import make_fworker, run_worker

    make_fworker(category)  # validates the category before touching the database
    if singleshot:
        n, max_loops = 1, 1
    elif until_empty:
        n, max_loops = nlaunches, -1
    else:
        n, max_loops = (nlaunches or "infinite"), -1
    count = run_worker(
        category,
        nlaunches=n,  # type: ignore[arg-type]
        max_loops=max_loops,
        sleep_time=sleep,
        launch_dir=launch_dir,
        name=name,
    )
    typer.echo(f"{category} worker: {count} launch(es)")
