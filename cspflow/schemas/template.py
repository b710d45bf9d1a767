"""Settings of the ``template`` generator: which structure types, how ranked, how many.

:class:`TemplateSettings` is the campaign spec's ``generate.template`` block and the keyword
arguments of :class:`cspflow.generate.templates.Template`; each default is written once, here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TemplateSettings"]


class TemplateSettings(BaseModel):
    """How the ``template`` source picks, ranks and places known structure types."""

    model_config = ConfigDict(extra="forbid")

    per_iteration: int | None = Field(
        None,
        ge=1,
        description="Template candidates per composition and iteration (default: the "
        "template source's weight share of generate.per_iteration).",
    )
    ranking: Literal["substitution", "electronegativity", "random"] = Field(
        "substitution",
        description="Order of (template, element assignment) pairs: pymatgen's ion "
        "substitution probability (electronegativity where oxidation states cannot be "
        "guessed), electronegativity difference only, or a seeded shuffle.",
    )
    volume: Literal["dls", "covalent"] = Field(
        "dls",
        description="Initial volume: pymatgen's DLSVolumePredictor (data-mined bond lengths) "
        "or the prototype source's rule (closest pair at the sum of covalent radii).",
    )
    aflow: bool = Field(True, description="Use pymatgen's 288 AFLOW prototypes.")
    builtin: bool = Field(True, description="Use cspflow's built-in prototype library.")
    database: bool = Field(
        True,
        description="Also substitute relaxed structures of other compositions (any campaign) "
        "with the same stoichiometry stored in the database.",
    )
    database_level: Literal["dft", "mlip"] = Field(
        "dft",
        description="Which stored structures are templates: converged DFT relaxations, or "
        "MLIP relaxations.",
    )
    database_per_formula: int = Field(
        3, ge=1, description="Lowest-energy stored structures taken per other formula."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Template ids (AFLOW label, builtin:NAME, or candidate id) to leave out.",
    )
