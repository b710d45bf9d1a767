"""The campaign loop: one iteration as a Flow, and the job that decides to continue or stop.

Three layers (as in dpgen2):

- the loop: :func:`decide` ends every iteration; it records the iteration's summary in the
  ``campaigns`` collection and either stops (max_iterations, patience, DFT budget, paused) or
  returns ``Response(addition=iteration_flow(next))`` (jobflow's fibonacci idiom);
- one iteration: :func:`iteration_flow` = generate (one job per formula) -> prerelax fan-out
  (batches, gpu) -> select -> DFT fan-out (cpu) -> hull -> [learn -> rescreen (gpu), when
  ``learn.enabled``] -> decide;
- the steps: the stage Makers of :mod:`cspflow.generate`, :mod:`cspflow.prerelax`,
  :mod:`cspflow.dft` and :mod:`cspflow.hull`.

Job documents carry ids and counts only; structures stay in the ``candidates`` collection.
The campaign's state lives in the database, so a campaign can be paused, resumed and extended.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Job, Response, job

from cspflow.jobs import stage_metadata
from cspflow.schemas.campaign import CampaignSpec

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "iteration_flow",
    "campaign_flow",
    "prerelax_fanout",
    "dft_gate",
    "decide",
    "register_campaign",
    "campaign_doc",
    "iteration_summary",
]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _db() -> Database:
    from cspflow.store import get_database

    return get_database()


def _spec_from_db(name: str) -> CampaignSpec:
    """The campaign's current spec (extensions edit it in the database)."""
    doc = _db().campaigns.find_one({"name": name}, {"spec": 1})
    if doc is None:
        from cspflow.errors import CspflowError

        raise CspflowError(f"campaign {name!r} is not in the database")
    return CampaignSpec.model_validate(doc["spec"])


@job
def prerelax_fanout(generated: list[dict], name: str, iteration: int) -> Response | list:
    """Split the iteration's new candidates into batches, one prerelax job (gpu) per batch."""
    from cspflow.prerelax.stage import PrerelaxMaker

    spec = _spec_from_db(name)
    ids = [cid for summary in generated if summary for cid in summary.get("candidate_ids", [])]
    # candidates of this iteration still waiting (a resumed iteration picks them up as well)
    pending = _db().candidates.distinct(
        "candidate_id", {"campaign": name, "iteration": iteration, "status": "generated"}
    )
    ids = list(dict.fromkeys(ids + sorted(pending)))
    if not ids:
        return []
    p = spec.prerelax
    maker = PrerelaxMaker(settings=p.model_copy(update={"model": prerelax_model(spec)}))
    size = p.batch_size
    jobs = [
        maker.make(ids[i : i + size], campaign=name, iteration=iteration)
        for i in range(0, len(ids), size)
    ]
    for k, j in enumerate(jobs):
        j.name = f"prerelax {name} it{iteration} batch{k}"
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name="prerelax"))


def prerelax_model(spec: CampaignSpec) -> str:
    """The model that pre-relaxes now: with learning on, the system's current registry model
    (once one was promoted), else the spec's ``prerelax.model``."""
    if not spec.learn.enabled:
        return spec.prerelax.model
    from cspflow.models import current_model_spec

    return current_model_spec(_db(), spec.system(), default=spec.prerelax.model) or spec.prerelax.model


def learns_in(spec: CampaignSpec, iteration: int) -> bool:
    """Whether ``iteration`` ends with a learning round: every ``learn.every`` iterations,
    never in the last one (its model would pre-relax nothing)."""
    last = iteration + 1 >= spec.stop.max_iterations
    return spec.learn.enabled and (iteration + 1) % spec.learn.every == 0 and not last


def dft_runs(db: Database, name: str) -> int:
    """Number of candidates the campaign sent through DFT (any outcome): its own, and those of
    earlier campaigns it re-screened and selected.

    A result names the campaign that ran it (``relaxed.dft.campaign``), so a candidate another
    campaign re-screened and this one ran counts here only; results written before that field
    existed count for the candidate's campaign and for the one that re-screened it.
    """
    unnamed = {"relaxed.dft": {"$exists": True}, "relaxed.dft.campaign": None}
    return db.candidates.count_documents(
        {
            "$or": [
                {"relaxed.dft.campaign": name},
                {**unnamed, "campaign": name},
                {**unnamed, "rescreen.campaign": name},
            ]
        }
    )


@job
def dft_gate(selection: dict, name: str, iteration: int) -> Response | list:
    """Send the selected candidates to DFT within the remaining budget (or skip DFT)."""
    from cspflow.dft.stage import DftStageMaker

    spec = _spec_from_db(name)
    selected = list((selection or {}).get("selected", []))
    if spec.dft.engine == "none" or not selected:
        return []
    db = _db()
    budgets = [b for b in (spec.dft.budget, spec.stop.dft_budget) if b is not None]
    if budgets:
        remaining = max(0, min(budgets) - dft_runs(db, name))
        # keep the order of the selection (lowest energy first per formula)
        selected = selected[:remaining]
    if not selected:
        return []
    fanout = DftStageMaker(settings=spec.dft).make(selected, campaign=name, iteration=iteration)
    fanout.name = f"dft {name} it{iteration}"
    return Response(replace=fanout)


