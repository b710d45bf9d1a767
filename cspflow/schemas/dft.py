"""Documents of the DFT stage: the ``dft:`` block of a campaign spec and the per-candidate result.

:class:`DftSpec` is what a campaign spec (or ``cspflow dft relax``) says about DFT;
:class:`DftResultDoc` is what the stage writes to ``candidates.relaxed.dft`` and returns from
each candidate job. The engine's own task document (emmet/atomate2 ``TaskDoc``) stays in the
jobflow JobStore; ``task_uuid`` points at it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cspflow.schemas.fidelity import Fidelity, dft_fidelity

__all__ = [
    "DftEngine",
    "DftStatus",
    "DftSpec",
    "DftResultDoc",
    "DFT_SCHEMA_VERSION",
    "DEFAULT_PRESET",
    "spec_fidelity",
]

#: 2: ``fidelity`` and ``duplicate_of`` (per fidelity)
DFT_SCHEMA_VERSION = 2
#: the preset an engine uses when the spec names none (cspflow.dft.presets.PRESETS)
DEFAULT_PRESET = {"vasp": "mp", "cp2k": "fast", "gpaw": "fast", "none": "none"}
#: settings that steer the run or its output, not the energy (left out of the fidelity hash)
_NOT_ENERGY = {
    "incar": {"NSW", "EDIFFG", "IBRION", "ISIF", "POTIM", "LWAVE", "LCHARG", "LAECHG", "LVTOT",
              "NCORE", "NPAR", "KPAR", "LORBIT", "NELM", "NELMIN"},
    "cp2k": {"activate_motion", "max_scf", "eps_scf"},
    "gpaw": {"txt", "maxiter", "parallel", "convergence"},
}  # fmt: skip

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
    dispersion: str | None = Field(
        None, description="Dispersion correction (e.g. d3bj); part of the fidelity."
    )
    correction: Literal["mp2020"] | None = Field(
        None,
        description="Energy-correction scheme (mp2020: MaterialsProject2020Compatibility); "
        "VASP only, part of the fidelity.",
    )

    @model_validator(mode="after")
    def _correction_needs_vasp(self) -> DftSpec:
        if self.correction is not None and self.engine != "vasp":
            raise ValueError(
                f"dft.correction {self.correction!r} applies to VASP energies only, not to "
                f"engine {self.engine!r}; remove it or use engine vasp"
            )
        return self

    def fidelity(self) -> Fidelity | None:
        """The fidelity of this spec's DFT energies (None for engine ``none``)."""
        return spec_fidelity(self)


def _functional(spec: DftSpec) -> str:
    if spec.engine == "gpaw":
        return str(spec.gpaw.get("xc", "PBE"))
    if spec.engine == "vasp":
        incar = {str(k).upper(): v for k, v in spec.incar.items()}
        if incar.get("METAGGA"):
            return str(incar["METAGGA"]).upper()
        gga = str(incar.get("GGA", "PE")).upper()
        return {"PE": "PBE", "PS": "PBEsol", "RP": "RPBE", "91": "PW91"}.get(gga, gga)
    if spec.engine == "cp2k":
        return str(spec.cp2k.get("xc_functional", "PBE"))
    return "none"


def spec_fidelity(spec: DftSpec) -> Fidelity | None:
    """The fidelity of a :class:`DftSpec`'s energies (None for engine ``none``).

    The hash covers the engine, functional, preset and every override that changes the
    energy: VASP INCAR (less run-control tags such as NSW, EDIFFG, NCORE), k-points and ENMAX;
    CP2K input overrides (less motion/SCF-loop controls); GPAW calculator keywords and k-point
    density; dispersion and correction. Relax mode, fmax and steps steer the optimiser only.
    """
    if spec.engine == "none":
        return None
    preset = spec.preset or DEFAULT_PRESET[spec.engine]
    energy: dict[str, Any] = {}
    if spec.engine == "vasp":
        skip = _NOT_ENERGY["incar"]
        energy = {
            "incar": {
                str(k).upper(): v for k, v in spec.incar.items() if str(k).upper() not in skip
            },
            "kpoints": spec.kpoints,
            "enmax": spec.enmax,
        }
    elif spec.engine == "cp2k":
        energy = {"cp2k": {k: v for k, v in spec.cp2k.items() if k not in _NOT_ENERGY["cp2k"]}}
    elif spec.engine == "gpaw":
        gpaw = {k: v for k, v in spec.gpaw.items() if k not in _NOT_ENERGY["gpaw"] and k != "xc"}
        energy = {"gpaw": gpaw, "kpoint_density": spec.kpoint_density}
    return dft_fidelity(
        spec.engine, _functional(spec), preset, energy, spec.dispersion, spec.correction
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
    fidelity: Fidelity | None = Field(
        None, description="Level of theory of the energy (None only before migration)."
    )
    duplicate_of: str | None = Field(
        None,
        description="At this fidelity, the candidate whose DFT result is the same minimum at a "
        "lower energy (DFT deduplication compares energies of one fidelity only).",
    )

    @property
    def usable(self) -> bool:
        """Whether the result may be used as a hull point or training data."""
        return self.status == "converged" and self.energy_per_atom is not None
