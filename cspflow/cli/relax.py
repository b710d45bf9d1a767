"""``cspflow relax``: relax structure files ad hoc with an MLIP (no database needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli.common import JsonOpt, err_console, print_json

__all__ = ["relax"]


def relax(
    inp: Annotated[
        Path, typer.Argument(metavar="IN", help="A structure file or a directory of them.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for relaxed CIFs.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="chgnet, mace:PATH or registry:MODEL_ID.")
    ] = "chgnet",
    fmax: Annotated[float, typer.Option("--fmax", help="Force convergence (eV/A).")] = 0.05,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Steps per structure.")] = 300,
    optimizer: Annotated[str, typer.Option("--optimizer", help="FIRE or BFGS.")] = "FIRE",
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda (default: settings).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Relax structure files (positions and cell) with an MLIP; write CIFs and summary.json."""
    import json
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cspflow.chem import read_named_structures
    from cspflow.errors import CspflowError
    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    if optimizer.upper() not in ("FIRE", "BFGS"):
        raise CspflowError(f"unknown optimizer {optimizer!r}; use --optimizer FIRE or BFGS")
    items = read_named_structures([inp])
    t0 = time.monotonic()
    mlip = load_model(model, device=device)
    console = err_console()
    with Progress(
        TextColumn("[bold]relax"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=json_out,
    ) as bar:
        task = bar.add_task(f"{mlip.model_id} on {mlip.device}", total=len(items))

        def advance(index: int, outcome) -> None:
            bar.update(task, advance=1, description=f"{items[index][0]}")

        outcomes = relax_structures(
            [s for _, s in items],
            mlip,
            fmax=fmax,
            max_steps=max_steps,
            optimizer=optimizer,
            progress=advance,
        )
    from pymatgen.io.cif import CifWriter

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for (name, _), o in zip(items, outcomes, strict=True):
        cif = None
        if o.ok and o.structure is not None:
            cif = out / f"{name}.cif"
            CifWriter(o.structure, symprec=None).write_file(cif)
        rows.append(
            {
                "name": name,
                "formula": o.structure.composition.reduced_formula if o.structure else None,
                "converged": o.converged,
                "steps": o.steps,
                "energy_per_atom": o.energy_per_atom,
                "fmax": o.fmax,
                "spacegroup": o.spacegroup,
                "lattice_abc": list(o.structure.lattice.abc) if o.structure else None,
                "volume_per_atom": o.structure.volume / len(o.structure) if o.structure else None,
                "failure_reason": o.failure_reason,
                "cif": str(cif) if cif else None,
            }
        )
    summary = {
        "model_id": mlip.model_id,
        "device": mlip.device,
        "fmax": fmax,
        "n_structures": len(rows),
        "n_relaxed": sum(r["failure_reason"] is None for r in rows),
        "n_failed": sum(r["failure_reason"] is not None for r in rows),
        "wall_s": round(time.monotonic() - t0, 3),
        "structures": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if json_out:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"relaxed with {mlip.model_id} -> {out}")
    for col in ("name", "formula", "E/atom (eV)", "steps", "spacegroup", "status"):
        table.add_column(col)
    for r in rows:
        e = f"{r['energy_per_atom']:.4f}" if r["energy_per_atom"] is not None else "-"
        status = "ok" if r["failure_reason"] is None else f"failed: {r['failure_reason']}"
        table.add_row(
            r["name"], r["formula"] or "-", e, str(r["steps"]), r["spacegroup"] or "-", status
        )
    from cspflow.cli.common import console as out_console

    out_console().print(table)
