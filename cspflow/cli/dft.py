"""``cspflow dft relax``: run the DFT stage ad hoc on structure files (no campaign needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt

app = typer.Typer(no_args_is_help=True, help="Run the DFT stage ad hoc on structure files.")


@app.command("relax")
def relax(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Structure files (CIF, POSCAR, extxyz, ...) or directories of them."),
    ],
    engine: Annotated[str, typer.Option("--engine", help="gpaw | cp2k | vasp.")] = "gpaw",
    preset: Annotated[
        str | None, typer.Option("--preset", help="Engine preset (default: the engine's own).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for CIFs and summary.json.")] = Path(
        "dft-out"
    ),
    relax_kind: Annotated[
        str | None, typer.Option("--relax", help="cell | positions | static (preset's default).")
    ] = None,
    potcar_spec: Annotated[
        bool,
        typer.Option(
            "--potcar-spec", help="VASP: write POTCAR.spec instead of POTCAR (no POTCARs)."
        ),
    ] = False,
    dispersion: Annotated[
        str | None,
        typer.Option("--dispersion", help="d3bj adds D3(BJ) for the functional (default none)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Relax structure files with DFT; write relaxed CIFs and a JSON summary to --out."""
    import json

    from cspflow.chem import read_named_structures
    from cspflow.cli.common import err_console, print_json
    from cspflow.dft.run import relax_structures
    from cspflow.errors import CspflowError

    if engine not in ("gpaw", "cp2k", "vasp"):
        raise CspflowError(f"--engine must be gpaw, cp2k or vasp, not {engine!r}")
    from cspflow.schemas.dft import check_dispersion

    try:
        dispersion = check_dispersion(dispersion)
    except ValueError as exc:
        raise CspflowError(f"--dispersion: {exc}") from None
    structures = read_named_structures(inputs)
    spec = {"engine": engine, "preset": preset, "relax": relax_kind, "potcar_spec": potcar_spec,
            "dispersion": dispersion}  # fmt: skip

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = err_console()
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json or not console.is_terminal,
    ) as progress:
        task = progress.add_task(f"{engine} relax", total=len(structures))

        def tick(name: str) -> None:
            progress.update(task, advance=1, description=f"{engine} relax: {name} done")

        summary = relax_structures(structures, spec, out, on_done=tick)

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if as_json:
        print_json(summary)
        return
    from cspflow.cli.common import console as out_console

    out_console().print(render.dft_table(summary, engine))
    out_console().print(f"summary: {out / 'summary.json'}")
