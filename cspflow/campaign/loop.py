"""The campaign loop: one iteration as a Flow, its control jobs, and the job that decides to
continue or stop.

- :func:`iteration_flow`: generate (one job per formula) -> :func:`prerelax_fanout` (batches,
  gpu) -> select -> :func:`dft_gate` (DFT fan-out, cpu) -> hull -> [learn -> rescreen (gpu),
  when ``learn.enabled``] -> :func:`decide`;
- :func:`decide` ends every iteration: it summarises the iteration
  (:mod:`~cspflow.campaign.state`), asks the stop rules (:mod:`~cspflow.campaign.policy`),
  records both, and either stops or returns ``Response(addition=iteration_flow(next))``
  (jobflow's fibonacci idiom).

What a stage needs travels along the graph: the spec is a job input of the control jobs (its
stop rules are read again from the database, where ``campaign extend`` raises them), the model a
learning round leaves current goes to the next iteration's prerelax, and the selection's ids to
DFT. Job documents carry ids and counts only; structures stay in the ``candidates`` collection.
"""

from __future__ import annotations

from typing import Any

from jobflow import Flow, Job, Response, job

from cspflow.campaign import policy, state
from cspflow.campaign.evolution import (
    confidences,
    next_shares,
    operator_summary,
    rediscovery_summary,
)
from cspflow.jobs import stage_metadata
from cspflow.schemas.campaign import CampaignSpec
from cspflow.store import candidates

__all__ = [
    "iteration_flow",
    "campaign_flow",
    "prerelax_fanout",
    "balanced_batches",
    "prerelax_model",
    "dft_gate",
    "decide",
]


@job
def prerelax_fanout(
    generated: list[dict],
    name: str,
    iteration: int,
    spec: CampaignSpec | None = None,
    model: str | None = None,
) -> Response | list:
    """Split the iteration's new candidates into batches, one prerelax job (gpu) per batch.

    ``model`` is the model a learning round left current (None: :func:`prerelax_model`);
    without ``spec`` (a job of an earlier release) the spec is read from the database.
    """
    from cspflow.prerelax.stage import PrerelaxMaker

    db = state.get_db()
    spec = spec or state.spec_from_db(db, name)
    ids = [cid for summary in generated if summary for cid in summary.get("candidate_ids", [])]
    # candidates of this iteration still waiting (a resumed iteration picks them up as well)
    pending = candidates.ids_where(db, campaign=name, iteration=iteration, status="generated")
    ids = list(dict.fromkeys(ids + pending))
    if not ids:
        return []
    p = spec.prerelax
    maker = PrerelaxMaker(settings=p.model_copy(update={"model": model or prerelax_model(spec)}))
    jobs: list[Flow | Job] = [
        maker.make(chunk, campaign=name, iteration=iteration)
        for chunk in balanced_batches(ids, p.batch_size)
    ]
    for k, j in enumerate(jobs):
        j.name = f"prerelax {name} it{iteration} batch{k}"
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name="prerelax"))


