"""``cspflow bench csp``: CSP success rate of an MLIP-only search on a benchmark set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
        bool, typer.Option("--until-found", help="Stop an entry once the reference is in the top-k.")
    ] = False,
    workers: Annotated[
        int, typer.Option(help="Campaigns run at once (each with its own cpu+gpu worker).", min=1)
    ] = 1,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the full report (JSON) to this file.")
    ] = None,
) -> None:
    """Search each entry's composition with the MLIP only and report whether the reference is found.

    Every campaign runs through FireWorks and local workers on a fresh database of a dedicated
    embedded server in a temporary directory, removed afterwards; your database is not used.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cspflow.bench.options import BenchOptions, check_options
    from cspflow.bench.runner import run_benchmark
    from cspflow.bench.sets import load_set

    options = BenchOptions(
        model=model, sources=_parse_sources(sources), budget=budget, per_iteration=per_iteration,
        repeats=repeats, seed=seed, top_k=top_k, until_found=until_found, workers=workers,
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
        what = (f"found, rank {run.rank}, first after {run.first_found} relaxations" if run.found
                else "not found" + (f" (rank {run.rank})" if run.rank else ""))  # fmt: skip
        if run.stopped_early:
            what += " (stopped: found)"
        if run.error:
            what = f"error: {run.error}"
        progress.console.print(f"{run.formula} repeat {run.repeat}: {what}; "
                               f"{run.relaxations} relaxations in {run.wall_s:.0f} s", highlight=False)  # fmt: skip

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
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(report.model_dump_json(indent=2))
    _print_table(report)


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.summary
    opts = report.options
    title = (f"{report.set_name}: {opts.model}, sources {','.join(opts.sources)}, "
             f"budget {opts.budget}, top {report.top_k}, {opts.repeats} repeat(s)")  # fmt: skip
    t = Table(title=title)
    for col in ("entry", "found", "rank", "first found (relaxations)", "relaxations", "unique",
                "dE ref (meV/atom)", "wall s"):  # fmt: skip
        t.add_column(col)
    by_entry: dict[str, list] = {}
    for r in report.runs:
        by_entry.setdefault(r.formula, []).append(r)

    def join(values) -> str:
        return ", ".join("-" if v is None else str(v) for v in values)

    for formula, runs in by_entry.items():
        found = sum(r.found for r in runs)
        flag = ("yes" if found else "no") if len(runs) == 1 else f"{found}/{len(runs)}"
        if any(r.error for r in runs):
            flag += " (error)"
        t.add_row(formula, flag, join(r.rank for r in runs), join(r.first_found for r in runs),
                  join(r.relaxations for r in runs), join(r.unique for r in runs),
                  join(r.reference_delta_mev for r in runs), join(f"{r.wall_s:.0f}" for r in runs))  # fmt: skip
    console = Console()
    console.print(t)
    med = s.get("median_relaxations_to_success")
    console.print(
        f"success rate {s['runs_found']}/{s['runs']} = {100 * (s['success_rate'] or 0):.0f}%  "
        f"(entries found in every repeat {s['entries_found_every_repeat']}/{s['entries']}); "
        f"median relaxations to success {'-' if med is None else med}; "
        f"total {report.total_s:.0f} s",
        highlight=False,
    )
