"""Option types and output helpers shared by every command (defined once)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

__all__ = ["JsonOpt", "console", "err_console", "print_json", "fail"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def console():
    from rich.console import Console

    return Console()


def err_console():
    from rich.console import Console

    return Console(stderr=True)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (the only thing printed with --json)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=True) + "\n")


def fail(message: str, code: int = 2) -> None:
    """Stop with one line on stderr and a non-zero exit."""
    from cspflow.errors import CspflowError

    raise CspflowError(message) if code == 2 else typer.Exit(code)


def not_built(what: str) -> None:
    """Say in one line that a command exists in the contract but is not built yet."""
    typer.echo(f"cspflow {what}: not built yet in this release (see the open issues)", err=True)
    raise typer.Exit(3)
