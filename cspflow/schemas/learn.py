"""Documents of the learn stage: training settings and set description, metrics, registry record,
job summary.

:class:`TrainSettings` are the scientific settings of a learning round (the campaign spec's
``learn.train`` keys are checked against its fields). A registry record (:class:`ModelDoc`) is
one document of the ``models`` collection; its file lives in GridFS (bucket ``models``,
``file_id``), which is what ``registry:ID`` model specs read
(:func:`cspflow.models.fetch_registry_model`). A learn job returns a :class:`LearnSummary`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from cspflow.schemas.fidelity import Fidelity

__all__ = [
    "LEARN_SCHEMA_VERSION",
    "TrainSettings",
    "TrainingSetDoc",
    "ModelMetrics",
    "ReplayDoc",
    "ForgettingDoc",
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
    anchor_frame_ids: list[str] = Field(
        default_factory=list,
        description="Per composition the lowest-energy frame of the set (train + test): "
        "held-out relative energies are measured from it.",
    )
    fidelity: Fidelity | None = Field(
        None, description="Fidelity of the DFT labels (every frame has this one)."
    )


class ModelMetrics(BaseModel):
    """Errors of one model on the held-out split."""

    model: str = Field(description="Model spec that was evaluated (chgnet, registry:ID, ...).")
    energy_mae_mev_per_atom: float | None = Field(
        None,
        description="Absolute energy MAE per atom (meV/atom), information only (an offset "
        "counts here); None when the model could not run.",
    )
    force_mae_mev_per_a: float | None = Field(
        None,
        description="Force component MAE (meV/A) on every frame; None when the model could not "
        "run.",
    )
    n_frames: int = Field(0, description="Held-out frames evaluated.")
    note: str | None = Field(None, description="Why no figures (e.g. an element not covered).")
    relative_energy_mae_mev_per_atom: float | None = Field(
        None,
        description="MAE of relative energies (meV/atom) of the held-out frames: per "
        "composition, E/atom minus that of the composition's lowest labelled frame (the "
        "anchor; without one, the lowest held-out frame), for DFT and model each. Decides "
        "promotion; a constant offset does not count.",
    )
    rank_correlation: float | None = Field(
        None,
        description="Spearman rank correlation of model and DFT energies per composition, "
        "averaged over compositions weighted by their frames.",
    )
    force_mae_moving_mev_per_a: float | None = Field(
        None,
        description="Force component MAE (meV/A) on the frames whose largest DFT force is above "
        "0.01 eV/A (forces that do not vanish by symmetry).",
    )
    n_relative_frames: int = Field(0, description="Frames counted in the relative-energy MAE.")
    n_compositions: int = Field(
        0, description="Compositions with a relative energy (an anchor or two held-out frames)."
    )
    n_force_frames: int = Field(0, description="Frames counted in force_mae_moving_mev_per_a.")
    energy_offset_mev_per_atom: float | None = Field(
        None, description="Mean signed energy error (model - DFT, meV/atom); information only."
    )


class ReplayDoc(BaseModel):
    """Where the replay frames of a multi-head fine-tuning came from, and what was dropped."""

    sources: dict[str, int] = Field(
        default_factory=dict,
        description="Frames read per source: ``file`` (learn.replay_file), ``parent`` (the "
        "registry foundation's own training frames), ``other systems`` (DFT frames of other "
        "chemical systems the foundation knows).",
    )
    file: str | None = Field(None, description="The replay file, when one was given.")
    n_read: int = Field(0, description="Frames read from all sources.")
    dropped: dict[str, int] = Field(
        default_factory=dict, description="Frames left out, counted per reason."
    )
    n_kept: int = Field(0, description="Frames replayed.")


class ForgettingDoc(BaseModel):
    """The new model on the previous model's held-out frames (does it forget what it knew?)."""

    previous_model: str = Field(description="Registry id of the parent model.")
    chemsys: str = Field(description="Chemical system of the parent's training set.")
    candidate_ids: list[str] = Field(
        default_factory=list, description="The parent's held-out candidates."
    )
    n_frames: int = Field(0, description="Held-out frames of the parent rebuilt and evaluated.")
    before: ModelMetrics | None = Field(None, description="The parent on them.")
    after: ModelMetrics | None = Field(None, description="The new model on them.")


