"""``cspflow db start|stop|status``: the embedded SecantusDB server."""

from __future__ import annotations

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("start")
def start(json_out: JsonOpt = False) -> None:
    """Start the embedded database (or reuse the running one) and print its URI."""
    from cspflow.db import start_server

    info = start_server()
    if json_out:
        print_json(render.server_json(info))
    else:
        typer.echo(info.uri)


@app.command("stop")
def stop() -> None:
    """Stop the embedded database; its data stays in the data directory."""
    from cspflow.db import stop_server
    from cspflow.settings import get_settings

    if stop_server():
        typer.echo(f"stopped (data kept in {get_settings().data_dir})")
    else:
        typer.echo("not running")


@app.command("status")
def status(json_out: JsonOpt = False) -> None:
    """Say whether the database answers: the configured URI, else the embedded server."""
    from cspflow.db import ping, redact_uri, server_status
    from cspflow.settings import get_settings

    settings = get_settings()
    if settings.db_uri is not None:
        uri = redact_uri(settings.db_uri.get_secret_value())
        ok = ping(settings.db_uri.get_secret_value(), settings.db_server_selection_timeout_ms)
        if json_out:
            print_json({"configured_uri": uri, "reachable": ok})
        elif ok:
            typer.echo(f"reachable  {uri}")
        if not ok:
            from cspflow.errors import CspflowError

            raise CspflowError(f"cannot reach the database at {uri}; check CSPFLOW_DB_URI")
        return
    info = server_status()
    if json_out:
        print_json(render.server_status_json(info, get_settings().data_dir))
        return
    if info is None:
        typer.echo(f"not running (data dir {get_settings().data_dir})")
        raise typer.Exit(1)
    typer.echo(f"running  pid {info.pid}  {info.uri}  data {info.storage_path}")
