"""``cspflow model list|show|export``: the MLIP model registry (``models`` + GridFS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cspflow.cli.common import JsonOpt, print_json

app = typer.Typer(no_args_is_help=True)

IdArg = Annotated[str, typer.Argument(help="Model id (a unique prefix is enough).")]


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metrics_row(metrics: dict | None) -> tuple[str, str]:
    m = metrics or {}
    return _fmt(m.get("energy_mae_mev_per_atom")), _fmt(m.get("force_mae_mev_per_a"))


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
    from rich.table import Table

    t = Table(
        title=f"MLIP registry ({len(rows)} model{'s' if len(rows) != 1 else ''}); "
        "held-out MAE: E meV/atom, F meV/A"
    )
    t.add_column("model_id", no_wrap=True)  # ids are copied into commands: never cut them
    t.add_column("chemsys")
    t.add_column("created")
    t.add_column("parent", no_wrap=True)
    for col in ("frames", "E MAE", "F MAE", "promoted"):
        t.add_column(col)
    for r in rows:
        e, f = _metrics_row((r.get("metrics") or {}).get("new"))
        t.add_row(
            r["model_id"], r["chemsys"], str(r.get("created_at", ""))[:10], r.get("parent") or "-",
            str((r.get("training_set") or {}).get("n_frames", "-")), e, f,
            "yes" if r.get("promoted") else "no",
        )  # fmt: skip
    Console().print(t)


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
    from rich.table import Table

    con = Console()
    ts = doc.get("training_set") or {}
    con.print(f"[bold]{doc['model_id']}[/bold]  {doc['chemsys']}  created {str(doc['created_at'])[:19]}"
              f"  campaign {doc.get('campaign') or '-'} iteration {doc.get('iteration', '-')}")  # fmt: skip
    con.print(f"lineage: {' <- '.join(chain)}")
    if doc.get("foundation_model"):
        con.print(f"fine-tuned from: {doc['foundation_model']}")
    con.print(
        f"promoted: {'yes' if doc.get('promoted') else 'no'} ({doc.get('promotion_reason', '')})"
    )
    metrics = doc.get("metrics") or {}
    t = Table(title=f"held-out split: {ts.get('n_test', 0)} frames of "
                    f"{len(ts.get('test_candidate_ids', []))} candidate(s), hash {ts.get('test_hash', '')}")  # fmt: skip
    t.add_column("")
    t.add_column("model", no_wrap=True)
    t.add_column("energy MAE (meV/atom)")
    t.add_column("force MAE (meV/A)")
    for label, key in (("before (current)", "current"), ("after (this model)", "new")):
        m = metrics.get(key)
        e, f = _metrics_row(m)
        t.add_row(label, (m or {}).get("model", "-") if m else "none", e, f)
    con.print(t)
    e0s = ", ".join(f"{el} {v:.4f}" for el, v in sorted((doc.get("e0s") or {}).items()))
    con.print(
        f"training set: {ts.get('n_frames', 0)} frames ({ts.get('n_train', 0)} train, "
        f"{ts.get('n_test', 0)} test; {ts.get('n_final', 0)} final, {ts.get('n_ionic', 0)} ionic) "
        f"from {len(ts.get('candidate_ids', []))} candidates, hash {ts.get('set_hash', '')}"
    )
    con.print(f"E0s (eV): {e0s or '-'}")
    if doc.get("committee"):
        con.print(f"committee: {', '.join(doc['committee'])}")


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
