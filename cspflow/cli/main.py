"""Entry point of the ``cspflow`` command; heavy imports live inside the commands."""

from __future__ import annotations

import sys

import typer

from cspflow.cli import bench, campaign, db, dft, generate, model, relax, results, worker

app = typer.Typer(
    name="cspflow",
    help="Crystal structure prediction campaigns: generate -> MLIP pre-relax -> DFT -> hull -> learn.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db.app, name="db", help="The embedded MongoDB-wire database (start, stop, status).")
app.add_typer(campaign.app, name="campaign", help="Run, submit and inspect campaigns.")
app.add_typer(worker.app, name="worker", help="FireWorks workers for this node (gpu or cpu).")
app.add_typer(results.app, name="results", help="Query a campaign's hull and best structures.")
app.add_typer(bench.app, name="bench", help="Benchmarks: CSP success rate and throughput.")
app.add_typer(dft.app, name="dft", help="Run the DFT stage ad hoc on structure files.")
app.add_typer(model.app, name="model", help="The MLIP model registry.")
app.command("generate", help="Generate unique candidate structures for a composition.")(
    generate.generate
)
app.command("relax", help="Relax structure files with an MLIP.")(relax.relax)
app.command(
    "demo", help="Run the quickstart campaign on the embedded database (what `make demo` runs)."
)(campaign.demo)

_DEBUG = False


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    global _DEBUG
    _DEBUG = debug
    if version:
        from cspflow import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit 2 (``--debug`` shows the traceback)."""
    from cspflow.errors import CspflowError, SpecError

    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    command = next((a for a in args if not a.startswith("-")), None)
    if not debug and command != "worker":
        # library warnings (pymatgen's CIF parser, torch, atomate2) would bury the one line a
        # user error prints; --debug shows them, and job logs (workers) keep them
        import warnings

        warnings.simplefilter("ignore")
    try:
        code = app(args=argv, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except SpecError as exc:
        if debug:
            raise
        head, *rest = exc.lines()
        typer.echo(f"error: {head}", err=True)
        for line in rest:
            typer.echo(line, err=True)
        sys.exit(2)
    except CspflowError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # click usage errors and the unexpected
        # typer >= 0.20 raises its vendored click's exceptions (typer._click), not click's
        if callable(getattr(exc, "show", None)) and isinstance(
            getattr(exc, "exit_code", None), int
        ):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if debug:
            raise
        typer.echo(
            f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