def iteration_summary(db: Database, name: str, iteration: int) -> dict[str, Any]:
    """Counts per status and best energies of one iteration (what ``campaign status`` shows)."""
    counts: dict[str, int] = {}
    for row in db.candidates.aggregate(
        [{"$match": {"campaign": name, "iteration": iteration}},
         {"$group": {"_id": "$status", "n": {"$sum": 1}}}]  # fmt: skip
    ):
        counts[str(row["_id"])] = int(row["n"])
    duplicates = db.candidates.count_documents(
        {"campaign": name, "iteration": iteration, "duplicate_of": {"$ne": None}}
    )
    best: dict[str, dict[str, float]] = {}
    for level in ("mlip", "dft"):
        field = f"energy_per_atom.{level}"
        query: dict[str, Any] = {"campaign": name, field: {"$type": "number"}}
        if level == "dft":
            query["relaxed.dft.status"] = "converged"
        for doc in db.candidates.find(query, {"formula": 1, "energy_per_atom": 1}):
            e = float(doc["energy_per_atom"][level])
            cur = best.setdefault(doc["formula"], {})
            if level not in cur or e < cur[level]:
                cur[level] = e
    return {"iteration": iteration, "counts": counts, "duplicates": duplicates,
            "best_energy_per_atom": best}  # fmt: skip


def _improved(hull: dict | None, previous: list[dict]) -> bool:
    """Did this iteration improve the hull: a new stable entry (a lower-energy structure of a
    formula becomes a new stable entry), or the first hull of the campaign."""
    if hull is None:
        return False
    if hull.get("added_to_stable"):
        return True
    return not previous  # the first hull is an improvement


@job
def decide(
    name: str, iteration: int, hull: dict | None = None, learned: dict | None = None,
    rescreened: dict | None = None,
) -> Response | dict:
    """Record the iteration and continue (Response(addition=next iteration)) or stop."""
    db = _db()
    spec = _spec_from_db(name)
    doc = db.campaigns.find_one({"name": name}) or {}
    previous = [it for it in doc.get("iterations", []) if it["iteration"] < iteration]
    summary = iteration_summary(db, name, iteration)
    improved = _improved(hull, previous)
    stale = 0 if improved else 1 + (previous[-1].get("stale", 0) if previous else 0)
    started = doc.get("iteration_started_at") or doc.get("created_at")
    summary.update(
        {
            "hull": hull,
            "improved": improved,
            "stale": stale,
            "dft_runs_total": dft_runs(db, name),
            "learn": _learn_record(learned, rescreened),
            "finished_at": _now(),
            "wall_time_s": round((_now() - _aware(started)).total_seconds(), 1) if started else None,
        }
    )
    reason = None
    if iteration + 1 >= spec.stop.max_iterations:
        reason = f"reached max_iterations ({spec.stop.max_iterations})"
    elif stale >= spec.stop.patience:
        reason = f"no hull improvement in {stale} iteration(s) (patience {spec.stop.patience})"
    elif spec.stop.dft_budget is not None and summary["dft_runs_total"] >= spec.stop.dft_budget:
        reason = f"DFT budget used ({summary['dft_runs_total']}/{spec.stop.dft_budget})"
    elif doc.get("state") == "paused":
        reason = "paused"
    db.campaigns.update_one(
        {"name": name},
        {"$pull": {"iterations": {"iteration": iteration}}},
    )
    update: dict[str, Any] = {"$push": {"iterations": summary}}
    if reason is None:
        update["$set"] = {"state": "running", "iteration": iteration + 1,
                          "iteration_started_at": _now()}  # fmt: skip
    else:
        update["$set"] = {"state": "paused" if reason == "paused" else "completed",
                          "stop_reason": reason, "finished_at": _now()}  # fmt: skip
    db.campaigns.update_one({"name": name}, update)
    out = {"iteration": iteration, "stop_reason": reason, "improved": improved}
    if reason is not None:
        return out
    return Response(output=out, addition=iteration_flow(spec, iteration + 1))


def _learn_record(learned: dict | None, rescreened: dict | None) -> dict | None:
    """What the iteration's learning round did (small: ids, figures, reasons)."""
    if learned is None:
        return None
    rec = {k: learned.get(k) for k in ("trained", "model_id", "promoted", "reason",
                                       "current_model", "n_frames", "metrics")}  # fmt: skip
    if rescreened is not None:
        rec["rescreen"] = {
            "skipped": rescreened.get("skipped"),
            "n_single_points": rescreened.get("n_single_points", 0),
            "relaxed": len(rescreened.get("relaxed") or []),
            "failed": len(rescreened.get("failed") or {}),
            "best_changed": rescreened.get("best_changed", []),
        }
    return rec


def _aware(t: datetime.datetime) -> datetime.datetime:
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


