"""``cspflow campaign ...``"""

from __future__ import annotations

import typer

from cspflow.cli.common import not_built

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)


@app.callback()
def _placeholder() -> None:
    """Not built yet."""
    not_built("campaign")


def demo() -> None:
    """Not built yet."""
    not_built("demo")
