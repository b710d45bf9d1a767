"""Documents of the learn stage: training-set description, metrics, registry record, job summary.

A registry record (:class:`ModelDoc`) is one document of the ``models`` collection; its file
lives in GridFS (bucket ``models``, ``file_id``), which is what ``registry:ID`` model specs read
(:func:`cspflow.mlip.fetch_registry_model`). A learn job returns a :class:`LearnSummary`.
"""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "LEARN_SCHEMA_VERSION",
    "TrainingSetDoc",
    "ModelMetrics",
    "ModelDoc",
    "LearnSummary",
]

LEARN_SCHEMA_VERSION = 1


class TrainingSetDoc(BaseModel):
    """What a model was trained and tested on (frame data stay in the database)."""

    chemsys: str = Field(
        description="Chemical system the set was drawn from (subsystems included)."
    )
    candidate_ids: list[str] = Field(
        default_factory=list, description="Candidates whose converged DFT relaxations gave frames."
    )
    test_candidate_ids: list[str] = Field(
        default_factory=list, description="Candidates whose frames form the held-out split."
    )
    n_frames: int = Field(0, description="Frames after filtering (train + test).")
    n_train: int = Field(0, description="Frames in the training split.")
    n_test: int = Field(0, description="Frames in the held-out split.")
    n_final: int = Field(0, description="Final (relaxed) frames.")
    n_ionic: int = Field(0, description="Frames sampled from ionic steps of the relaxations.")
    skipped: dict[str, int] = Field(
        default_factory=dict, description="Frames or candidates left out, counted per reason."
    )
    elements: list[str] = Field(default_factory=list, description="Elements present.")
    set_hash: str = Field(
        "", description="Hash of the frames' identities and labels (train + test)."
    )
    test_hash: str = Field("", description="Hash of the held-out frames' identities.")
    test_fraction: float = Field(0.2, description="Share of candidates (by hash) held out.")


class ModelMetrics(BaseModel):
    """Errors of one model on the held-out split."""

    model: str = Field(description="Model spec that was evaluated (chgnet, registry:ID, ...).")
    energy_mae_mev_per_atom: float | None = Field(
        None, description="Energy MAE per atom (meV/atom); None when the model could not run."
    )
    force_mae_mev_per_a: float | None = Field(
        None, description="Force component MAE (meV/A); None when the model could not run."
    )
    n_frames: int = Field(0, description="Held-out frames evaluated.")
    note: str | None = Field(None, description="Why no figures (e.g. an element not covered).")


class ModelDoc(BaseModel):
    """One registered MLIP (a document of the ``models`` collection)."""

    schema_version: int = Field(LEARN_SCHEMA_VERSION, description="Version of this document.")
    model_id: str = Field(description="Registry id (``mace-<sha256[:12]>`` of the file).")
    kind: str = Field("mace", description="Model family.")
    chemsys: str = Field(description="Chemical system the model was trained for.")
    elements: list[str] = Field(default_factory=list, description="Elements the model knows.")
    file_id: Any = Field(None, description="GridFS id of the model file (bucket ``models``).")
    filename: str = Field("", description="File name in GridFS.")
    sha256: str = Field("", description="SHA-256 of the model file.")
    parent: str | None = Field(
        None, description="Model this one replaces or was fine-tuned from (registry id or spec)."
    )
    foundation_model: str | None = Field(
        None, description="Model file fine-tuned from (naive fine-tuning); None: from scratch."
    )
    training_set: TrainingSetDoc = Field(description="Frames the model was trained on.")
    e0s: dict[str, float] = Field(
        default_factory=dict,
        description="Reference energy per element (eV), fitted by least squares on the training split.",
    )
    train_settings: dict[str, Any] = Field(
        default_factory=dict, description="mace_run_train hyperparameters and seed."
    )
    metrics: dict[str, ModelMetrics | None] = Field(
        default_factory=dict,
        description="Held-out errors: ``new`` (this model, after) and ``current`` (before).",
    )
    committee: list[str] = Field(
        default_factory=list, description="Other members of this model's committee (registry ids)."
    )
    committee_of: str | None = Field(None, description="Primary model when this is a member.")
    campaign: str | None = Field(None, description="Campaign that created the model.")
    iteration: int | None = Field(None, description="Iteration that created the model.")
    created_at: datetime.datetime = Field(description="When the model was registered (UTC).")
    train_time_s: float | None = Field(None, description="Wall time of training (s).")
    promoted: bool = Field(False, description="Whether the model became the current one.")
    promotion_reason: str = Field("", description="Why it was (not) promoted.")


class LearnSummary(BaseModel):
    """What a learn job returns (small: ids, counts and figures)."""

    chemsys: str = Field(description="Chemical system.")
    trained: bool = Field(description="Whether a model was trained and registered.")
    model_id: str | None = Field(None, description="Registry id of the new model.")
    promoted: bool = Field(False, description="Whether the new model became the current one.")
    reason: str = Field("", description="Promotion reason, or why nothing was trained.")
    current_model: str | None = Field(
        None, description="The model prerelax should use next (spec), after this job."
    )
    n_frames: int = Field(0, description="Frames in the training set (train + test).")
    metrics: dict[str, ModelMetrics | None] = Field(
        default_factory=dict, description="``new`` and ``current`` held-out errors."
    )
