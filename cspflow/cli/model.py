"""``cspflow model list|show|export``: the MLIP model registry (``models`` + GridFS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt, print_json

app = typer.Typer(no_args_is_help=True)

IdArg = Annotated[str, typer.Argument(help="Model id (a unique prefix is enough).")]


@app.command("list")
def list_cmd(
    chemsys: Annotated[
        str | None, typer.Option(help="Only models of this system (e.g. Mg-O).")
    ] = None,
    campaign: Annotated[str | None, typer.Option(help="Only models made by this campaign.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Registered models, newest first, with held-out errors and promotion state."""
    from cspflow.models import list_models
    from cspflow.store import get_database

    rows = list_models(get_database(), chemsys=chemsys, campaign=campaign)
    if json_out:
        print_json(rows)
        return
    from rich.console import Console

    Console().print(render.model_table(rows))


@app.command("show")
def show(model_id: IdArg, json_out: JsonOpt = False) -> None:
    """One model: held-out errors before (current model) and after (this one), lineage, data."""
    from cspflow.models import get_model, lineage
    from cspflow.store import get_database

    db = get_database()
    doc = get_model(db, model_id)
    doc.pop("file_id", None)
    chain = lineage(db, doc["model_id"])
    if json_out:
        print_json({**doc, "lineage": chain})
        return
    from rich.console import Console

    con = Console()
    for part in render.model_show(doc, chain):
        con.print(part)


@app.command("export")
def export(
    model_id: IdArg,
    dest: Annotated[Path, typer.Argument(help="File or existing directory to write the model to.")],
) -> None:
    """Copy a registry model file out of GridFS (usable as ``mace:PATH``)."""
    from cspflow.models import export_model
    from cspflow.store import get_database

    path = export_model(get_database(), model_id, dest)
    typer.echo(str(path))
