"""Tables of ``cspflow generate --list-templates`` (beside :mod:`cspflow.cli.render` and
:mod:`cspflow.cli.render_campaign`)."""

from __future__ import annotations

from typing import Any

__all__ = ["template_table", "template_line"]


def template_table(info: dict[str, Any]):
    """The fitting templates, best-ranked first: name, AFLOW label or id, cell, substitution."""
    from rich.table import Table

    table = Table(title=f"templates for {info['formula']} ({info['stoichiometry']}, "
                        f"<= {info['max_atoms']} atoms)")  # fmt: skip
    for col in ("#", "name", "id", "atoms", "sg", "substitution", "score"):
        table.add_column(
            col,
            overflow="fold",
            justify="right" if col in ("#", "atoms", "sg", "score") else "left",
        )
    for i, r in enumerate(info["templates"], 1):
        sub = " ".join(f"{a}>{b}" for a, b in r["substitution"].items())
        name = r["name"] + (f" [{r['builtin']}]" if r.get("builtin") else "")
        if r["origin"] != "aflow":
            name += f" ({r['origin']})"
        score = f"{r['score']:.2g}" + ("" if r["scorer"] == "substitution_probability" else " EN")
        table.add_row(str(i), name, r["id"], str(r["nsites"]), str(r["spacegroup"]), sub, score)
    return table


def template_line(info: dict[str, Any]) -> str:
    """One count line under the table."""
    by: dict[str, int] = {}
    for r in info["templates"]:
        by[r["origin"]] = by.get(r["origin"], 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in sorted(by.items()))
    large = len(info["too_large"])
    return (f"{len(info['templates'])} templates of {info['stoichiometry']} fit "
            f"{info['max_atoms']} atoms ({parts or 'none'}); {large} more need more atoms, "
            f"{sum(r['assignments'] for r in info['templates'])} element assignments")  # fmt: skip
