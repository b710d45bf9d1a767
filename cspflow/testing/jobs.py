"""Tiny jobflow jobs with stage metadata, used to test routing, workers and exactly-once runs.

They live in the package (like atomate2.utils.testing) because FireWorks workers in other
processes must import them by module path.
"""

from __future__ import annotations

import os
import socket

from jobflow import Flow, Response, job

__all__ = ["record", "spawn_stage", "independent_flow"]


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


@job(metadata={"stage": "control"})
def spawn_stage(stage: str, tag: str) -> Response:
    """A cpu-stage job that adds a new job of ``stage`` at run time (Response(addition=...))."""
    child = record(tag)
    child.metadata["stage"] = stage
    return Response(addition=Flow([child]), output={"spawned": tag})


def independent_flow(n: int, stage: str = "dft", name: str = "many") -> Flow:
    """``n`` independent ``record`` jobs of one stage."""
    jobs = []
    for i in range(n):
        j = record(f"{name}-{i}")
        j.metadata["stage"] = stage
        jobs.append(j)
    return Flow(jobs, name=name)
