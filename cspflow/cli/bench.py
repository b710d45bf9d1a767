"""``cspflow bench csp``: CSP success rate of an MLIP-only search on a benchmark set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render

app = typer.Typer(no_args_is_help=True)


def _parse_sources(text: str) -> dict[str, float]:
    """``a,b`` (equal weights) or ``a:0.7,b:0.3``."""
    from cspflow.errors import CspflowError

    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight = part.partition(":")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise CspflowError(f"--sources: weight {weight!r} of {name} is not a number") from None
    if not out:
        raise CspflowError("--sources: give at least one source, e.g. random_symmetric")
    return out


@app.command("csp")
def csp(
    set_file: Annotated[Path, typer.Argument(help="Benchmark set (YAML), e.g. dev_set.yaml.")],
    model: Annotated[str, typer.Option(help="MLIP: chgnet or mace:PATH.")] = "chgnet",
    sources: Annotated[
        str, typer.Option(help="Generators, comma-separated, optional weights (name:weight).")
    ] = "random_symmetric",
    budget: Annotated[int, typer.Option(help="Relaxations per entry and repeat.", min=1)] = 200,
    repeats: Annotated[int, typer.Option(help="Runs per entry with different seeds.", min=1)] = 1,
    top_k: Annotated[
        int | None, typer.Option(help="Found means within this rank (default: the set's).", min=1)
    ] = None,
    only: Annotated[
        str | None, typer.Option(help="Only these compositions, comma-separated.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Base seed; repeat r uses seed + 1000 r.", min=0)] = 0,
    per_iteration: Annotated[
        int | None,
        typer.Option(help="Candidates per iteration (default: budget in <= 20s).", min=1),
    ] = None,
    until_found: Annotated[
        bool,
        typer.Option("--until-found", help="Stop an entry once the reference is in the top-k."),
    ] = False,
    workers: Annotated[
        int, typer.Option(help="Campaigns run at once (each with its own cpu+gpu worker).", min=1)
    ] = 1,
    leave_out_reference: Annotated[
        bool,
        typer.Option(
            "--leave-out-reference",
            help="Remove each reference's own structure type from the template library "
            "(anonymous StructureMatcher): a leave-one-out score. Needs the template source.",
        ),
    ] = False,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the full report (JSON) to this file.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write the success-against-budget curve (PNG) to this file."),
    ] = None,
    spacegroup_prior: Annotated[
        str,
        typer.Option(help="random_symmetric's space-group prior: uniform, aflow or pyxtal_mp."),
    ] = "uniform",
    bandit: Annotated[
        bool,
        typer.Option(
            "--bandit",
            help="Allocate random_symmetric's draws over (space group, formula units) arms by "
            "Thompson sampling from the second iteration on (generate.bandit).",
        ),
    ] = False,
    wyckoff: Annotated[
        str, typer.Option(help="Wyckoff positions: pyxtal (its own choice) or fewest_sites.")
    ] = "pyxtal",
    prerelax: Annotated[
        str,
        typer.Option(
            help="Prerelax settings for every campaign, KEY=VALUE,... (e.g. "
            "optimizer=BFGS,symmetry_stage=true; docs/relax.md)."
        ),
    ] = "",
) -> None:
    """Search each entry's composition with the MLIP only and report whether the reference is found.

    Every campaign runs through FireWorks and local workers on a fresh database of a dedicated
    embedded server in a temporary directory, removed afterwards; your database is not used.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cspflow.bench.options import BenchOptions, check_options, parse_overrides
    from cspflow.bench.runner import run_benchmark
    from cspflow.bench.sets import load_set
    from cspflow.errors import CspflowError

    try:
        overrides = parse_overrides(prerelax)
    except CspflowError as exc:
        raise CspflowError(f"--prerelax: {exc}") from None
    options = BenchOptions(
        model=model, sources=_parse_sources(sources), budget=budget, per_iteration=per_iteration,
        repeats=repeats, seed=seed, top_k=top_k, until_found=until_found, workers=workers,
        spacegroup_prior=spacegroup_prior, wyckoff=wyckoff, bandit=bandit,
        leave_out_reference=leave_out_reference, prerelax=overrides,
    )  # fmt: skip
    only_list = [o.strip() for o in only.split(",") if o.strip()] if only else None
    # bad input: one line, nothing started
    _, entries = load_set(set_file, only_list)
    check_options(options)

    err = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=False,
    )  # fmt: skip
    total = progress.add_task("all relaxations", total=len(entries) * repeats * budget)
    current = progress.add_task("starting", total=budget)
    done_before = 0

    def on_run_start(entry, repeat: int) -> None:
        nonlocal done_before
        done_before = int(progress.tasks[total].completed)
        progress.reset(current, total=budget, description=f"{entry.formula} repeat {repeat}")

    def on_progress(n: int) -> None:
        progress.update(current, completed=n)
        progress.update(total, completed=done_before + n)

    def on_run_end(run) -> None:
        progress.console.print(render.bench_run_line(run), highlight=False, soft_wrap=True)

    def on_parallel_end(run) -> None:
        progress.update(total, advance=budget)
        on_run_end(run)

    with progress:
        if workers > 1:  # runs overlap: one bar for the whole set
            progress.update(current, visible=False)
            report = run_benchmark(set_file, options, only_list, on_run_end=on_parallel_end)
        else:
            report = run_benchmark(set_file, options, only_list, on_run_start, on_progress,
                                   on_run_end)  # fmt: skip
    _show(report, json_file, plot)


@app.command("report")
def report_cmd(
    report_file: Annotated[Path, typer.Argument(help="A report written by bench csp --json.")],
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write the success-against-budget curve (PNG) to this file."),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option("--json", help="Write the report, brought to the current schema, here."),
    ] = None,
) -> None:
    """Show a saved benchmark report again: table, summary, success against budget.

    A report of an earlier schema gets the top-ranked space-group check (its reference files
    are read from the paths it names, relative to the current directory) and its summary is
    recomputed.
    """
    from cspflow.bench.score import read_report

    report = read_report(report_file)
    _show(report, json_file, plot)


def _show(report, json_file: Path | None, plot: Path | None) -> None:
    """Write the report's JSON (when asked), print its table, summary line and success curve,
    and draw the curve (when asked)."""
    from rich.console import Console

    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(report.model_dump_json(indent=2))
    console = Console()
    console.print(render.bench_table(report))
    console.print(render.bench_summary_line(report), highlight=False, soft_wrap=True)
    console.print(render.bench_curve_table(report))
    if plot is not None:
        console.print(f"curve: {render.bench_curve_plot(report, plot)}", highlight=False)
