"""Documents of the DFT stage: the ``dft:`` block of a campaign spec and the per-candidate result.

:class:`DftSpec` is what a campaign spec (or ``cspflow dft relax``) says about DFT;
:class:`DftResultDoc` is what the stage writes to ``candidates.relaxed.dft`` and returns from
each candidate job. The engine's own task document (emmet/atomate2 ``TaskDoc``) stays in the
jobflow JobStore; ``task_uuid`` points at it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from cspflow.schemas.fidelity import Fidelity, dft_fidelity

__all__ = [
    "DftEngine",
    "DftStatus",
    "CorrectionScheme",
    "DftSpec",
    "EnergyCorrectionDoc",
    "DftResultDoc",
    "DFT_SCHEMA_VERSION",
    "MP_OFFLINE_REFERENCES",
    "Dispersion",
    "DISPERSIONS",
    "check_dispersion",
    "DispersionName",
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
# Energy-correction schemes (cspflow.dft.corrections): pymatgen's MaterialsProject2020Compatibility.
CorrectionScheme = Literal["mp2020"]
# VASP presets whose energies get the MP2020 correction unless the spec says `correction: null`.
MP2020_DEFAULT_PRESETS = ("mp",)
# The `references:` value of a campaign spec that means the Materials Project entries pymatgen
# ships (cspflow.dft.corrections.mp_reference_entries).
MP_OFFLINE_REFERENCES = "pymatgen:mp"
#: Dispersion corrections cspflow adds to an energy (DFT or MLIP): ``d3bj`` is Grimme's D3 with
#: Becke-Johnson damping, two-body terms only (no three-body ATM term), with the parameters of
#: the functional the energy comes from (PBE for CHGNet and MACE-MP, which learned PBE(+U) data)
Dispersion = Literal["d3bj"]
DISPERSIONS: tuple[str, ...] = ("d3bj",)


def check_dispersion(value: Any) -> str | None:
    """Return the canonical dispersion name (``None`` for none), or raise a one-line ValueError.

    Accepts ``None``, ``""`` and ``"none"`` (no correction) and the names of :data:`DISPERSIONS`
    in any case (``D3BJ``, ``d3(bj)``).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"dispersion must be a name ({', '.join(DISPERSIONS)}), not {value!r}")
    name = value.strip().lower().replace("(", "").replace(")", "").replace("-", "")
    if name in ("", "none"):
        return None
    if name not in DISPERSIONS:
        raise ValueError(
            f"unknown dispersion {value!r}; choose {' or '.join(DISPERSIONS)} (D3 with "
            "Becke-Johnson damping) or leave it out"
        )
    return name


#: a dispersion field: any spelling :func:`check_dispersion` accepts, stored canonical
DispersionName = Annotated[Dispersion | None, BeforeValidator(check_dispersion)]


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
    correction: CorrectionScheme | None = Field(
        None,
        description="Energy-correction scheme applied to converged DFT energies before they "
        "enter a hull: `mp2020` (pymatgen's MaterialsProject2020Compatibility, VASP only). "
        "Left out, the VASP `mp` preset gets `mp2020` and every other preset none; `null` "
        "turns it off.",
    )

    @model_validator(mode="after")
    def _correction_for_vasp_only(self) -> DftSpec:
        if self.correction is not None and self.engine != "vasp":
            raise ValueError(
                f"dft.correction {self.correction} is for VASP energies (MP-compatible inputs); "
                f"dft.engine {self.engine} has no correction scheme: remove dft.correction"
            )
        if (
            "correction" not in self.model_fields_set
            and self.engine == "vasp"
            and (self.preset or "mp") in MP2020_DEFAULT_PRESETS
        ):
            self.correction = "mp2020"
        return self

    dispersion: DispersionName = Field(
        None,
        description="Dispersion correction added to the DFT energy, forces and stress: `d3bj` "
        "(VASP IVDW=12, CP2K's DFTD3(BJ) pair potential, GPAW + the dftd3 package); None: none.",
    )

    @model_validator(mode="after")
    def _dispersion_needs_dft(self) -> DftSpec:
        if self.dispersion is not None and self.engine == "none":
            raise ValueError(
                "dispersion needs a DFT engine (gpaw, cp2k, vasp); for MLIP energies set "
                "prerelax.dispersion"
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


class EnergyCorrectionDoc(BaseModel):
    """An energy-correction scheme's verdict on one entry (candidate or reference)."""

    scheme: CorrectionScheme = Field(..., description="The scheme that processed the entry.")
    status: Literal["applied", "refused"] = Field(
        ..., description="applied: corrected energy below; refused: the scheme cannot process it."
    )
    reason: str | None = Field(None, description="Why the scheme refused the entry.")
    uncorrected_energy_per_atom: float | None = Field(
        None, description="The engine's energy per atom (eV/atom)."
    )
    correction_per_atom: float | None = Field(
        None, description="Sum of the scheme's adjustments per atom (eV/atom); 0 for elements."
    )
    corrected_energy_per_atom: float | None = Field(
        None, description="uncorrected + correction (eV/atom): the energy a corrected hull uses."
    )
    adjustments: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The scheme's adjustments: name and value (eV for the whole entry).",
    )

    @property
    def usable(self) -> bool:
        """Whether the corrected energy may enter a hull."""
        return self.status == "applied" and self.corrected_energy_per_atom is not None


class DftResultDoc(BaseModel):
    """One candidate's DFT outcome, as stored at ``candidates.relaxed.dft``."""

    schema_version: int = Field(DFT_SCHEMA_VERSION, description="Version of this document.")
    candidate_id: str | None = Field(None, description="The candidate this result belongs to.")
    campaign: str | None = Field(
        None, description="Campaign that ran it, whose DFT budget it counts against (None: ad hoc)."
    )
    engine: DftEngine = Field(..., description="DFT code that produced the result.")
    preset: str = Field(..., description="Preset name the settings came from.")
    dispersion: Dispersion | None = Field(
        None, description="Dispersion correction included in the energy (None: none)."
    )
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
    correction: EnergyCorrectionDoc | None = Field(
        None,
        description="The spec's energy-correction scheme applied to this converged result "
        "(energy and energy_per_atom stay the engine's uncorrected values); None: no scheme.",
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