class ModelDoc(BaseModel):
    """One registered MLIP (a document of the ``models`` collection)."""

    schema_version: int = Field(LEARN_SCHEMA_VERSION, description="Version of this document.")
    model_id: str = Field(description="Registry id (``<kind>-<sha256[:12]>`` of the file).")
    kind: str = Field(
        "mace", description="Architecture: ``mace`` or ``chgnet`` (the registry id's prefix)."
    )
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
    energy_shift: dict[str, float] = Field(
        default_factory=dict,
        description="CHGNet fine-tuning: energy per element (eV/atom) added to CHGNet's "
        "composition model before training (the labels' offset from the starting model).",
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
    fidelity: Fidelity | None = Field(
        None,
        description="Fidelity of the DFT labels the model was trained on; it is the current "
        "model only for campaigns at this fidelity.",
    )
    fidelity_key: str | None = Field(None, description="``fidelity.key``, indexed.")
    replay: ReplayDoc | None = Field(
        None, description="Replay frames of a multi-head fine-tuning (None: no replay)."
    )
    forgetting: ForgettingDoc | None = Field(
        None,
        description="This model and its parent on the parent's held-out frames (None: no "
        "registry parent).",
    )


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
    forgetting: ForgettingDoc | None = Field(
        None, description="New model and parent on the parent's held-out frames."
    )


@dataclass
class TrainSettings:
    """Scientific settings of a learning round (stored with the model).

    Parameters
    ----------
    min_frames
        Fewest frames (train + test) worth training on; fewer raise "too little data".
    test_fraction
        Share of candidates held out (chosen by a hash of the candidate id).
    ionic_steps
        Ionic steps sampled per relaxation besides its final frame (evenly spaced; the final
        step is the final frame); 0 keeps final frames only, -1 keeps every step.
    max_force
        Frames with a force above this (eV/A) are left out: huge forces wreck a small model.
    max_energy_above_final
        Ionic steps more than this (eV/atom) above their relaxation's final frame are left out.
        A relaxation started from a collapsed cell begins tens of eV/atom up (seen: +35 eV/atom
        for a Si2 cell whose forces vanish by symmetry, so the force filter keeps it); such
        frames teach a small model nothing about the structures it ranks and, held out, swamp
        the energy MAE that decides promotion.
    epochs, hidden_irreps, max_L, r_max, num_interactions, correlation, batch_size, lr
        ``mace_run_train`` hyperparameters (the defaults give a tiny model that trains on CPU).
    energy_weight, forces_weight, stress_weight
        Loss weights (``--loss=stress``: energies, forces and stresses).
    seed
        Random seed of the first model; committee members use seed + 1, seed + 2, ...
    committee
        Number of models trained (different seeds); the first is the registered primary.
    foundation_model
        With ``model: mace``: a MACE model file (``PATH``, ``mace:PATH`` or ``registry:ID``) to
        fine-tune; ``current`` fine-tunes the current registry model; None trains from scratch.
        With ``model: chgnet``: None or ``chgnet`` fine-tunes the universal weights;
        ``chgnet:PATH``, a CHGNet ``registry:ID`` or ``current`` a fine-tuned CHGNet.
    finetune
        ``naive`` (the foundation's weights trained on the new data only) or ``multihead``
        (mace's multi-head fine-tuning: a replay head keeps the foundation's data in the loss,
        so the model does not forget what it knew; mace's own learning rate 1e-4 and EMA apply).
    replay_file
        extxyz replay data for ``multihead`` (``REF_*`` keys), e.g. the MP subset a foundation
        model was trained on. None: the registry foundation's own training frames and the DFT
        frames of other chemical systems it knows (rebuilt from the database). Either way
        frames the new training set holds are dropped (:mod:`cspflow.learn.replay`).
    model
        ``mace`` (train MACE from scratch, or fine-tune a MACE ``foundation_model``) or
        ``chgnet`` (fine-tune CHGNet's universal 0.3.0 weights, or a fine-tuned CHGNet
        ``foundation_model``, with CHGNet's own trainer).
    chgnet_epochs, chgnet_lr, chgnet_forces_weight, chgnet_stress_weight
        CHGNet fine-tuning: epochs, Adam learning rate (cosine decay), force and stress loss
        weights (CHGNet's units: eV/atom, eV/A, GPa; the energy weight is ``energy_weight``).
        The checkpoint with the lowest validation energy MAE is the model.
    chgnet_freeze
        Train only CHGNet's last atom convolution and readout (what CHGNet's fine-tuning example
        freezes stays frozen); False trains every weight but the composition model.
    device
        Training device (None: the ``device`` setting, cuda when available).
    threads
        ``OMP_NUM_THREADS`` of the training process (0: inherit). A tiny model gains nothing
        from threads, and spin-waiting OpenMP threads on a shared node made an epoch 30x
        slower (measured: 3 s against 0.1 s for 20 Si2 frames on 2 loaded cores).
    """

    min_frames: int = 20
    test_fraction: float = 0.2
    ionic_steps: int = 3
    max_force: float = 10.0
    max_energy_above_final: float = 1.0
    epochs: int = 60
    hidden_irreps: str = "32x0e"
    max_L: int = 0
    r_max: float = 4.5
    num_interactions: int = 2
    correlation: int = 2
    batch_size: int = 5
    lr: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 10.0
    seed: int = 1
    committee: int = 1
    foundation_model: str | None = None
    finetune: Literal["naive", "multihead"] = "naive"
    replay_file: str | None = None
    model: Literal["mace", "chgnet"] = "mace"
    chgnet_epochs: int = 30
    chgnet_lr: float = 1e-3
    chgnet_forces_weight: float = 1.0
    chgnet_stress_weight: float = 0.1
    chgnet_freeze: bool = False
    device: str | None = None
    threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (stored with the model)."""
        from dataclasses import asdict

        return asdict(self)
