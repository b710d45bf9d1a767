"""``cspflow relax``: placeholder until its stage lands."""

from __future__ import annotations

from cspflow.cli.common import not_built


def relax() -> None:
    """Not built yet."""
    not_built("relax")
