"""``cspflow results hull|top NAME``: what a campaign found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt, print_json

app = typer.Typer(no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Campaign name.")]
FidelityOpt = Annotated[
    str | None,
    typer.Option(
        "--fidelity",
        help="Fidelity key of the hull to show (e.g. gpaw:PBE:fast:1a2b3c4d); default: the "
        "campaign's own, or the only one.",
    ),
]


def _campaign(db, name: str) -> dict:
    from cspflow.errors import CspflowError

    doc = db.campaigns.find_one({"name": name}, {"_id": 0, "chemsys": 1, "name": 1})
    if doc is None:
        names = sorted(db.campaigns.distinct("name"))
        raise CspflowError(f"no campaign named {name!r}; known: {', '.join(names) or 'none'}")
    return doc


@app.command("hull")
def hull(
    name: NameArg,
    plot: Annotated[Path | None, typer.Option(help="Write the hull plot (PNG) here.")] = None,
    fidelity: FidelityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The latest convex hull of the campaign's chemical system at one fidelity (the
    campaign's own by default), as a table or JSON."""
    from rich.console import Console

    from cspflow.errors import CspflowError
    from cspflow.hull import latest_hull, plot_hull
    from cspflow.store import get_database
    from cspflow.store.reports import choose_fidelity

    db = get_database()
    chemsys = _campaign(db, name)["chemsys"]
    key = choose_fidelity(db, name, chemsys, fidelity)
    doc = latest_hull(db, chemsys, key) if key is not None else latest_hull(db, chemsys)
    if doc is None:
        raise CspflowError(
            f"no hull yet for {chemsys}: campaign {name!r} has no relaxed structures"
        )
    if plot is not None:
        plot_hull(doc, plot)
    entries = sorted(doc["entries"], key=lambda e: (e["formula"], e["e_above_hull"]))
    if json_out:
        print_json(render.hull_json(chemsys, doc, entries, plot))
        return
    Console().print(render.hull_table(doc, entries))
    if not doc.get("complete", True):
        typer.echo(f"incomplete: {render.incomplete_reason(doc)}")
    if plot is not None:
        typer.echo(f"plot: {plot}")


@app.command("top")
def top(
    name: NameArg,
    n: Annotated[int, typer.Option("-n", help="How many structures.", min=1)] = 10,
    cif: Annotated[Path | None, typer.Option(help="Write each structure as a CIF here.")] = None,
    fidelity: FidelityOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The lowest-energy unique structures (best fidelity), ranked by E above hull.

    ``--json`` prints ``{"schema_version": 1, "structures": [...]}``; see docs/results.md.
    """
    from cspflow.store import get_database
    from cspflow.store.reports import top_structures

    db = get_database()
    _campaign(db, name)
    rows = top_structures(db, name, n=n, fidelity=fidelity)
    if cif is not None:
        from pymatgen.core import Structure

        cif.mkdir(parents=True, exist_ok=True)
        for r in rows:
            path = cif / f"{r['rank']:03d}_{r['formula']}_{r['candidate_id']}.cif"
            Structure.from_dict(r["structure"]).to(filename=str(path))
            r["cif"] = str(path)
    if json_out:
        data = render.top_json(rows)
        if cif is not None:
            for rec, r in zip(data["structures"], rows, strict=True):
                rec["cif"] = r["cif"]
        print_json(data)
        return
    from rich.console import Console

    at = f" at {rows[0]['fidelity_key']}" if rows and rows[0].get("fidelity_key") else ""
    Console().print(render.top_table(rows, f"{name}: lowest-energy unique structures{at}"))
    if cif is not None:
        typer.echo(f"{len(rows)} CIF file(s) in {cif}")
