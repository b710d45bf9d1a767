"""Settings and documents of the MLIP pre-relaxation, selection and re-screening stages.

:class:`PrerelaxSettings`, :class:`SelectSettings` and :class:`RescreenSettings` are the
stages' scientific settings, each default written once: the campaign spec's ``prerelax:`` and
``select:`` blocks are these classes (plus campaign-level fields), and the Makers hold them.
``relaxed.mlip`` on a candidate document is a :class:`MlipRelaxDoc`; a prerelax job returns a
:class:`PrerelaxSummary` and a select job a :class:`SelectionSummary` (small: ids and counts,
never structures).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cspflow.schemas.dft import Dispersion, DispersionName
from cspflow.schemas.fidelity import Fidelity

__all__ = [
    "PrerelaxSettings",
    "SelectSettings",
    "RescreenSettings",
    "RelaxFilters",
    "PruneSettings",
    "CommitteeDoc",
    "MlipRelaxDoc",
    "PrerelaxSummary",
    "SelectionSummary",
]

SCHEMA_VERSION = "1"
#: ``relaxed.mlip`` layout: 2 since the space group is a number (was a symbol)
MLIP_RELAX_SCHEMA_VERSION = 2


class RelaxFilters(BaseModel):
    """Safety filters applied before and during an MLIP relaxation.

    A candidate that trips one is marked failed with the reason; the batch goes on.
    """

    isolated_distance: float = Field(
        6.0, description="An atom with no neighbour within this distance (A) is isolated."
    )
    min_distance_ratio: float = Field(
        0.5,
        description="Two atoms closer than this fraction of the sum of their covalent radii "
        "overlap (checked before and every check_every steps during relaxation).",
    )
    max_force: float = Field(
        500.0, description="Largest allowed force component norm on any atom (eV/A)."
    )
    max_energy_drop_per_atom: float = Field(
        10.0,
        description="Largest allowed energy drop per atom from the starting structure, or "
        "from zero when the start is above zero (eV/atom): more means the model fell into an "
        "unphysical hole.",
    )
    max_volume_ratio: float = Field(
        4.0, description="Volume may change by at most this factor, up or down, from the start."
    )
    check_every: int = Field(10, description="Steps between geometry checks during relaxation.")


class PruneSettings(BaseModel):
    """Early stopping of hopeless candidates during an MLIP relaxation.

    The screening rule (on when ``enabled``): every structure first relaxes to the loose
    ``fmax_screen`` (held for ``screen_hold`` consecutive steps; or for at most
    ``screen_steps`` steps) and waits there, its optimizer kept;
    when every structure of the job has been screened, those within ``window`` eV/atom of the
    lowest screened energy of their composition go on to the tight ``fmax`` and the others are
    recorded as ``pruned``. The decision is made only on energies of structures that have
    (nearly) relaxed, never on a structure still far from its minimum.

    The descent rule (``descent: true``, LAQA-style, measured unsafe on random starts): every
    ``every`` steps (from ``min_steps`` on) a running structure is stopped when even the most it
    could still descend cannot bring it within ``window`` of the best so far::

        E_now - max(slope_factor * (E_{t-every} - E_now), sum|F|^2 / (2 stiffness N)
                    + (V/N) |sigma|^2 / (2 bulk_modulus))  >  E_best + window

    (energies per atom; the force and stress terms are the energy above the minimum of a
    harmonic well as soft as ``stiffness`` and ``bulk_modulus``). docs/relax.md has the
    measurements behind the defaults.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    enabled: bool = Field(
        False,
        description="Screen every structure to fmax_screen and finish only those within "
        "window of the best screened.",
    )
    window: float = Field(
        0.3,
        gt=0,
        description="eV/atom above the lowest screened energy of the composition beyond which "
        "a screened structure is not relaxed to fmax.",
    )
    screen_hold: int = Field(
        3,
        ge=1,
        description="Consecutive steps the largest force must stay below fmax_screen for a "
        "structure to count as screened (FIRE crosses saddles with small forces).",
    )
    screen_steps: int | None = Field(
        None,
        ge=1,
        description="Step cap of the screening stage: a structure that has not reached "
        "fmax_screen by then is screened at its energy then (None: no cap but max_steps).",
    )
    descent: bool = Field(
        False,
        description="Also stop running structures every `every` steps on the descent bound "
        "(LAQA-style; pruned a structure that ends at the third-lowest minimum, docs/relax.md).",
    )
    every: int = Field(10, ge=1, description="Steps between pruning checks (k).")
    min_steps: int = Field(
        20, ge=0, description="No structure is stopped by the descent rule before this step."
    )
    slope_factor: float = Field(
        5.0,
        ge=0,
        description="The descent still possible is at least this many times the descent of "
        "the last `every` steps.",
    )
    stiffness: float = Field(
        1.0, gt=0, description="Softest force constant assumed for the remaining descent (eV/A^2)."
    )
    bulk_modulus: float = Field(
        0.05,
        gt=0,
        description="Softest bulk modulus assumed for the remaining cell descent (eV/A^3).",
    )


