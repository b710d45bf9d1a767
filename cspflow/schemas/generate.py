"""Settings of the generate stage: how many candidates, from which sources, within which limits.

:class:`GenerateSettings` is what :class:`cspflow.generate.maker.GenerateMaker` holds and the
campaign spec's ``generate:`` block is (plus its campaign-level seed); each default is written
once, here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cspflow.schemas.template import TemplateSettings

__all__ = ["GenerateSettings", "SOURCE_NAMES", "SPACEGROUP_PRIORS"]

#: named space-group priors of random_symmetric (cspflow.generate.priors)
SPACEGROUP_PRIORS = ("uniform", "aflow")

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

    spacegroup_prior: str | dict[int, float] = Field(
        "uniform",
        description="Space-group draw of random_symmetric: uniform, aflow (frequency among the "
        "AFLOW prototypes with as many elements) or {space group: weight}.",
    )
    prior_mix: float = Field(
        0.2, ge=0, le=1,
        description="Uniform share mixed into the space-group prior (every compatible group "
        "keeps a probability).",
    )  # fmt: skip
    wyckoff: Literal["pyxtal", "fewest_sites"] = Field(
        "pyxtal",
        description="Wyckoff positions: PyXtal's own choice, or fewest_sites (assignments with "
        "fewer occupied orbits more likely).",
    )
    niche_distance: float = Field(
        0.3, ge=0,
        description="Smallest fingerprint distance between two members of the mutation "
        "population (0: no niching).",
    )  # fmt: skip
    adaptive: bool = Field(
        True,
        description="Adapt the shares of sources and mutation operators each iteration to "
        "which put structures in the population before.",
    )
    min_share: float = Field(
        0.05, ge=0, le=0.5, description="Smallest share an adapted source or operator keeps."
    )

    @field_validator("spacegroup_prior", mode="before")
    @classmethod
    def _prior(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v not in SPACEGROUP_PRIORS:
                raise ValueError(
                    f"unknown prior {v!r}; choose from {list(SPACEGROUP_PRIORS)} "
                    "or give {space group: weight}"
                )
            return v
        if not isinstance(v, dict) or not v:
            raise ValueError("give a prior name or a non-empty {space group: weight} mapping")
        out = {}
        for k, w in v.items():
            try:
                sg, weight = int(k), float(w)
            except (TypeError, ValueError):
                raise ValueError(f"entry {k!r}: {w!r} is not space group: weight") from None
            if not 1 <= sg <= 230 or weight < 0:
                raise ValueError(f"entry {k!r}: {w!r}: groups are 1-230, weights >= 0")
            out[sg] = weight
        if sum(out.values()) <= 0:
            raise ValueError("all prior weights are zero")
        return out

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
