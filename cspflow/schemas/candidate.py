"""The candidate document (collection ``candidates``) and the generate stage's summary.

One candidate document per unique structure, shared by the generate, prerelax, select and DFT
stages. Later stages add ``relaxed.mlip`` / ``relaxed.dft`` sub-documents and fill the energies,
always through :mod:`cspflow.store.candidates`; :class:`CandidateDoc` declares every field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cspflow.schemas.dft import DftResultDoc
from cspflow.schemas.fidelity import Fidelity
from cspflow.schemas.prerelax import MlipRelaxDoc

__all__ = [
    "CANDIDATE_SCHEMA_VERSION",
    "CandidateDoc",
    "CandidateStatus",
    "DedupForm",
    "EnergyPerAtom",
    "GenerateSummary",
    "RelaxedForms",
    "ScreeningDoc",
]

#: 2: ``screenings`` replaces ``rescreen``/``rescreen_relaxed_by``; ``relaxed.mlip.spacegroup``
#: is a number; 3: every energy has a fidelity, DFT results per fidelity in
#: ``relaxed.dft_by_fidelity`` (see :mod:`cspflow.store.migrate`)
CANDIDATE_SCHEMA_VERSION = 3

CandidateStatus = Literal["generated", "prerelaxed", "selected", "dft_done", "failed"]


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class EnergyPerAtom(BaseModel):
    """Energies per atom (eV) at each level of theory."""

    mlip: float | None = Field(None, description="MLIP energy per atom after pre-relaxation (eV).")
    dft: float | None = Field(None, description="DFT energy per atom after relaxation (eV).")


class ScreeningDoc(BaseModel):
    """One re-screening of a candidate by a newly promoted model (``screenings`` grows only)."""

    campaign: str = Field(description="Campaign that re-screened it.")
    model_id: str = Field(description="The promoted model.")
    single_point_energy_per_atom: float | None = Field(
        None, description="The model's energy of the stored MLIP structure (eV/atom)."
    )
    previous_model_id: str | None = Field(None, description="Model of the stored MLIP result.")
    previous_energy_per_atom: float | None = Field(
        None, description="Energy the previous model gave (eV/atom)."
    )
    relaxed: bool = Field(
        False, description="Relaxed again with the model (whatever became of the relaxation)."
    )
    joins_iteration: int | None = Field(
        None,
        description="Iteration of the re-screening campaign whose selection it joins (it "
        "relaxed again and is usable); None otherwise.",
    )
    at: datetime = Field(default_factory=_now, description="UTC time of the re-screening.")
    fidelity: Fidelity | None = Field(None, description="Fidelity of the model's energies.")


class DedupForm(BaseModel):
    """A relaxed form of the candidate filed for deduplication (``dedup_forms.<level>``)."""

    fingerprint: list[float] = Field(description="Fingerprint of the relaxed structure.")
    structure: dict[str, Any] = Field(description="The relaxed structure (pymatgen dict).")
    spacegroup: int = Field(description="Space group number (spglib, symprec 0.1).")
    fidelity_key: str | None = Field(
        None, description="Fidelity of the relaxation that gave this form (DFT forms: per key)."
    )


class RelaxedForms(BaseModel):
    """The ``relaxed`` sub-document: one result per level of theory."""

    model_config = ConfigDict(extra="forbid")

    mlip: MlipRelaxDoc | None = Field(None, description="MLIP pre-relaxation.")
    dft: DftResultDoc | None = Field(
        None,
        description="The primary DFT result: the first fidelity that converged (what status "
        "and ``energy_per_atom.dft`` describe). Hulls, training sets and deduplication read "
        "``dft_by_fidelity``.",
    )
    dft_by_fidelity: list[DftResultDoc] = Field(
        default_factory=list,
        description="One DFT result per fidelity (``fidelity.key`` unique in the list).",
    )


class CandidateDoc(BaseModel):
    """One unique candidate structure: every field any stage writes is declared here.

    Written through :mod:`cspflow.store.candidates` (and created by :mod:`cspflow.dedup.index`).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(
        CANDIDATE_SCHEMA_VERSION,
        description="Layout version (2: re-screening as the append-only ``screenings``; 3: "
        "fidelities, DFT results per fidelity).",
    )
    candidate_id: str = Field(description="Unique id of the candidate.")
    campaign: str | None = Field(None, description="Campaign that generated it (its owner).")
    iteration: int | None = Field(None, description="Campaign iteration that generated it.")
    composition: dict[str, float] = Field(description="Element -> amount in the stored cell.")
    formula: str = Field(description="Reduced formula.")
    chemsys: str = Field(description="Elements sorted alphabetically, joined by '-'.")
    nsites: int = Field(description="Atoms in the stored cell.")
    structure: dict[str, Any] = Field(description="pymatgen Structure.as_dict() as generated.")
    spacegroup: int = Field(description="Space group number (spglib, symprec 0.1).")
    fingerprint: list[float] = Field(description="Scale-invariant partial-RDF fingerprint.")
    fingerprint_hash: str = Field(
        description="Hash of the rounded fingerprint (unique per chemsys)."
    )
    bucket: list[str] = Field(description="Dedup bucket keys this structure is filed under.")
    content_hash: str = Field(description="Hash of the exact structure (idempotency key).")
    source: str = Field(description="Generator: random_symmetric, prototype, mutation, external.")
    params: dict[str, Any] = Field(default_factory=dict, description="Generator parameters.")
    seed: int | None = Field(None, description="Random seed that reproduces the structure.")
    parent_ids: list[str] = Field(default_factory=list, description="Parent candidate ids.")
    status: CandidateStatus = Field("generated", description="Pipeline status.")
    energy_per_atom: EnergyPerAtom = Field(default_factory=EnergyPerAtom)
    relaxed: RelaxedForms = Field(
        default_factory=RelaxedForms, description="Relaxation results per level."
    )
    duplicate_of: str | None = Field(
        None, description="The candidate that stands for the same relaxed minimum, if another."
    )
    dedup_forms: dict[str, DedupForm] = Field(
        default_factory=dict, description="Relaxed forms filed for deduplication, by level."
    )
    e_above_hull: float | None = Field(None, description="Energy above the hull (eV/atom).")
    e_above_hull_level: Literal["mlip", "dft"] | None = Field(
        None, description="Level of the hull that gave e_above_hull."
    )
    hull_version: int | None = Field(None, description="Hull version that gave e_above_hull.")
    e_above_hull_fidelity: str | None = Field(
        None, description="Fidelity key of the hull that gave e_above_hull (written last)."
    )
    screenings: list[ScreeningDoc] = Field(
        default_factory=list, description="Re-screenings by promoted models, oldest first."
    )
    failure_reason: str | None = Field(None, description="Why the candidate failed, if it did.")
    created_at: datetime = Field(default_factory=_now, description="UTC creation time.")