class PrerelaxSettings(BaseModel):
    """Scientific settings of the prerelax stage (one relaxation of a batch of candidates)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    model: str = Field("chgnet", description="chgnet | chgnet:PATH | mace:PATH | registry:ID")
    committee: list[str] = Field(default_factory=list, description="Extra models for disagreement.")
    fmax: float = Field(0.05, gt=0, description="Force convergence (eV/A).")
    max_steps: int = Field(300, ge=1, description="Per-candidate step limit.")
    optimizer: Literal["FIRE", "FIRE2", "BFGS", "LBFGS"] = Field(
        "BFGS",
        description="ASE optimizer on a FrechetCellFilter: FIRE, FIRE2, BFGS or LBFGS (BFGS "
        "with cell_factor 1 took half of FIRE's model evaluations, bench/README.md).",
    )
    finish_optimizer: Literal["FIRE", "FIRE2", "BFGS", "LBFGS"] | None = Field(
        None,
        description="With pruning on: a fresh optimizer of this kind takes each screened "
        "structure from fmax_screen to fmax (None: the screening optimizer goes on).",
    )
    fmax_screen: float | None = Field(
        0.15,
        gt=0,
        description="Loose force tolerance (eV/A) for screening: a structure that reaches it "
        "goes on to fmax only while within prune.window of the best (None: fmax for all).",
    )
    symmetry_stage: bool = Field(
        False,
        description="Relax first with the candidate's space group held (ASE FixSymmetry), "
        "then without it.",
    )
    cell_factor: float | None = Field(
        1.0,
        gt=0,
        description="exp_cell_factor of ASE's FrechetCellFilter: cell degrees of freedom are "
        "the log-strain times this, their forces the virial over it (1: the cell about as "
        "stiff as the atoms for BFGS, the virial converged to fmax; None: ASE's default, the "
        "number of atoms, docs/relax.md).",
    )
    maxstep: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Largest displacement of one optimizer step (A, ASE's maxstep; None: "
        "ASE's default, 0.2). 0.3 took 1.26x fewer BFGS evaluations on 64 random Al2O3 cells "
        "and 1.07x on 32 TiO2 cells, with more starts failing (bench/README.md).",
    )
    symmetry_rattle: float = Field(
        0.05,
        ge=0,
        description="With symmetry_stage: displace every atom by this much (A, random "
        "direction) before the unconstrained finish, so a symmetric saddle point can relax "
        "on to the minimum beside it (0: finish from the symmetric structure).",
    )
    prune: PruneSettings = Field(
        default_factory=PruneSettings, description="Early stopping of hopeless candidates."
    )
    batch_atoms: int | None = Field(
        None,
        ge=1,
        description="Atoms in flight per model call (None: the model's default, docs/relax.md).",
    )
    filters: RelaxFilters = Field(default_factory=RelaxFilters, description="Safety filters.")
    batched: bool | None = Field(
        None, description="Batched model evaluation (None: when the model supports it)."
    )
    max_seconds: float | None = Field(None, gt=0, description="Wall-time limit per candidate (s).")
    dedup: bool = Field(True, description="Deduplicate the relaxed structures.")
    dispersion: DispersionName = Field(
        None,
        description="Dispersion correction added to the model's energy, forces and stress: "
        "`d3bj` (D3(BJ) with PBE parameters, the functional CHGNet and MACE-MP learned); "
        "None: the model alone.",
    )

    @model_validator(mode="after")
    def _screen_looser_than_fmax(self) -> PrerelaxSettings:
        if self.fmax_screen is not None and self.fmax_screen < self.fmax:
            raise ValueError(
                f"fmax_screen ({self.fmax_screen:g}) must be at least fmax ({self.fmax:g})"
            )
        return self


class SelectSettings(BaseModel):
    """Scientific settings of the select stage (which prerelaxed candidates go on to DFT)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    top_k: int = Field(5, ge=0, description="Lowest-energy unique structures per composition.")
    energy_window: float = Field(0.05, ge=0, description="eV/atom above the lowest.")
    uncertain_k: int = Field(0, ge=0, description="Extra most-uncertain candidates (committee).")
    uncertainty: Literal["force_std", "energy_std"] = Field(
        "force_std", description="Committee disagreement that ranks the uncertain ones."
    )


