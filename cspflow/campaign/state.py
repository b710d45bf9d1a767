"""The campaign's state: every read and write of the ``campaigns`` collection, and the counts
of the ``candidates`` collection an iteration's summary is made of.

A campaign document holds the spec as submitted (``campaign extend`` raises
``stop.max_iterations``), the state (submitted, running, paused, completed), and one summary
per finished iteration; :func:`cspflow.campaign.loop.decide` writes the summaries through
:func:`record_iteration`.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from cspflow.schemas.campaign import CampaignSpec, StopSpec
from cspflow.store import candidate_stats

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "get_db",
    "utcnow",
    "campaign_doc",
    "register_campaign",
    "stored_spec",
    "spec_from_db",
    "live_spec",
    "previous_iterations",
    "wall_time_s",
    "record_iteration",
    "iteration_summary",
    "dft_runs",
]


def utcnow() -> datetime.datetime:
    """Now, in UTC (timezone-aware)."""
    return datetime.datetime.now(datetime.UTC)


def _aware(t: datetime.datetime) -> datetime.datetime:
    return t if t.tzinfo else t.replace(tzinfo=datetime.UTC)


def get_db() -> Database:
    """The cspflow database of the configured settings (read at call time)."""
    from cspflow.store import get_database

    return get_database()


def campaign_doc(db: Database, name: str) -> dict | None:
    """The stored campaign document (spec, state, per-iteration summaries)."""
    return db.campaigns.find_one({"name": name}, {"_id": 0})


def stored_spec(data: dict[str, Any]) -> CampaignSpec:
    """Validate a spec as stored in ``campaigns``.

    Earlier releases stored ``generate.batch_size`` (read by nothing, since removed from the
    spec); it is dropped here so their campaigns still load.
    """
    gen = data.get("generate")
    if isinstance(gen, dict) and "batch_size" in gen:
        data = {**data, "generate": {k: v for k, v in gen.items() if k != "batch_size"}}
    return CampaignSpec.model_validate(data)


def spec_from_db(db: Database, name: str) -> CampaignSpec:
    """The campaign's current spec (extensions edit it in the database); for jobs of an earlier
    release, which were not handed the spec."""
    doc = db.campaigns.find_one({"name": name}, {"spec": 1})
    if doc is None:
        from cspflow.errors import CspflowError

        raise CspflowError(f"campaign {name!r} is not in the database")
    return stored_spec(doc["spec"])


def live_spec(doc: dict[str, Any], spec: CampaignSpec | None) -> CampaignSpec:
    """The spec handed along the graph with the stop rules as they are now in ``doc`` (the one
    part ``campaign extend`` changes while a campaign runs)."""
    if spec is None:
        return stored_spec(doc["spec"])
    stop = StopSpec.model_validate((doc.get("spec") or {}).get("stop", spec.stop.model_dump()))
    return spec.model_copy(update={"stop": stop})


def previous_iterations(doc: dict[str, Any], iteration: int) -> list[dict[str, Any]]:
    """The recorded summaries of the iterations before ``iteration``."""
    return [it for it in doc.get("iterations", []) if it["iteration"] < iteration]


def wall_time_s(doc: dict[str, Any]) -> float | None:
    """Seconds since the current iteration started (None when the document does not say)."""
    started = doc.get("iteration_started_at") or doc.get("created_at")
    return round((utcnow() - _aware(started)).total_seconds(), 1) if started else None


def record_iteration(
    db: Database, name: str, iteration: int, summary: dict[str, Any], reason: str | None
) -> None:
    """Store an iteration's summary (replacing an earlier record of it) and the campaign's new
    state: running the next iteration, or paused/completed with ``stop_reason``."""
    db.campaigns.update_one(
        {"name": name},
        {"$pull": {"iterations": {"iteration": iteration}}},
    )
    update: dict[str, Any] = {"$push": {"iterations": summary}}
    if reason is None:
        update["$set"] = {"state": "running", "iteration": iteration + 1,
                          "iteration_started_at": utcnow()}  # fmt: skip
    else:
        update["$set"] = {"state": "paused" if reason == "paused" else "completed",
                          "stop_reason": reason, "finished_at": utcnow()}  # fmt: skip
    db.campaigns.update_one({"name": name}, update)


def register_campaign(db: Database, spec: CampaignSpec) -> tuple[dict, bool]:
    """Store a new campaign (state ``submitted``); return (document, created).

    An existing campaign of the same name is returned unchanged when its spec is the same;
    a different spec under the same name is an error (nothing is overwritten).
    """
    from pymongo.errors import DuplicateKeyError

    from cspflow.errors import CspflowError

    doc: dict[str, Any] = {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "chemsys": spec.system(),
        "formulas": spec.formulas(),
        "state": "submitted",
        "iteration": 0,
        "iterations": [],
        "created_at": utcnow(),
        "iteration_started_at": utcnow(),
    }
    refs: list[dict[str, Any]] = []
    fid: dict[str, Any] | None = None
    if spec.references:
        # read and checked against the campaign's fidelity before anything is stored, so a
        # bad file leaves the database as it was
        from cspflow.dft.corrections import reference_entries
        from cspflow.references import reference_documents

        fidelity = spec.dft.fidelity()
        if fidelity is None:
            raise CspflowError(
                "references are DFT energies and dft.engine is none (MLIP energies never share "
                "a hull with them); remove references or set dft.engine"
            )
        fid = fidelity.model_dump()
        entries = reference_entries(spec.references, spec.system())
        if not spec.dft.correction:
            refs = reference_documents(spec.references, fid, entries=entries)
    from cspflow.references import store_reference_documents

    try:
        db.campaigns.insert_one(dict(doc))
        if spec.references and spec.dft.correction:
            # processed by the campaign's correction scheme (MP2020): at its fidelity by construction
            from cspflow.dft.corrections import import_references

            import_references(spec.references, db, spec.system(), spec.dft.correction, fidelity=fid)
        store_reference_documents(db, refs)
        return doc, True
    except DuplicateKeyError:
        existing = campaign_doc(db, spec.name)
        assert existing is not None
        # through the schema: a spec stored by an earlier release lacks later defaults. What
        # the file sets must equal what is stored; what it leaves out keeps the stored value
        # (a campaign started under earlier defaults goes on with them)
        stored = stored_spec(existing["spec"]).model_dump(mode="json")
        if not _within(_comparable(spec.model_dump(mode="json", exclude_unset=True)),
                       _comparable(stored)):  # fmt: skip
            raise CspflowError(
                f"campaign {spec.name!r} already exists with a different spec; rename it, or "
                f"extend it with `cspflow campaign extend {spec.name}`"
            ) from None
        return existing, False


def _within(given: Any, stored: Any) -> bool:
    """Whether every value of ``given`` (a spec's explicitly set fields) equals ``stored``'s."""
    if isinstance(given, dict) and isinstance(stored, dict):
        return all(k in stored and _within(v, stored[k]) for k, v in given.items())
    return bool(given == stored)


def _comparable(spec: dict) -> dict:
    """A spec without the fields that `campaign extend` may change."""
    return {k: v for k, v in spec.items() if k != "stop"}


def set_campaign_state(db: Database, name: str, state: str) -> None:
    """Record a campaign's state (``paused`` / ``running``: `cspflow campaign pause|resume`)."""
    db.campaigns.update_one({"name": name}, {"$set": {"state": state}})


def dft_runs(db: Database, name: str) -> int:
    """Number of candidates the campaign sent through DFT (any outcome): its own, and those of
    earlier campaigns it re-screened and selected (:func:`cspflow.store.candidate_stats.dft_runs`:
    a result names the campaign that ran it, and counts for that one only)."""
    return candidate_stats.dft_runs(db, name)


def iteration_summary(db: Database, name: str, iteration: int) -> dict[str, Any]:
    """Counts per status, how the MLIP relaxations ended (``relaxations``: converged / pruned /
    failed, total steps, model evaluations, wall s) and best energies of one iteration (what
    ``campaign status`` shows)."""
    return {"iteration": iteration,
            "counts": candidate_stats.status_counts(db, name, iteration),
            "duplicates": candidate_stats.count_duplicates(db, name, iteration),
            "relaxations": candidate_stats.relax_stats(db, name, iteration),
            "best_energy_per_atom": candidate_stats.best_energies(db, name),
            # how many of the 10 best so far came from each generator (templates among them)
            "best_sources": candidate_stats.best_sources(db, name, 10)}  # fmt: skip