class GenerateSummary(BaseModel):
    """What one generate job did (small: ids and counts, never structures)."""

    schema_version: int = Field(1, description="Version of this document's layout.")
    campaign: str | None = Field(None, description="Campaign name.")
    iteration: int | None = Field(None, description="Campaign iteration.")
    formula: str = Field(description="Reduced formula searched.")
    requested: int = Field(description="Number of unique candidates asked for.")
    candidate_ids: list[str] = Field(default_factory=list, description="Ids of new candidates.")
    n_new: int = Field(0, description="New unique candidates registered.")
    n_attempts: int = Field(0, description="Structures attempted.")
    n_duplicates: int = Field(0, description="Valid structures that matched a known one.")
    rejected: dict[str, int] = Field(default_factory=dict, description="Rejections by reason.")
    by_source: dict[str, int] = Field(
        default_factory=dict, description="New candidates per source."
    )
    spacegroups: dict[str, int] = Field(default_factory=dict, description="New per space group.")
    formula_units: dict[str, int] = Field(
        default_factory=dict, description="New per cell size (fu)."
    )
    seed: int = Field(description="Batch seed.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Source shares used (adapted, when adaptive)."
    )
    operator_weights: dict[str, float] = Field(
        default_factory=dict, description="Mutation operator shares used."
    )
    formula_unit_weights: dict[str, float] = Field(
        default_factory=dict, description="random_symmetric's formula-unit shares used."
    )
    arm_weights: dict[str, Any] = Field(
        default_factory=dict,
        description="The bandit's (space group, formula units) shares used: arms, top shares, "
        "the rest, outcomes (cspflow.generate.allocation.top_arms); empty without the bandit.",
    )
    elapsed_s: float = Field(0.0, description="Wall time (s).")
    complete: bool = Field(True, description="False when fewer than requested were found.")
