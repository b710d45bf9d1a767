"""How many workers `campaign run` starts and how an iteration's candidates are split into jobs."""

from __future__ import annotations

import os

import pytest

from cspflow.campaign.loop import balanced_batches
from cspflow.scheduler.local import MAX_CPU_GPU_WORKERS, LocalWorkers, local_gpu_workers


@pytest.mark.parametrize(
    "n, size, sizes",
    [(40, 32, [20, 20]), (64, 32, [32, 32]), (65, 32, [22, 22, 21]), (7, 3, [3, 2, 2]),
     (5, 32, [5]), (0, 32, [])],
)  # fmt: skip
def test_batches_are_as_few_as_the_size_allows_and_even(n, size, sizes):
    ids = [f"c{k}" for k in range(n)]
    batches = balanced_batches(ids, size)
    assert [len(b) for b in batches] == sizes
    assert [c for b in batches for c in b] == ids  # every candidate once, in order


def test_gpu_workers_one_per_core_on_the_cpu_one_with_cuda(settings):
    cores = os.cpu_count() or 1
    on_cpu = settings.model_copy(update={"device": "cpu", "local_gpu_workers": None})
    assert local_gpu_workers(on_cpu) == max(1, min(cores, MAX_CPU_GPU_WORKERS))
    on_cuda = on_cpu.model_copy(update={"device": "cuda"})
    assert local_gpu_workers(on_cuda) == 1
    assert local_gpu_workers(on_cpu.model_copy(update={"local_gpu_workers": 3})) == 3


def test_worker_slots_names_and_threads(settings, tmp_path):
    workers = LocalWorkers(settings, log_dir=tmp_path, gpu_workers=2)
    assert workers._slots() == [("cpu", "cpu"), ("gpu", "gpu"), ("gpu", "gpu1")]
    cores = os.cpu_count() or 1
    saved = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        # the cpu worker keeps half the cores; the gpu workers share the rest of them
        assert workers._env("cpu")["OMP_NUM_THREADS"] == str(max(1, cores // 2))
        assert workers._env("gpu")["OMP_NUM_THREADS"] == str(max(1, cores // 3))
        single = LocalWorkers(settings, log_dir=tmp_path, gpu_workers=1)
        assert single._env("gpu")["OMP_NUM_THREADS"] == str(max(1, cores // 2))  # as before
    finally:
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved
