"""Settings of the generate stage: how many candidates, from which sources, within which limits.

:class:`GenerateSettings` is what :class:`cspflow.generate.maker.GenerateMaker` holds and the
campaign spec's ``generate:`` block is (plus its campaign-level seed); each default is written
once, here.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cspflow.schemas.template import TemplateSettings

__all__ = ["GenerateSettings", "SOURCE_NAMES", "SPACEGROUP_PRIORS", "parse_spacegroup_prior"]

#: named space-group priors of random_symmetric (cspflow.generate.priors)
SPACEGROUP_PRIORS = ("uniform", "aflow", "pyxtal_mp")

#: generator names a weight may be given for
SOURCE_NAMES = ("random_symmetric", "prototype", "mutation", "external", "template")


def parse_spacegroup_prior(prior: Any) -> str | dict[int, float]:
    """A space-group prior: a name of :data:`SPACEGROUP_PRIORS` or ``{space group: weight}``
    (groups 1-230, weights >= 0, not all zero).

    Raises
    ------
    ValueError
        One line naming the bad value.
    """
    if isinstance(prior, str):
        if prior not in SPACEGROUP_PRIORS:
            raise ValueError(
                f"unknown space-group prior {prior!r}; choose from {', '.join(SPACEGROUP_PRIORS)} "
                "or give {space group: weight}"
            )
        return prior
    if not isinstance(prior, dict) or not prior:
        raise ValueError("a space-group prior mapping must be a non-empty {space group: weight}")
    out: dict[int, float] = {}
    for k, v in prior.items():
        try:
            sg, w = int(k), float(v)
        except (TypeError, ValueError):
            raise ValueError(f"space-group prior entry {k!r}: {v!r} is not group: number") from None
        if not 1 <= sg <= 230:
            raise ValueError(f"space-group prior: {sg} is not a space group number (1-230)")
        if w < 0 or not math.isfinite(w):
            raise ValueError(f"space-group prior: weight {v!r} of group {sg} must be >= 0")
        out[sg] = w
    if sum(out.values()) <= 0:
        raise ValueError("space-group prior: all weights are zero; give one positive weight")
    return out


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
        "AFLOW prototypes with as many elements), pyxtal_mp (frequency among the 88,678 "
        "structures of PyXtal's Materials Project table with as many atoms in the conventional "
        "cell) or {space group: weight}.",
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
    bandit: bool = Field(
        False,
        description="Allocate random_symmetric's draws over (space group, formula units) arms "
        "by Thompson sampling from iteration 1 on, the space-group prior as the prior "
        "(cspflow.generate.allocation).",
    )
    bandit_window: float = Field(
        0.05, gt=0, le=5,
        description="eV/atom above the composition's lowest MLIP energy within which a "
        "relaxed candidate rewards the arm it was drawn from.",
    )  # fmt: skip
    bandit_strength: float = Field(
        10.0, gt=0, le=10_000,
        description="Prior weight of each arm, in relaxations (the prior's Beta(m pi, m (1 - pi))).",
    )  # fmt: skip

    @field_validator("spacegroup_prior", mode="before")
    @classmethod
    def _prior(cls, v: Any) -> Any:
        return parse_spacegroup_prior(v)

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