class RescreenSettings(BaseModel):
    """Scientific settings of re-screening with a newly promoted model."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    top: int = Field(
        3, ge=0, description="Per formula, stored candidates relaxed again by a promoted model."
    )
    prerelax: PrerelaxSettings = Field(
        default_factory=PrerelaxSettings, description="How they are relaxed again."
    )


class CommitteeDoc(BaseModel):
    """Disagreement of a committee of models on the relaxed structure."""

    energy_std: float = Field(description="Std of the energy per atom across models (eV/atom).")
    force_std: float = Field(
        description="Max over atoms of the RMS deviation of force vectors from the mean (eV/A)."
    )
    model_ids: list[str] = Field(default_factory=list, description="Committee members.")


class MlipRelaxDoc(BaseModel):
    """The ``relaxed.mlip`` sub-document of a candidate."""

    structure: dict[str, Any] | None = Field(
        None, description="Relaxed (or last) structure, pymatgen Structure.as_dict()."
    )
    energy_per_atom: float | None = Field(None, description="MLIP energy per atom (eV).")
    spacegroup: int | None = Field(
        None, description="Space group number after relaxation (symprec 0.1; None: not found)."
    )
    spacegroup_symbol: str | None = Field(
        None, description="Hermann-Mauguin symbol of that space group."
    )
    steps: int = Field(0, description="Optimizer steps taken.")
    converged: bool = Field(False, description="Whether max force fell below fmax.")
    fmax: float | None = Field(None, description="Final max force incl. cell (eV/A).")
    model_id: str = Field(description="Model that relaxed it.")
    dispersion: Dispersion | None = Field(
        None, description="Dispersion correction added to the model's energy (None: none)."
    )
    optimizer: str = Field("FIRE", description="FIRE or BFGS (with FrechetCellFilter).")
    committee: CommitteeDoc | None = Field(None, description="Committee disagreement, if any.")
    key: str = Field(description="Content hash of structure + settings + model id.")
    device: str | None = Field(None, description="cpu or cuda.")
    wall_s: float | None = Field(None, description="Wall time of the batch it belonged to (s).")
    status: Literal["converged", "pruned", "failed"] | None = Field(
        None, description="How the relaxation ended (None: recorded before statuses existed)."
    )
    reason: str | None = Field(
        None, description="Why it was pruned or failed, with the numbers that decided it."
    )
    evaluations: int | None = Field(None, description="Model evaluations of this structure.")
    relax_wall_s: float | None = Field(
        None, description="Wall time from entering the batch to leaving it (s)."
    )
    schema_version: int = Field(
        MLIP_RELAX_SCHEMA_VERSION,
        description="Layout version (2: space group as a number, symbol in its own field).",
    )
    fidelity: Fidelity | None = Field(
        None, description="Level of theory of the energy (the model and its dispersion)."
    )


class PrerelaxSummary(BaseModel):
    """What a prerelax job returns: counts and ids, no structures."""

    model_id: str = Field(description="Model that relaxed the batch.")
    dispersion: Dispersion | None = Field(
        None, description="Dispersion correction added to the model's energy (None: none)."
    )
    device: str = Field(description="cpu or cuda.")
    batched: bool = Field(description="Whether the model evaluated the batch in one pass.")
    n_candidates: int = Field(description="Candidates in the batch.")
    relaxed: list[str] = Field(default_factory=list, description="Ids relaxed in this run.")
    reused: list[str] = Field(
        default_factory=list, description="Ids whose stored result had the same key (not redone)."
    )
    failed: dict[str, str] = Field(default_factory=dict, description="Id -> failure reason.")
    pruned: dict[str, str] = Field(
        default_factory=dict, description="Id -> why it was stopped early (also in failed)."
    )
    evaluations: int = Field(0, description="Model evaluations of the structures relaxed here.")
    steps: int = Field(0, description="Optimizer steps of the structures relaxed here.")
    duplicates: dict[str, str] = Field(
        default_factory=dict, description="Id -> id of the candidate it relaxed into."
    )
    lowest: dict[str, float] = Field(
        default_factory=dict, description="Reduced formula -> lowest energy per atom (eV)."
    )
    wall_s: float = Field(0.0, description="Wall time of the job (s).")
    schema_version: str = SCHEMA_VERSION


class SelectionSummary(BaseModel):
    """What a select job returns."""

    selected: list[str] = Field(default_factory=list, description="Ids sent on to DFT.")
    reasons: dict[str, Literal["lowest", "uncertain"]] = Field(
        default_factory=dict, description="Id -> why it was selected."
    )
    by_formula: dict[str, list[str]] = Field(
        default_factory=dict, description="Reduced formula -> selected ids, lowest energy first."
    )
    committee: list[str] = Field(
        default_factory=list,
        description="Model ids of the committee whose disagreement ranked the uncertain picks "
        "(empty: no committee).",
    )
    committee_source: Literal["learned", "prerelax"] | None = Field(
        None,
        description="``learned``: the committee a learning round trained, evaluated by the "
        "selection; ``prerelax``: the disagreement prerelax stored (prerelax.committee).",
    )
    spread: dict[str, float] = Field(
        default_factory=dict,
        description="Id -> committee disagreement (the ``uncertainty`` measure) of each "
        "candidate picked as uncertain.",
    )
    schema_version: str = SCHEMA_VERSION
