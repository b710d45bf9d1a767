"""``cspflow generate``: placeholder until its stage lands."""

from __future__ import annotations

from cspflow.cli.common import not_built


def generate() -> None:
    """Not built yet."""
    not_built("generate")
