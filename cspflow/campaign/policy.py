"""Pure stop rules of the campaign loop: did an iteration improve the hull, how long has the
search been stale, should the campaign stop, does an iteration end with a learning round.

No database and no jobflow: :func:`cspflow.campaign.loop.decide` reads the state, asks these
rules, and records the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cspflow.schemas.campaign import CampaignSpec, StopSpec

__all__ = ["improved", "stale_count", "stop_reason", "learns_in"]


def improved(hull: dict | None, previous: list[dict]) -> bool:
    """Did this iteration improve the hull: a new stable entry (a lower-energy structure of a
    formula becomes a new stable entry), or the first hull of the campaign."""
    if hull is None:
        return False
    if hull.get("added_to_stable"):
        return True
    return not previous  # the first hull is an improvement


def stale_count(improved: bool, previous: list[dict]) -> int:
    """Iterations in a row without hull improvement, this one included."""
    return 0 if improved else 1 + (previous[-1].get("stale", 0) if previous else 0)


def stop_reason(
    stop: StopSpec,
    iteration: int,
    stale: int,
    dft_runs_total: int,
    state: str | None,
    confidence: dict[str, float | None] | None = None,
) -> str | None:
    """Why the campaign stops after ``iteration`` (None: it goes on).

    Parameters
    ----------
    stop
        The campaign's stop rules as they are now (``campaign extend`` raises max_iterations).
    iteration
        The iteration that just ended.
    stale
        :func:`stale_count` of that iteration.
    dft_runs_total
        DFT runs of the campaign so far.
    state
        The campaign's state (``paused`` stops it).
    confidence
        Per composition, the estimated probability that its lowest structure is the ground
        state (:func:`cspflow.campaign.evolution.ground_state`; None: nothing relaxed).
    """
    if iteration + 1 >= stop.max_iterations:
        return f"reached max_iterations ({stop.max_iterations})"
    if stale >= stop.patience:
        return f"no hull improvement in {stale} iteration(s) (patience {stop.patience})"
    if stop.dft_budget is not None and dft_runs_total >= stop.dft_budget:
        return f"DFT budget used ({dft_runs_total}/{stop.dft_budget})"
    target = stop.ground_state_confidence
    if target is not None and confidence:
        values = [c for c in confidence.values() if c is not None]
        if len(values) == len(confidence) and min(values) >= target:
            return (f"ground state likely seen (confidence {min(values):.3f} >= {target} for "
                    f"{', '.join(sorted(confidence))})")  # fmt: skip
    if state == "paused":
        return "paused"
    return None


def learns_in(spec: CampaignSpec, iteration: int) -> bool:
    """Whether ``iteration`` ends with a learning round: every ``learn.every`` iterations,
    never in the last one (its model would pre-relax nothing)."""
    last = iteration + 1 >= spec.stop.max_iterations
    return spec.learn.enabled and (iteration + 1) % spec.learn.every == 0 and not last
