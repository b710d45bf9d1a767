"""Replay data of multi-head fine-tuning, and the forgetting check of a learning round.

Replay frames are data the fine-tuned model should keep knowing, trained in mace's replay head
beside the new data. Sources, in this order:

- ``learn.replay_file`` (an extxyz with ``REF_energy`` / ``REF_forces``), the only source when
  given;
- else the registry foundation's own training frames (its ``training_set``: candidate ids minus
  its held-out ones), rebuilt from the database with the sampling it was trained with, and the
  DFT frames of other chemical systems whose elements the foundation knows (at the foundation's
  fidelity).

A frame the new training set holds (train or held-out) is dropped: same ``frame_id`` (candidate
id + DFT settings hash + step, what :func:`cspflow.learn.dataset.collect_frames` writes) or same
structure (:func:`structure_key`: atomic numbers, cell and wrapped fractional positions). So
replay never repeats the new data, and never trains on the new held-out frames. The parent's
held-out frames are dropped too: they are where forgetting is measured
(:func:`measure_forgetting`). What was read, dropped and kept is recorded
(:class:`~cspflow.schemas.learn.ReplayDoc`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cspflow.errors import CspflowError
from cspflow.learn.dataset import TrainingSet, collect_frames, subsystems
from cspflow.models import get_model
from cspflow.schemas.learn import ForgettingDoc, ReplayDoc, TrainSettings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ase import Atoms
    from jobflow import JobStore
    from pymongo.database import Database

__all__ = [
    "structure_key",
    "read_replay_file",
    "check_replay_file",
    "parent_frames",
    "replay_frames",
    "measure_forgetting",
]

IN_NEW_SET = "in the new training set"
PARENT_HELD_OUT = "held out by the parent (the forgetting set)"
REPEATED = "read twice"


def structure_key(atoms: Atoms) -> str:
    """A hash of a frame's structure: atomic numbers, cell and wrapped fractional positions
    (rounded to 1e-6: the same structure written twice, not a nearby one; late steps of a
    converged relaxation differ from its final frame by less than 1e-4)."""
    digest = hashlib.sha256(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update((np.round(np.asarray(atoms.cell, dtype=float), 6) + 0.0).tobytes())
    frac = np.round(atoms.get_scaled_positions(wrap=True), 6) % 1.0
    digest.update((frac + 0.0).tobytes())  # + 0.0: -0.0 and 0.0 hash alike
    return digest.hexdigest()[:20]


def _identities(frames: Iterable[Atoms]) -> tuple[set[str], set[str]]:
    frames = list(frames)
    ids = {str(a.info["frame_id"]) for a in frames if a.info.get("frame_id")}
    return ids, {structure_key(a) for a in frames}


def read_replay_file(path: str | Path, first_only: bool = False) -> list[Atoms]:
    """Frames of a replay file (extxyz, each with ``REF_energy`` and ``REF_forces``).

    Raises
    ------
    CspflowError
        One line when the file is missing, not extxyz, empty, or a frame lacks the labels.
    """
    from ase.io import read

    path = Path(path).expanduser()
    hint = "give an extxyz file with REF_energy and REF_forces"
    if not path.is_file():
        raise CspflowError(f"cannot read replay file {path}: no such file; {hint}")
    try:
        got = read(path, index=0 if first_only else ":", format="extxyz")
    except Exception as exc:  # ase raises many types for a file that is not extxyz
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise CspflowError(
            f"cannot read replay file {path} as extxyz ({type(exc).__name__}: {detail}); {hint}"
        ) from None
    frames: list[Atoms] = [got] if first_only else list(got)  # type: ignore[list-item]
    if not frames:
        raise CspflowError(f"cannot read replay file {path}: it holds no frames; {hint}")
    for i, atoms in enumerate(frames):
        if "REF_energy" not in atoms.info or "REF_forces" not in atoms.arrays:
            raise CspflowError(
                f"cannot read replay file {path}: frame {i} has no REF_energy and REF_forces; "
                f"{hint}"
            )
    return frames


def check_replay_file(path: str | Path) -> None:
    """Check that a replay file exists and its first frame is labelled extxyz (a campaign is
    refused at submission otherwise, before anything is stored).

    Raises
    ------
    CspflowError
        As :func:`read_replay_file`.
    """
    read_replay_file(path, first_only=True)


def parent_frames(
    db: Database, record: dict[str, Any], store: JobStore | None
) -> tuple[list[Atoms], list[Atoms]]:
    """A registry model's training and held-out frames, rebuilt from the database.

    The frames of the candidates its ``training_set`` lists (at its fidelity), sampled with
    the settings it was trained with; candidates without a task document give none.
    """
    ts = record.get("training_set") or {}
    trained = record.get("train_settings") or {}
    d = TrainSettings()
    ids = set(ts.get("candidate_ids") or [])
    test_ids = set(ts.get("test_candidate_ids") or [])
    if not ids:
        return [], []
    frames, _ = collect_frames(
        db, record["chemsys"], store=store, fidelity=record.get("fidelity_key"),
        ionic_steps=trained.get("ionic_steps", d.ionic_steps),
        max_force=trained.get("max_force", d.max_force),
        max_energy_above_final=trained.get("max_energy_above_final", d.max_energy_above_final),
    )  # fmt: skip
    train = [a for a in frames if a.info["candidate_id"] in ids - test_ids]
    test = [a for a in frames if a.info["candidate_id"] in test_ids]
    return train, test


def _other_systems(
    db: Database,
    s: TrainSettings,
    store: JobStore | None,
    known: set[str],
    skip: set[str],
    fidelity: str | None,
) -> list[Atoms]:
    """DFT frames of the chemical systems outside ``skip`` whose elements are all ``known``."""
    from cspflow.store import candidates

    out: list[Atoms] = []
    for chemsys in candidates.dft_chemsystems(db, fidelity):
        if chemsys in skip or not set(chemsys.split("-")) <= known:
            continue
        frames, _ = collect_frames(
            db, chemsys, store=store, fidelity=fidelity, ionic_steps=s.ionic_steps,
            max_force=s.max_force, max_energy_above_final=s.max_energy_above_final,
        )  # fmt: skip
        out.extend(frames)
    return out


def replay_frames(
    db: Database | None,
    s: TrainSettings,
    foundation: str | None,
    tset: TrainingSet,
    *,
    store: JobStore | None = None,
    elements: Iterable[str] | None = None,
) -> tuple[list[Atoms], ReplayDoc]:
    """Replay frames of a multi-head fine-tuning that the new set does not hold (module doc).

    Parameters
    ----------
    db, store
        The cspflow database and the JobStore with the DFT task documents.
    s
        The round's settings (``replay_file``; the sampling of other systems' frames).
    foundation
        The foundation's spec (``registry:ID`` gives its own training frames).
    tset
        The new training set (train and held-out frames are both excluded from replay).
    elements
        Elements the foundation knows (default: the registry record's).

    Returns
    -------
    frames, doc
        The replay frames and what was read, dropped (per reason) and kept.

    Raises
    ------
    CspflowError
        An unreadable replay file, or no frame left to replay: nothing is trained.
    """
    record = None
    if db is not None and foundation and foundation.startswith("registry:"):
        record = get_model(db, foundation.split(":", 1)[1])
    doc = ReplayDoc()
    pool: list[tuple[str, Atoms]] = []
    held_out: list[Atoms] = []
    if record is not None:
        own, held_out = parent_frames(db, record, store)  # type: ignore[arg-type]
    if s.replay_file:
        doc.file = str(Path(s.replay_file).expanduser())
        pool = [("file", a) for a in read_replay_file(s.replay_file)]
    else:
        if record is not None:
            pool = [("parent", a) for a in own]
        known = set(elements or (record or {}).get("elements") or [])
        if db is not None and known:
            skip = set(subsystems(tset.doc.chemsys))
            if record is not None:
                skip |= set(subsystems(record["chemsys"]))
            fid = (record or {}).get("fidelity_key") or getattr(tset.doc.fidelity, "key", None)
            pool += [("other systems", a) for a in _other_systems(db, s, store, known, skip, fid)]
    new_ids, new_keys = _identities(tset.train + tset.test)
    held_ids, held_keys = _identities(held_out)
    seen: set[str] = set()
    kept: list[Atoms] = []

    def drop(reason: str) -> None:
        doc.dropped[reason] = doc.dropped.get(reason, 0) + 1

    for source, atoms in pool:
        doc.sources[source] = doc.sources.get(source, 0) + 1
        frame_id, key = str(atoms.info.get("frame_id") or ""), structure_key(atoms)
        if frame_id in new_ids or key in new_keys:
            drop(IN_NEW_SET)
        elif frame_id in held_ids or key in held_keys:
            drop(PARENT_HELD_OUT)
        elif (frame_id or key) in seen:
            drop(REPEATED)
        else:
            seen.add(frame_id or key)
            kept.append(atoms)
    doc.n_read, doc.n_kept = len(pool), len(kept)
    if not kept:
        found = "; ".join(f"{n} {why}" for why, n in sorted(doc.dropped.items())) or "none"
        raise CspflowError(
            f"multihead fine-tuning of {foundation} needs replay data the new training set does "
            f"not hold ({doc.n_read} frame(s) found, dropped: {found}); set learn.replay_file to "
            "an extxyz of the foundation's training data, or use finetune: naive"
        )
    return kept, doc


def measure_forgetting(
    db: Database, parent: str | None, model_spec: str, model_id: str, store: JobStore | None
) -> ForgettingDoc | None:
    """The new model and its parent on the parent's held-out frames.

    ``parent`` is the registry id the new model replaces (None, a spec such as ``chgnet`` or
    a record without held-out candidates: None). The parent's held-out frames are rebuilt from the
    database (:func:`parent_frames`); both are evaluated with
    :func:`cspflow.learn.evaluate.evaluate`.
    """
    from cspflow.learn.evaluate import evaluate

    record = db["models"].find_one({"model_id": parent}, {"_id": 0}) if parent else None
    if record is None or not (record.get("training_set") or {}).get("test_candidate_ids"):
        return None  # nothing held out to measure on (a model registered from elsewhere)
    _, test = parent_frames(db, record, store)
    after = evaluate(model_spec, test, db).model_copy(update={"model": f"registry:{model_id}"})
    return ForgettingDoc(
        previous_model=record["model_id"],
        chemsys=record["chemsys"],
        candidate_ids=sorted({a.info["candidate_id"] for a in test}),
        n_frames=len(test),
        before=evaluate(f"registry:{record['model_id']}", test, db),
        after=after,
    )
