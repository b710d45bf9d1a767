"""A wall-clock limit per generated structure.

PyXtal can loop for minutes on some space group / Wyckoff combinations. In the main thread the
limit is a ``SIGALRM`` interval timer whose handler raises inside the running Python code (PyXtal
spends its time in Python loops, so the exception lands promptly; the timer re-fires every 10 ms
until the call ends, in case a bare ``except:`` swallowed it). Elsewhere (worker threads,
or ``mode="process"``) the call runs in a persistent spawned child process that is killed and
replaced when it overruns, which also stops code stuck inside a C extension.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["GenerationTimeout", "call_with_time_limit", "shutdown_worker"]


class GenerationTimeout(BaseException):
    """A single structure took longer than its time limit.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` blocks inside PyXtal
    cannot swallow it.
    """


_pool = None
_pool_lock = threading.Lock()


def _signal_usable() -> bool:
    return (
        hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    )


def _raise_timeout(signum: int, frame: Any) -> None:
    raise GenerationTimeout("time limit reached")


def _call_signal(fn: Callable[..., Any], args: tuple, seconds: float) -> Any:
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    # Re-arm every 10 ms: PyXtal has bare ``except:`` blocks that can eat one alarm.
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.01)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


def shutdown_worker() -> None:
    """Kill the child process used by ``mode="process"`` (started again on demand)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def _warm() -> bool:
    import pymatgen.core  # noqa: F401
    import pyxtal  # noqa: F401

    return True


def _call_process(fn: Callable[..., Any], args: tuple, seconds: float) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            # Start-up and imports (seconds) must not count against the first structure.
            _pool.submit(_warm).result(timeout=120)
        pool = _pool
    future = pool.submit(fn, *args)
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        shutdown_worker()
        raise GenerationTimeout("time limit reached") from None


def call_with_time_limit(
    fn: Callable[..., Any], args: tuple = (), seconds: float = 10.0, mode: str = "auto"
) -> Any:
    """Return ``fn(*args)``, or raise :class:`GenerationTimeout` after ``seconds``.

    Parameters
    ----------
    fn
        The function; with ``mode="process"`` it and its arguments must be picklable.
    args
        Positional arguments.
    seconds
        Wall-clock limit; ``<= 0`` means no limit.
    mode
        ``"auto"`` (signal timer in the main thread, child process elsewhere), ``"signal"``
        or ``"process"``.
    """
    if seconds <= 0:
        return fn(*args)
    if mode == "signal" or (mode == "auto" and _signal_usable()):
        return _call_signal(fn, args, seconds)
    if mode not in ("auto", "process"):
        raise ValueError(f"unknown time-limit mode {mode!r}")
    return _call_process(fn, args, seconds)
