"""Option types and output helpers shared by every command (defined once)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

__all__ = ["JsonOpt", "console", "err_console", "print_json"]

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
