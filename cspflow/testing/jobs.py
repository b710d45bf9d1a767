"""Tiny jobflow jobs with stage metadata, used to test routing, workers and exactly-once runs.

They live in the package (like atomate2.utils.testing) because FireWorks workers in other
processes must import them by module path.
"""

from __future__ import annotations

import os
import socket
import time

from jobflow import Flow, Job, Response, job

from cspflow.jobs import stage_metadata

__all__ = [
    "record",
    "spawn_stage",
    "independent_flow",
    "work",
    "work_flow",
    "EFFECTS",
    "announce_candidates",
]

EFFECTS = "test_effects"


@job
def record(tag: str) -> dict:
    """Return where and in which process the job ran (the caller sets the stage metadata)."""
    return {
        "tag": tag,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_partition": os.environ.get("SLURM_JOB_PARTITION"),
    }


@job(metadata=stage_metadata("control"))
def spawn_stage(stage: str, tag: str) -> Response:
    """A cpu-stage job that adds a new job of ``stage`` at run time (Response(addition=...))."""
    child = record(tag)
    child.metadata["stage"] = stage
    return Response(addition=Flow([child]), output={"spawned": tag})


def independent_flow(n: int, stage: str = "dft", name: str = "many") -> Flow:
    """``n`` independent ``record`` jobs of one stage."""
    jobs: list[Flow | Job] = []
    for i in range(n):
        j = record(f"{name}-{i}")
        j.metadata["stage"] = stage
        jobs.append(j)
    return Flow(jobs, name=name)


@job
def work(tag: str, seconds: float = 0.0) -> dict:
    """Sleep, then count this execution in the ``test_effects`` collection.

    The counter is a side effect outside FireWorks' bookkeeping: a job that runs twice shows
    ``runs == 2`` there even when FireWorks records a single launch.
    """
    from cspflow.settings import get_settings
    from cspflow.store import get_client

    time.sleep(seconds)
    settings = get_settings()
    get_client(settings)[settings.db_name][EFFECTS].update_one(
        {"tag": tag}, {"$inc": {"runs": 1}, "$push": {"pids": os.getpid()}}, upsert=True
    )
    return {"tag": tag, "pid": os.getpid()}


def work_flow(n: int, seconds: float = 0.0, stage: str = "dft", name: str = "work") -> Flow:
    """``n`` independent ``work`` jobs of one stage, tagged ``{name}-{i}``."""
    jobs: list[Flow | Job] = []
    for i in range(n):
        j = work(f"{name}-{i}", seconds)
        j.metadata["stage"] = stage
        jobs.append(j)
    return Flow(jobs, name=name)


@job(metadata=stage_metadata("generate"))
def announce_candidates(campaign: str, iteration: int, formula: str) -> dict:
    """Stand-in for a generate job over candidates a test stored itself.

    Returns a :class:`~cspflow.schemas.candidate.GenerateSummary` with the ids of the
    iteration's ``generated`` candidates, as a real generate job would (ids, never structures).
    """
    from cspflow.schemas.candidate import GenerateSummary
    from cspflow.store import candidates, get_database

    ids = candidates.ids_where(get_database(), campaign=campaign, iteration=iteration,
                               status="generated")  # fmt: skip
    return GenerateSummary(campaign=campaign, iteration=iteration, formula=formula,
                           requested=len(ids), candidate_ids=ids, n_new=len(ids),
                           seed=0).model_dump()  # fmt: skip
