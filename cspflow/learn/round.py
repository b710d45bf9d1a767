"""One learning round, the learn job and its Maker.

Layers, top down:

- :class:`LearnMaker` makes the learn job (``metadata={"stage": "learn"}``, routed to gpu
  workers). The job runs :func:`learn` and returns a :class:`~cspflow.schemas.learn.LearnSummary`;
  too little data is not a failure of the campaign: the summary says so and the current model
  stays.
- :func:`learn` = :func:`~cspflow.learn.dataset.build_training_set` ->
  :func:`~cspflow.learn.train.train_mace` (from scratch or fine-tuning of a MACE file) or
  :func:`~cspflow.learn.train.train_chgnet` (fine-tuning CHGNet; ``settings.model``), optionally
  a committee of seeds -> :func:`~cspflow.learn.evaluate.evaluate` (new and current
  model on the held-out split) -> :func:`~cspflow.models.register_model` with the promotion
  decision. A rerun of a finished round (same data, settings and parent) returns the stored
  round without retraining.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Job, Maker, job

from cspflow.errors import CspflowError
from cspflow.jobs import stage_metadata
from cspflow.learn.dataset import build_training_set, fit_e0s
from cspflow.learn.evaluate import evaluate, promotion
from cspflow.learn.replay import measure_forgetting, replay_frames
from cspflow.learn.train import check_coverage, resolve_foundation, train_chgnet, train_mace
from cspflow.models import current_model_spec, get_model, model_id_for, register_model
from cspflow.schemas.learn import LearnSummary, ModelMetrics, TrainSettings

if TYPE_CHECKING:
    from jobflow import JobStore
    from pymongo.database import Database

__all__ = ["learn", "learn_job", "LearnMaker", "label_fidelity"]

STAGE = "learn"


def label_fidelity(db: Database, chemsys: str, campaign: str | None = None) -> dict | None:
    """The fidelity of the labels a round trains on: the campaign's DFT fidelity, else the
    only DFT fidelity of ``chemsys`` (None: no DFT data at all; the set is then empty).

    Raises
    ------
    CspflowError
        Data at several fidelities and no campaign to choose.
    """
    from cspflow.hull import campaign_fidelity
    from cspflow.store import candidates

    fid = campaign_fidelity(db, campaign) if campaign else None
    if fid is not None:
        return fid
    keys = candidates.fidelity_keys(db, chemsys, "dft")
    if len(keys) == 1:
        return next(iter(keys.values()))
    if not keys:
        return None
    raise CspflowError(
        f"DFT labels of {chemsys} at {len(keys)} fidelities ({', '.join(sorted(keys))}); "
        "train from one campaign's data (its fidelity)"
    )


def _fidelity_or_none(db: Database, chemsys: str, campaign: str | None) -> str | None:
    try:
        fid = label_fidelity(db, chemsys, campaign)
    except CspflowError:
        return None
    return None if fid is None else str(fid["key"])


def learn(
    db: Database,
    chemsys: str,
    *,
    settings: TrainSettings | None = None,
    store: JobStore | None = None,
    work_dir: Path,
    current: str | None = None,
    baseline: str | None = None,
    campaign: str | None = None,
    iteration: int | None = None,
    data_campaign: str | None = None,
    max_iteration: int | None = None,
    fidelity: dict | None = None,
) -> LearnSummary:
    """One learning round: build the set, train, evaluate before/after, register, promote.

    Parameters
    ----------
    db, store
        The cspflow database and the JobStore with the DFT task documents.
    chemsys
        Chemical system, e.g. ``"Si"`` or ``"Mg-O"``.
    settings
        :class:`~cspflow.schemas.learn.TrainSettings`.
    work_dir
        Where training runs (one subdirectory per committee member).
    current
        The model to beat (a spec). Default: the promoted registry model of ``chemsys``, if any.
        Its figures are the "before" of this round; the new model's ``parent`` is it.
    baseline
        The model to beat when ``current`` is None and the registry has no current model for
        ``chemsys`` (a campaign passes its prerelax model, e.g. ``chgnet``).
    campaign, iteration
        Recorded with the model.
    data_campaign, max_iteration
        Restrict the training data to one campaign / up to one iteration.
    fidelity
        The fidelity of the labels (a Fidelity dict); default: the campaign's DFT fidelity,
        else the system's only one (:func:`label_fidelity`). Only labels of it are used, the
        model is registered with it, and the model to beat is the current model of it.

    Raises
    ------
    CspflowError
        Too little data, a foundation model of the other architecture or one that does not
        load or does not cover the frames' elements, training failing: nothing is registered
        and the current model stays.
    """
    s = settings or TrainSettings()
    fid = fidelity or label_fidelity(db, chemsys, campaign or data_campaign)
    key = fid["key"] if fid is not None else None
    current_spec = current or current_model_spec(db, chemsys, default=baseline, fidelity=key)
    foundation, foundation_label, known = resolve_foundation(s, current_spec, db)
    tset = build_training_set(
        db, chemsys, store=store, settings=s, campaign=data_campaign, max_iteration=max_iteration,
        fidelity=fid,
    )  # fmt: skip
    check_coverage(foundation_label, known, tset.doc.elements)
    parent = (current_spec or "").removeprefix("registry:") or None
    reused = _stored_round(db, chemsys, tset.doc.set_hash, s, parent)
    if reused is not None:  # a rerun of a finished round: no retraining
        return _summary(reused, current_spec)
    kind = s.model  # "mace" or "chgnet": the registry id's prefix and the spec to load it
    e0s = fit_e0s(tset.train) if kind == "mace" else {}
    replay, replay_doc = (
        replay_frames(db, s, foundation_label, tset, store=store, elements=_symbols(known))
        if foundation is not None and s.finetune == "multihead"
        else (None, None)
    )
    work_dir = Path(work_dir)
    t0 = time.time()
    files: list[Path] = []
    shift: dict[str, float] = {}
    for k in range(max(1, s.committee)):
        seed_dir = work_dir / f"seed{s.seed + k}"
        if kind == "chgnet":
            path, info = train_chgnet(tset.train, seed_dir, settings=s, seed=s.seed + k,
                                      foundation=foundation)  # fmt: skip
            shift = shift or info["energy_shift"]
        else:
            path = train_mace(tset.train, seed_dir, e0s=e0s, settings=s, seed=s.seed + k,
                              foundation=foundation, replay=replay)  # fmt: skip
        files.append(path)
    train_time = round(time.time() - t0, 1)
    # metrics name the model by its registry id (what register_model will call it)
    new = evaluate(f"{kind}:{files[0]}", tset.test, db, tset.anchors)
    new = new.model_copy(update={"model": f"registry:{model_id_for(files[0], kind)}"})
    before = evaluate(current_spec, tset.test, db, tset.anchors) if current_spec else None
    promoted, reason = promotion(new, before)
    # the previous data's held-out frames: does the new model forget what its parent knew?
    forgetting = measure_forgetting(
        db, parent, f"{kind}:{files[0]}", new.model.removeprefix("registry:"), store
    )
    base = {
        "chemsys": chemsys,
        "elements": tset.doc.elements,
        "parent": parent,
        "foundation_model": foundation_label,
        "training_set": tset.doc.model_dump(),
        "e0s": e0s,
        "kind": kind,
        "energy_shift": shift,
        "train_settings": s.as_dict(),
        "campaign": campaign,
        "iteration": iteration,
        "train_time_s": train_time,
        "fidelity": fid,
        "replay": replay_doc,
    }
    record = register_model(
        db, files[0],
        {**base, "metrics": {"new": new.model_dump(), "current": before and before.model_dump()},
         "promoted": promoted, "promotion_reason": reason, "forgetting": forgetting},
    )  # fmt: skip
    members = []
    for k, path in enumerate(files[1:], start=1):
        member = register_model(
            db, path,
            {**base, "train_settings": {**s.as_dict(), "seed": s.seed + k},
             "metrics": {"new": evaluate(f"{kind}:{path}", tset.test, db, tset.anchors).model_copy(
                 update={"model": f"registry:{model_id_for(path, kind)}"}).model_dump()},
             "committee_of": record.model_id, "promoted": False,
             "promotion_reason": f"committee member of {record.model_id}"},
        )  # fmt: skip
        members.append(member.model_id)
    if members:
        db["models"].update_one({"model_id": record.model_id}, {"$set": {"committee": members}})
    (work_dir / "summary.json").write_text(
        json.dumps({"model_id": record.model_id, "reason": reason})
    )
    return _summary(get_model(db, record.model_id), current_spec)


def _symbols(numbers: frozenset[int] | None) -> list[str] | None:
    from ase.data import chemical_symbols

    return None if numbers is None else sorted(chemical_symbols[z] for z in numbers)


def _stored_round(
    db: Database, chemsys: str, set_hash: str, s: TrainSettings, parent: str | None
) -> dict | None:
    """The primary model of an earlier round with the same data, settings and parent."""
    return db["models"].find_one(
        {"chemsys": chemsys, "training_set.set_hash": set_hash, "train_settings": s.as_dict(),
         "parent": parent, "committee_of": None},
        {"_id": 0},
    )  # fmt: skip


def _summary(doc: dict, current_spec: str | None) -> LearnSummary:
    metrics = doc.get("metrics") or {}
    return LearnSummary(
        chemsys=doc["chemsys"],
        trained=True,
        model_id=doc["model_id"],
        promoted=bool(doc.get("promoted")),
        reason=doc.get("promotion_reason", ""),
        current_model=f"registry:{doc['model_id']}" if doc.get("promoted") else current_spec,
        n_frames=(doc.get("training_set") or {}).get("n_frames", 0),
        metrics={k: (ModelMetrics(**v) if v else None) for k, v in metrics.items()},
        forgetting=doc.get("forgetting"),
    )


@job
def learn_job(
    chemsys: str,
    settings: dict[str, Any],
    campaign: str | None = None,
    iteration: int | None = None,
    current: str | None = None,
    data_campaign: str | None = None,
    after: Any = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Run :func:`learn` against the configured database (``after`` only orders the job).

    A user-fixable problem (too little data, a bad foundation file) does not fail the
    campaign: the summary has ``trained=False`` and the reason, and the current model stays.
    """
    from cspflow.settings import get_settings
    from cspflow.store import get_database, get_jobstore

    cs = get_settings()
    db = get_database(cs)
    store = get_jobstore(cs)
    store.connect()
    tag = f"{campaign or 'adhoc'}-it{iteration if iteration is not None else 'x'}"
    work_dir = Path.cwd() / f"learn-{chemsys}-{tag}"
    try:
        summary = learn(
            db, chemsys, settings=TrainSettings(**settings), store=store, work_dir=work_dir,
            current=current, baseline=baseline, campaign=campaign, iteration=iteration,
            data_campaign=data_campaign,
        )  # fmt: skip
    except CspflowError as exc:
        fid = _fidelity_or_none(db, chemsys, campaign or data_campaign)
        summary = LearnSummary(
            chemsys=chemsys, trained=False, reason=str(exc),
            current_model=current or current_model_spec(db, chemsys, default=baseline,
                                                        fidelity=fid),
        )  # fmt: skip
    finally:
        store.close()
    return summary.model_dump(mode="json")


@dataclass
class LearnMaker(Maker):
    """Make the learn job of a chemical system (gpu category through ``stage: learn``).

    Parameters
    ----------
    name
        Job name.
    settings
        The round's :class:`~cspflow.schemas.learn.TrainSettings` (min_frames, epochs,
        foundation_model, committee, ...); a campaign passes its spec's
        ``learn.train_settings()``.
    """

    name: str = "learn"
    settings: TrainSettings = field(default_factory=TrainSettings)

    def make(
        self,
        chemsys: str,
        campaign: str | None = None,
        iteration: int | None = None,
        current: str | None = None,
        data_campaign: str | None = None,
        after: Any = None,
        baseline: str | None = None,
    ) -> Job:
        """Return the job.

        ``current`` is the model to beat (default: the registry's current model of
        ``chemsys``, else ``baseline``); ``after`` only orders the job after its inputs.
        """
        j = learn_job(
            chemsys, self.settings.as_dict(), campaign, iteration, current, data_campaign, after,
            baseline,
        )  # fmt: skip
        j.name = self.name
        j.update_metadata(stage_metadata(STAGE, campaign, iteration, chemsys=chemsys))
        return j
