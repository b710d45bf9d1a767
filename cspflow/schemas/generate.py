"""Settings of the generate stage: how many candidates, from which sources, within which limits.

:class:`GenerateSettings` is what :class:`cspflow.generate.maker.GenerateMaker` holds and the
campaign spec's ``generate:`` block is (plus its campaign-level seed); each default is written
once, here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cspflow.schemas.template import TemplateSettings

__all__ = ["GenerateSettings", "SOURCE_NAMES"]

#: generator names a weight may be given for
SOURCE_NAMES = ("random_symmetric", "prototype", "mutation", "external", "template")


class GenerateSettings(BaseModel):
    """Scientific settings of one generate job (one composition of one iteration)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    per_iteration: int = Field(
        40, ge=1, le=100_000, description="New candidates per composition and iteration."
    )
    sources: dict[str, float] = Field(
        default_factory=lambda: {"random_symmetric": 0.6, "prototype": 0.2, "mutation": 0.2},
        description="Generator name -> weight.",
    )
    constraints: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of cspflow.generate.constraints.Constraints (geometry limits).",
    )
    time_limit: float = Field(10.0, gt=0, description="Seconds allowed per PyXtal structure.")
    parent_pool: int = Field(
        20, ge=1, description="Lowest-energy stored structures mutation draws parents from."
    )
    template: TemplateSettings = Field(
        default_factory=TemplateSettings,
        description="The template source: ranking, initial volume, stored templates, count.",
    )
    source_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Keyword arguments per source (e.g. {'external': {'files': ['gen/']}}).",
    )

    @field_validator("sources")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        known = set(SOURCE_NAMES)
        bad = sorted(set(v) - known)
        if bad:
            raise ValueError(f"unknown source(s) {bad}; choose from {sorted(known)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError("weights must be >= 0 and not all zero")
        return v
