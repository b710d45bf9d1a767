"""``cspflow relax``: relax structure files ad hoc with an MLIP (no database needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt, err_console, print_json

__all__ = ["relax"]


def relax(
    inp: Annotated[
        Path, typer.Argument(metavar="IN", help="A structure file or a directory of them.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for relaxed CIFs.")],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="chgnet, chgnet:PATH, mace:PATH or registry:MODEL_ID."),
    ] = "chgnet",
    fmax: Annotated[float, typer.Option("--fmax", help="Force convergence (eV/A).")] = 0.05,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Steps per structure.")] = 300,
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="FIRE, FIRE2, BFGS or LBFGS.")
    ] = "BFGS",
    cell_factor: Annotated[
        float,
        typer.Option(
            "--cell-factor",
            help="exp_cell_factor of the cell filter (0: ASE's default, the number of atoms).",
            min=0,
        ),
    ] = 1.0,
    maxstep: Annotated[
        float,
        typer.Option(
            "--maxstep",
            help="Largest step of the optimizer (A; 0: ASE's default, 0.2).",
            min=0,
            max=1.0,
        ),
    ] = 0.0,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda (default: settings).")
    ] = None,
    dispersion: Annotated[
        str | None,
        typer.Option("--dispersion", help="d3bj adds D3(BJ) (PBE parameters) to the model."),
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
    from cspflow.prerelax.relax import OPTIMIZERS, relax_structures

    if optimizer.upper() not in OPTIMIZERS:
        raise CspflowError(
            f"unknown optimizer {optimizer!r}; use --optimizer FIRE, FIRE2, BFGS or LBFGS"
        )
    from cspflow.schemas.dft import check_dispersion

    try:
        dispersion = check_dispersion(dispersion)
    except ValueError as exc:
        raise CspflowError(f"--dispersion: {exc}") from None
    items = read_named_structures([inp])
    t0 = time.monotonic()
    mlip = load_model(model, device=device, dispersion=dispersion)
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
            cell_factor=cell_factor or None,
            maxstep=maxstep or None,
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
        rows.append(render.relax_row(name, o, cif))
    summary = render.relax_summary(mlip, fmax, rows, round(time.monotonic() - t0, 3))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if json_out:
        print_json(summary)
        return
    from cspflow.cli.common import console as out_console

    out_console().print(
        render.relax_table(
            rows, f"{mlip.model_id} + {dispersion}" if dispersion else mlip.model_id, out
        )
    )