def balanced_batches(ids: list[str], size: int) -> list[list[str]]:
    """``ids`` in as few batches of at most ``size`` as possible, their sizes differing by at
    most one (40 candidates at 32: 20 and 20, not 32 and 8: jobs that run side by side end
    together)."""
    if not ids:
        return []
    n = -(-len(ids) // size)
    q, r = divmod(len(ids), n)
    bounds = [k * q + min(k, r) for k in range(n + 1)]
    return [ids[bounds[k] : bounds[k + 1]] for k in range(n)]


def prerelax_model(spec: CampaignSpec) -> str:
    """The model that pre-relaxes now: with learning on, the system's current registry model
    (once one was promoted), else the spec's ``prerelax.model``."""
    if not spec.learn.enabled:
        return spec.prerelax.model
    from cspflow.models import current_model_spec

    db = state.get_db()
    fidelity = spec.dft.fidelity()  # a model trained on other labels is never current here
    key = fidelity.key if fidelity is not None else None
    return (
        current_model_spec(db, spec.system(), default=spec.prerelax.model, fidelity=key)
        or spec.prerelax.model
    )


def _at_own_fidelity(db: Any, spec: CampaignSpec, selected: list[str]) -> list[str]:
    """Candidates another fidelity computed that this campaign's fidelity has not: per formula
    the ``select.top_k`` lowest (a campaign at a new functional runs its own DFT on structures
    that deduplication kept it from generating again; docs/fidelity.md)."""
    fidelity = spec.dft.fidelity()
    if fidelity is None or spec.select.top_k == 0:
        return []
    pool = candidates.other_fidelity_pool(db, spec.formulas(), fidelity.key, spec.select.top_k)
    return [cid for cid in pool if cid not in selected]


@job
def dft_gate(
    selection: dict, name: str, iteration: int, spec: CampaignSpec | None = None
) -> Response | list:
    """Send the selected candidates to DFT within the remaining budget (or skip DFT)."""
    from cspflow.dft.stage import DftStageMaker

    db = state.get_db()
    spec = spec or state.spec_from_db(db, name)
    selected = list((selection or {}).get("selected", []))
    if spec.dft.engine == "none":
        return []
    selected += _at_own_fidelity(db, spec, selected)
    if not selected:
        return []
    budgets = [b for b in (spec.dft.budget, spec.stop.dft_budget) if b is not None]
    if budgets:
        remaining = max(0, min(budgets) - state.dft_runs(db, name))
        # keep the order of the selection (lowest energy first per formula)
        selected = selected[:remaining]
    if not selected:
        return []
    fanout = DftStageMaker(settings=spec.dft).make(selected, campaign=name, iteration=iteration)
    fanout.name = f"dft {name} it{iteration}"
    return Response(replace=fanout)


@job
def decide(
    name: str,
    iteration: int,
    hull: dict | None = None,
    learned: dict | None = None,
    rescreened: dict | None = None,
    spec: CampaignSpec | None = None,
    model: str | None = None,
) -> Response | dict:
    """Record the iteration and continue (Response(addition=next iteration)) or stop.

    ``model`` is the prerelax model this iteration was handed; the next iteration gets the
    model the learning round left current, else the same.
    """  # fmt: skip
    db = state.get_db()
    doc = state.campaign_doc(db, name) or {}
    spec = state.live_spec(doc, spec) if doc else spec or state.spec_from_db(db, name)
    previous = state.previous_iterations(doc, iteration)
    improved = policy.improved(hull, previous)
    stale = policy.stale_count(improved, previous)
    summary = state.iteration_summary(db, name, iteration)
    summary.update(
        {
            "hull": hull,
            "improved": improved,
            "stale": stale,
            "dft_runs_total": state.dft_runs(db, name),
            "learn": _learn_record(learned, rescreened),
            "finished_at": state.utcnow(),
            "wall_time_s": state.wall_time_s(doc),
            "operators": operator_summary(db, spec, iteration),
            "next_shares": next_shares(db, spec, iteration),
            "rediscovery": rediscovery_summary(db, spec),
        }
    )
    reason = policy.stop_reason(
        spec.stop, iteration, stale, summary["dft_runs_total"], doc.get("state"),
        confidences(summary["rediscovery"]),
    )  # fmt: skip
    state.record_iteration(db, name, iteration, summary, reason)
    out = {"iteration": iteration, "stop_reason": reason, "improved": improved}
    if reason is not None:
        return out
    nxt = (learned or {}).get("current_model") or model
    return Response(output=out, addition=iteration_flow(spec, iteration + 1, model=nxt))


def _learn_record(learned: dict | None, rescreened: dict | None) -> dict | None:
    """What the iteration's learning round did (small: ids, figures, reasons)."""
    if learned is None:
        return None
    rec = {k: learned.get(k) for k in ("trained", "model_id", "promoted", "reason",
                                       "current_model", "n_frames", "metrics",
                                       "forgetting")}  # fmt: skip
    if rescreened is not None:
        rec["rescreen"] = {
            "skipped": rescreened.get("skipped"),
            "n_single_points": rescreened.get("n_single_points", 0),
            "relaxed": len(rescreened.get("relaxed") or []),
            "failed": len(rescreened.get("failed") or {}),
            "best_changed": rescreened.get("best_changed", []),
        }
    return rec


def iteration_flow(spec: CampaignSpec, iteration: int, model: str | None = None) -> Flow:
    """One iteration of the loop as a Flow (generate -> prerelax -> select -> dft -> hull -> decide).

    ``model`` is the prerelax model a learning round left current (None: :func:`prerelax_model`
    when the prerelax fan-out runs).
    """
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
    fan = prerelax_fanout([j.output for j in gens], name, iteration, spec=spec, model=model)
    select = SelectMaker(settings=spec.select, learned=_learned_committee(spec)).make(
        campaign=name, iteration=iteration, prerelax_outputs=[fan.output]
    )
    gate = dft_gate(select.output, name, iteration, spec=spec)
    hull = HullMaker(correction=spec.dft.correction).make(
        spec.system(), name, iteration, after=gate.output
    )
    extra: list[Job] = []
    if policy.learns_in(spec, iteration):
        learn, rescreen = _learning_jobs(spec, iteration, after=hull.output)
        extra = [learn, rescreen]
        end = decide(name, iteration, hull.output, learn.output, rescreen.output, spec=spec,
                     model=model)  # fmt: skip
    else:
        end = decide(name, iteration, hull.output, spec=spec, model=model)
    # dynamic=False: jobs these create at run time carry their own stage (routing), not ours
    for j, stage in ((fan, "control"), (gate, "dft"), (end, "decide")):
        j.update_metadata(stage_metadata(stage, name, iteration), dynamic=False)
    fan.name, gate.name = f"prerelax {name} it{iteration}", f"dft gate {name} it{iteration}"
    hull.name, end.name = f"hull {name} it{iteration}", f"decide {name} it{iteration}"
    select.name = f"select {name} it{iteration}"
    select.update_metadata(stage_metadata("select", name, iteration), dynamic=False)
    return Flow([*gens, fan, select, gate, hull, *extra, end], output=end.output,
                name=f"{name} iteration {iteration}")  # fmt: skip


def _learned_committee(spec: CampaignSpec) -> dict[str, Any] | None:
    """Where select finds the committee learning trained (None: prerelax.committee decides).

    A campaign that learns ranks its uncertain picks by the committee of its system and DFT
    fidelity (:func:`cspflow.models.learned_committee`, looked up when select runs); an
    explicit ``prerelax.committee`` list overrides it.
    """
    if not spec.learn.enabled or spec.select.uncertain_k == 0 or spec.prerelax.committee:
        return None
    fidelity = spec.dft.fidelity()
    return {"chemsys": spec.system(), "fidelity": fidelity.key if fidelity is not None else None}


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
