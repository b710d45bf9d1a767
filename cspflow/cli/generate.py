"""``cspflow generate``: unique candidate structures for a composition, written as CIFs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cspflow.cli import render
from cspflow.cli.common import JsonOpt, print_json


def generate(
    composition: Annotated[str, typer.Argument(help="Formula with integer amounts, e.g. MgAl2O4.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Directory for the CIFs and summary.json (required unless --list-templates).",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="Number of unique structures wanted.")] = 20,
    max_atoms: Annotated[int, typer.Option("--max-atoms", help="Largest cell (atoms).")] = 20,
    sources: Annotated[
        str | None,
        typer.Option(
            "--sources",
            help="Weighted sources: random_symmetric, prototype, mutation, external, template "
            "(e.g. random_symmetric:0.8,prototype:0.2, the default: DEFAULT_SOURCES of "
            "cspflow.generate.batch).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed (same seed, same structures).")
    ] = 0,
    external: Annotated[
        list[Path] | None,
        typer.Option("--external", help="Structure file or directory to ingest (repeatable)."),
    ] = None,
    prototype_file: Annotated[
        list[Path] | None,
        typer.Option("--prototype-file", help="Extra prototype structure file (repeatable)."),
    ] = None,
    register: Annotated[
        bool,
        typer.Option(
            "--register/--no-register",
            help="Deduplicate against and store into the campaign database (needed for mutation).",
        ),
    ] = False,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="Campaign name to record.")
    ] = None,
    time_limit: Annotated[
        float, typer.Option("--time-limit", help="Seconds allowed per PyXtal structure.")
    ] = 10.0,
    spacegroup_prior: Annotated[
        str,
        typer.Option(help="random_symmetric's space-group prior: uniform, aflow or pyxtal_mp."),
    ] = "uniform",
    wyckoff: Annotated[
        str, typer.Option(help="Wyckoff positions: pyxtal (its own choice) or fewest_sites.")
    ] = "pyxtal",
    list_templates: Annotated[
        bool,
        typer.Option(
            "--list-templates",
            help="Only list the structure types the template source would use (AFLOW, "
            "built-in, and with --register the database's), best-ranked first; write nothing.",
        ),
    ] = False,
    ranking: Annotated[
        str,
        typer.Option(
            "--ranking", help="Template ranking: substitution, electronegativity, random."
        ),
    ] = "substitution",
    json_out: JsonOpt = False,
) -> None:
    """Generate unique candidate structures and write them as CIFs plus summary.json."""
    import json

    from cspflow.dedup.index import MemoryIndex, MongoIndex
    from cspflow.errors import CspflowError
    from cspflow.generate.batch import add_source_files, generate_batch, load_parents, parse_sources
    from cspflow.generate.composition import parse_target
    from cspflow.generate.sources import SourceContext

    # Validate everything before touching --out: a user error leaves nothing behind.
    target = parse_target(composition, max_atoms)
    if ranking not in ("substitution", "electronegativity", "random"):
        raise CspflowError(
            f"--ranking {ranking!r} is unknown; choose substitution, electronegativity or random"
        )
    if list_templates:
        _list_templates(target, ranking, register, json_out)
        return
    if out is None:
        raise CspflowError("--out is required; give a directory for the CIFs (or --list-templates)")
    if n < 1:
        raise CspflowError(f"--n must be at least 1 (got {n}); ask for one or more structures")
    weights = parse_sources(sources)
    ext_files = [str(p) for p in external or []]
    if "external" in weights and not ext_files:
        raise CspflowError("the external source needs files; add --external PATH")
    if "mutation" in weights and not register:
        raise CspflowError(
            "the mutation source takes its parents from the database; add --register "
            "(or leave mutation out of --sources)"
        )
    # Reads every file now: an unreadable one stops the run before anything is written.
    weights, options = add_source_files(weights, n, external=ext_files,
                                        prototypes=[str(p) for p in prototype_file or []])  # fmt: skip
    if "random_symmetric" in weights:
        from cspflow.generate.sources import RandomSymmetric

        # a bad prior or Wyckoff choice stops here, before anything is written
        RandomSymmetric(spacegroup_prior=spacegroup_prior, wyckoff=wyckoff)
        options["random_symmetric"] = {"spacegroup_prior": spacegroup_prior, "wyckoff": wyckoff}
    if "template" in weights:
        from cspflow.generate.templates import require_templates

        require_templates(target)  # none of this stoichiometry: one line, nothing written
        options["template"] = {"ranking": ranking, "database": register}
    if out.exists() and not out.is_dir():
        raise CspflowError(f"--out {out} is a file; give a directory")

    db = None
    if register:
        from cspflow.store import get_database

        db = get_database()
    context = SourceContext(
        time_limit=time_limit,
        parents=load_parents(db, target.formula)
        if db is not None and "mutation" in weights
        else [],
    )
    index = MongoIndex(db) if db is not None else MemoryIndex()
    if db is not None and "template" in weights:
        from cspflow.generate.templates import with_stored_templates

        weights, options = with_stored_templates(db, target, weights, n, options)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"[bold]{target.formula}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("unique, {task.fields[attempts]} tried"),
        TimeElapsedColumn(),
        transient=json_out,
        console=_stderr(),
    ) as bar:
        task = bar.add_task("generate", total=n, attempts=0)
        result = generate_batch(
            target,
            n,
            index,
            sources=weights,
            seed=seed,
            context=context,
            source_options=options,
            campaign=campaign,
            progress=lambda new, tried: bar.update(task, completed=new, attempts=tried),
        )

    out.mkdir(parents=True, exist_ok=True)
    from pymatgen.io.cif import CifWriter

    rows = []
    for i, (cid, gen, fp) in enumerate(result.new):
        name = f"{i:04d}-{cid}.cif"
        CifWriter(gen.structure).write_file(out / name)
        rows.append(render.generate_row(cid, name, gen, fp))
    summary = render.generate_json(result.summary, max_atoms, rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if json_out:
        print_json(summary)
        return
    line, warning = render.generate_lines(result.summary, target.formula, out, n, max_atoms)
    typer.echo(line)
    if warning is not None:
        typer.echo(warning, err=True)


def _list_templates(target, ranking: str, register: bool, json_out: bool) -> None:
    """Print the templates that fit the target (``--list-templates``)."""
    from cspflow.cli import render_templates
    from cspflow.generate.templates import Template, describe, require_templates, stored_templates

    stored = []
    if register:
        from cspflow.store import get_database

        stored = stored_templates(get_database(), target)
    require_templates(target, stored=stored)
    info = describe(Template(ranking=ranking, stored=stored), target)
    if json_out:
        print_json(info)
        return
    from cspflow.cli.common import console

    console().print(render_templates.template_table(info))
    typer.echo(render_templates.template_line(info))


def _stderr():
    from cspflow.cli.common import err_console

    return err_console()
