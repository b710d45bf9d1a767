"""Documents of the DFT stage: the ``dft:`` block of a campaign spec and the per-candidate result.

:class:`DftSpec` is what a campaign spec (or ``cspflow dft relax``) says about DFT;
:class:`DftResultDoc` is what the stage writes to ``candidates.relaxed.dft`` and returns from
each candidate job. The engine's own task document (emmet/atomate2 ``TaskDoc``) stays in the
jobflow JobStore; ``task_uuid`` points at it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DftEngine", "DftStatus", "DftSpec", "DftResultDoc", "DFT_SCHEMA_VERSION"]

DFT_SCHEMA_VERSION = 1

DftEngine = Literal["vasp", "cp2k", "gpaw", "none"]
DftStatus = Literal["converged", "unconverged", "failed"]


class DftSpec(BaseModel):
    """Scientific DFT settings of a campaign (stored with every job)."""

    model_config = ConfigDict(extra="forbid")

    engine: DftEngine = Field(
        "gpaw", description="DFT code; `none` keeps the MLIP energy as final."
    )
    preset: str | None = Field(
        None,
        description="Named parameter set of the engine (see cspflow.dft.presets.PRESETS); "
        "None picks the engine's default.",
    )
    relax: Literal["cell", "positions", "static"] | None = Field(
        None, description="What to optimise; None keeps the preset's choice."
    )
    fmax: float | None = Field(None, description="Force threshold (eV/A); None keeps the preset's.")
    steps: int | None = Field(None, description="Maximum ionic steps; None keeps the preset's.")
    kpoint_density: float | None = Field(
        None,
        description="GPAW k-point density (points per reciprocal Angstrom, ASE convention); "
        "None keeps the preset's.",
    )
    incar: dict[str, Any] = Field(
        default_factory=dict, description="VASP INCAR overrides, applied last."
    )
    kpoints: dict[str, Any] = Field(
        default_factory=dict,
        description="VASP k-point overrides (pymatgen user_kpoints_settings, e.g. "
        "{'reciprocal_density': 64}).",
    )
    cp2k: dict[str, Any] = Field(
        default_factory=dict,
        description="CP2K overrides (atomate2 user_input_settings, e.g. {'cutoff': 400}).",
    )
    gpaw: dict[str, Any] = Field(
        default_factory=dict, description="GPAW calculator keyword overrides (e.g. {'ecut': 400})."
    )
    potcar_spec: bool = Field(
        False,
        description="VASP: write POTCAR.spec (symbols) instead of POTCAR; for input-only runs "
        "and tests where POTCARs are not available.",
    )
    enmax: dict[str, float] = Field(
        default_factory=dict,
        description="VASP ENMAX per element for ENCUT scaling (FUSE2 preset) when POTCARs are "
        "not readable on the submitting machine.",
    )


class DftResultDoc(BaseModel):
    """One candidate's DFT outcome, as stored at ``candidates.relaxed.dft``."""

    schema_version: int = Field(DFT_SCHEMA_VERSION, description="Version of this document.")
    candidate_id: str | None = Field(None, description="The candidate this result belongs to.")
    campaign: str | None = Field(
        None, description="Campaign that ran it, whose DFT budget it counts against (None: ad hoc)."
    )
    engine: DftEngine = Field(..., description="DFT code that produced the result.")
    preset: str = Field(..., description="Preset name the settings came from.")
    settings_hash: str = Field(
        ..., description="Content hash of (input structure + engine + resolved settings)."
    )
    status: DftStatus = Field(..., description="converged / unconverged / failed.")
    reason: str | None = Field(None, description="Why the run failed or did not converge.")
    structure: dict | None = Field(None, description="Final structure (pymatgen as_dict).")
    spacegroup: int | None = Field(None, description="Space group number of the final structure.")

    @field_validator("structure", mode="before")
    @classmethod
    def _structure_as_dict(cls, value: Any) -> Any:
        # jobflow's store decodes the stored dict back into a pymatgen Structure
        return value.as_dict() if hasattr(value, "as_dict") else value

    energy: float | None = Field(None, description="Final total energy (eV).")
    energy_per_atom: float | None = Field(None, description="Final energy per atom (eV/atom).")
    nsites: int | None = Field(None, description="Atoms in the final structure.")
    task_uuid: str | None = Field(
        None, description="uuid of the engine job whose TaskDoc is in the JobStore."
    )
    wall_time_s: float | None = Field(None, description="Wall time of the engine job (s).")
    reused: bool = Field(
        False, description="True when a stored converged result was returned without a rerun."
    )

    @property
    def usable(self) -> bool:
        """Whether the result may be used as a hull point or training data."""
        return self.status == "converged" and self.energy_per_atom is not None
