"""Job identity: pipeline stage names, where each runs, and the metadata every job carries.

The one place that decides routing and builds job metadata:

- :data:`STAGE_CATEGORY` / :func:`category_for`: stage -> worker category;
  :mod:`cspflow.scheduler.launchpad` turns a job's stage into the FireWorks ``_category`` of its
  firework;
- :func:`stage_metadata`: ``{"stage": <name>, "campaign": ..., "iteration": ...}`` for every
  cspflow job (the Makers call it; routing and ``campaign extend`` query it);
- :data:`MOVED_JOB_PATHS`: where the job functions a database written by the previous release
  names (``@module``/``@callable`` in serialised jobs) live now.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STAGE_CATEGORY", "category_for", "stage_metadata", "MOVED_JOB_PATHS"]

STAGE_CATEGORY: dict[str, str] = {
    "generate": "cpu",
    "prerelax": "gpu",
    "select": "cpu",
    "dft": "cpu",
    "hull": "cpu",
    "learn": "gpu",
    "rescreen": "gpu",
    "control": "cpu",
    "decide": "cpu",
}


def category_for(stage: str | None) -> str:
    """Return the worker category ("gpu" or "cpu") for a stage; unknown stages run on cpu."""
    return STAGE_CATEGORY.get(stage or "", "cpu")


def stage_metadata(
    stage: str, campaign: str | None = None, iteration: int | None = None, **extra: Any
) -> dict[str, Any]:
    """The metadata of a cspflow job: its stage, and campaign/iteration when it has them.

    Parameters
    ----------
    stage
        Pipeline stage (a key of :data:`STAGE_CATEGORY`); decides where the job runs.
    campaign, iteration
        The campaign iteration the job belongs to; left out when None (an ad hoc job).
    **extra
        Further identity (``candidate_id`` of a DFT job, ``chemsys`` of a learn job); None
        values are left out.
    """
    meta: dict[str, Any] = {"stage": stage}
    meta.update({k: v for k, v in extra.items() if v is not None})
    if campaign is not None:
        meta["campaign"] = campaign
    if iteration is not None:
        meta["iteration"] = iteration
    return meta


#: (old module, old callable) -> (new module, new callable) for every job function a database
#: written by the previous release (772b1e9) can name. Method jobs of that release
#: (``PrerelaxMaker.run_batch``, ``SelectMaker.run_select``) were bound to a Maker whose fields
#: (model, fmax, ... / top_k, energy_window, ...) now form the ``settings`` argument of the new
#: function; the campaign control jobs gained keyword arguments with defaults only (an old
#: document's positional arguments still fit).
MOVED_JOB_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("cspflow.campaign", "prerelax_fanout"): ("cspflow.campaign.loop", "prerelax_fanout"),
    ("cspflow.campaign", "dft_gate"): ("cspflow.campaign.loop", "dft_gate"),
    ("cspflow.campaign", "hull_update"): ("cspflow.hull", "hull_update"),
    ("cspflow.campaign", "decide"): ("cspflow.campaign.loop", "decide"),
    ("cspflow.prerelax", "PrerelaxMaker.run_batch"): ("cspflow.prerelax.stage", "prerelax_job"),
    ("cspflow.prerelax", "SelectMaker.run_select"): ("cspflow.prerelax.select", "select_job"),
    ("cspflow.generate.maker", "generate_candidates"): (
        "cspflow.generate.maker",
        "generate_candidates",
    ),
    ("cspflow.learn", "learn_job"): ("cspflow.learn.round", "learn_job"),
    ("cspflow.rescreen", "rescreen_job"): ("cspflow.rescreen", "rescreen_job"),
    ("cspflow.dft.stage", "record_dft"): ("cspflow.dft.stage", "record_dft"),
    ("cspflow.dft.stage", "dft_candidate"): ("cspflow.dft.stage", "dft_candidate"),
    ("cspflow.dft.stage", "dft_fanout"): ("cspflow.dft.stage", "dft_fanout"),
    ("cspflow.demo", "build_structure"): ("cspflow.demo", "build_structure"),
    ("cspflow.demo", "analyse_structure"): ("cspflow.demo", "analyse_structure"),
}
