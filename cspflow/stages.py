"""Pipeline stage names and where each runs: the one place that decides routing.

Every cspflow job carries ``metadata={"stage": <name>, "campaign": ..., "iteration": ...}``;
:mod:`cspflow.scheduler.launchpad` turns the stage into the FireWorks ``_category`` of its firework.
"""

from __future__ import annotations

__all__ = ["STAGE_CATEGORY", "category_for"]

STAGE_CATEGORY: dict[str, str] = {
    "generate": "cpu",
    "prerelax": "gpu",
    "select": "cpu",
    "dft": "cpu",
    "hull": "cpu",
    "learn": "gpu",
    "rescreen": "gpu",
    "control": "cpu",
}


def category_for(stage: str | None) -> str:
    """Return the worker category ("gpu" or "cpu") for a stage; unknown stages run on cpu."""
    return STAGE_CATEGORY.get(stage or "", "cpu")