def iteration_flow(spec: CampaignSpec, iteration: int) -> Flow:
    """One iteration of the loop as a Flow (generate -> prerelax -> select -> dft -> hull -> decide)."""
    from cspflow.generate.maker import GenerateMaker
    from cspflow.hull import HullMaker
    from cspflow.prerelax.select import SelectMaker

    name = spec.name
    g = spec.generate
    gen_maker = GenerateMaker(settings=g, max_atoms=spec.max_atoms)
    gens: list[Job] = []
    for formula in spec.formulas():
        j = gen_maker.make(formula, campaign=name, iteration=iteration, seed=g.seed + iteration)
        j.name = f"generate {formula} it{iteration}"
        gens.append(j)
    fan = prerelax_fanout([j.output for j in gens], name, iteration)
    select = SelectMaker(settings=spec.select).make(
        campaign=name, iteration=iteration, prerelax_outputs=[fan.output]
    )
    gate = dft_gate(select.output, name, iteration)
    hull = HullMaker().make(spec.system(), name, iteration, after=gate.output)
    extra: list[Job] = []
    if learns_in(spec, iteration):
        learn, rescreen = _learning_jobs(spec, iteration, after=hull.output)
        extra = [learn, rescreen]
        end = decide(name, iteration, hull.output, learn.output, rescreen.output)
    else:
        end = decide(name, iteration, hull.output)
    # dynamic=False: jobs these create at run time carry their own stage (routing), not ours
    for j, stage in ((fan, "control"), (gate, "dft"), (end, "decide")):
        j.update_metadata(stage_metadata(stage, name, iteration), dynamic=False)
    fan.name, gate.name = f"prerelax {name} it{iteration}", f"dft gate {name} it{iteration}"
    hull.name, end.name = f"hull {name} it{iteration}", f"decide {name} it{iteration}"
    select.name = f"select {name} it{iteration}"
    select.update_metadata(stage_metadata("select", name, iteration), dynamic=False)
    return Flow([*gens, fan, select, gate, hull, *extra, end], output=end.output,
                name=f"{name} iteration {iteration}")  # fmt: skip


def _learning_jobs(spec: CampaignSpec, iteration: int, after: Any) -> tuple[Job, Job]:
    """learn (retrain on the campaign's DFT data) -> rescreen (when a model was promoted)."""
    from cspflow.learn.round import LearnMaker
    from cspflow.rescreen import RescreenMaker
    from cspflow.schemas.learn import TrainSettings
    from cspflow.schemas.prerelax import RescreenSettings

    name = spec.name
    learn = LearnMaker(settings=TrainSettings(**spec.learn.train_settings())).make(
        spec.system(), campaign=name, iteration=iteration, after=after,
        baseline=spec.prerelax.model,
    )  # fmt: skip
    learn.name = f"learn {name} it{iteration}"
    rescreen = RescreenMaker(
        settings=RescreenSettings(top=spec.learn.rescreen_top, prerelax=spec.prerelax)
    ).make(learn.output, name, iteration, spec.system())
    rescreen.name = f"rescreen {name} it{iteration}"
    return learn, rescreen


def campaign_flow(spec: CampaignSpec, start_iteration: int = 0) -> Flow:
    """The campaign as submitted: its first (or next) iteration; later ones are added by decide."""
    flow = iteration_flow(spec, start_iteration)
    flow.name = f"campaign {spec.name}"
    return flow


def campaign_doc(db: Database, name: str) -> dict | None:
    """The stored campaign document (spec, state, per-iteration summaries)."""
    return db.campaigns.find_one({"name": name}, {"_id": 0})


def register_campaign(db: Database, spec: CampaignSpec) -> tuple[dict, bool]:
    """Store a new campaign (state ``submitted``); return (document, created).

    An existing campaign of the same name is returned unchanged when its spec is the same;
    a different spec under the same name is an error (nothing is overwritten).
    """
    from pymongo.errors import DuplicateKeyError

    from cspflow.errors import CspflowError

    doc = {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "chemsys": spec.system(),
        "formulas": spec.formulas(),
        "state": "submitted",
        "iteration": 0,
        "iterations": [],
        "created_at": _now(),
        "iteration_started_at": _now(),
    }
    if spec.references:
        # read before anything is stored, so a bad file leaves the database as it was
        from monty.serialization import loadfn

        try:
            loadfn(spec.references)
        except Exception as exc:
            raise CspflowError(
                f"cannot read reference entries {spec.references}: {exc}; give a JSON file of "
                "pymatgen ComputedEntries (monty dumpfn)"
            ) from None
    try:
        db.campaigns.insert_one(dict(doc))
        if spec.references:
            from cspflow.hull import load_reference_entries

            load_reference_entries(spec.references, db, level="dft")
        return doc, True
    except DuplicateKeyError:
        existing = campaign_doc(db, spec.name)
        assert existing is not None
        if _comparable(existing["spec"]) != _comparable(doc["spec"]):
            raise CspflowError(
                f"campaign {spec.name!r} already exists with a different spec; rename it, or "
                f"extend it with `cspflow campaign extend {spec.name}`"
            ) from None
        return existing, False


def _comparable(spec: dict) -> dict:
    """A spec without the fields that `campaign extend` may change."""
    return {k: v for k, v in spec.items() if k != "stop"}
