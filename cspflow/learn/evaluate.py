"""Held-out evaluation of a model and the rule that decides whether a new model is promoted.

Models are loaded and evaluated through :mod:`cspflow.mlip` (no torch import here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cspflow.errors import CspflowError
from cspflow.schemas.learn import ModelMetrics

if TYPE_CHECKING:
    from ase import Atoms
    from pymongo.database import Database

__all__ = ["TIE_ENERGY_MEV", "TIE_FORCE_MEV", "evaluate", "promotion"]


def evaluate(model_spec: str, frames: list[Atoms], db: Database | None = None) -> ModelMetrics:
    """Energy MAE (meV/atom) and force MAE (meV/A) of a model on labelled frames.

    A model that cannot run on the frames (an element it does not cover, a missing file)
    gets no figures and a note, never an exception: the new model is then compared with
    nothing.
    """
    from cspflow.mlip import load_model

    if not frames:
        return ModelMetrics(model=model_spec, n_frames=0, note="no held-out frames")
    try:
        model = load_model(model_spec, db=db)
        model.check_elements({int(z) for a in frames for z in a.numbers})
        evals = model.evaluate(frames)
    except CspflowError as exc:
        return ModelMetrics(model=model_spec, n_frames=len(frames), note=str(exc))
    e_err = [
        abs(ev.energy - a.info["REF_energy"]) / len(a) for a, ev in zip(frames, evals, strict=True)
    ]
    f_err = np.concatenate(
        [
            np.abs(ev.forces - a.arrays["REF_forces"]).ravel()
            for a, ev in zip(frames, evals, strict=True)
        ]
    )
    return ModelMetrics(
        model=model_spec,
        energy_mae_mev_per_atom=round(1000 * float(np.mean(e_err)), 3),
        force_mae_mev_per_a=round(1000 * float(np.mean(f_err)), 3),
        n_frames=len(frames),
    )


# differences within these (or 1 % of the current figure) are ties: frames whose forces vanish
# by symmetry give force MAE 0 for every model, and a tie must not block a better energy
TIE_ENERGY_MEV = 0.1
TIE_FORCE_MEV = 0.5


def _compare(d: float, current: float, tie: float) -> int:
    """-1 better, 0 tie, 1 worse."""
    if abs(d) <= max(tie, 0.01 * abs(current)):
        return 0
    return -1 if d < 0 else 1


def promotion(new: ModelMetrics, current: ModelMetrics | None) -> tuple[bool, str]:
    """Whether the new model replaces the current one, and why (or why not).

    The new model must beat the current one on the held-out split: lower energy or force MAE
    and worse on neither (a difference within :data:`TIE_ENERGY_MEV` / :data:`TIE_FORCE_MEV` or
    1 % is a tie); a current model without figures (none, or it cannot run on these elements)
    is beaten by any new model with figures.
    """
    if new.energy_mae_mev_per_atom is None or new.force_mae_mev_per_a is None:
        return False, f"new model has no held-out figures ({new.note})"
    if current is None:
        return True, "no current model for this system"
    if current.energy_mae_mev_per_atom is None or current.force_mae_mev_per_a is None:
        return True, f"current model {current.model} has no held-out figures ({current.note})"
    de = new.energy_mae_mev_per_atom - current.energy_mae_mev_per_atom
    df = new.force_mae_mev_per_a - current.force_mae_mev_per_a
    figures = (
        f"energy MAE {new.energy_mae_mev_per_atom:.1f} vs {current.energy_mae_mev_per_atom:.1f} "
        f"meV/atom, force MAE {new.force_mae_mev_per_a:.1f} vs {current.force_mae_mev_per_a:.1f} "
        f"meV/A on {new.n_frames} held-out frames"
    )
    verdict = {
        "energy": _compare(de, current.energy_mae_mev_per_atom, TIE_ENERGY_MEV),
        "force": _compare(df, current.force_mae_mev_per_a, TIE_FORCE_MEV),
    }
    worse = [n for n, v in verdict.items() if v > 0]
    if not worse and any(v < 0 for v in verdict.values()):
        ties = [n for n, v in verdict.items() if v == 0]
        tie_note = f" ({' and '.join(ties)} MAE tied)" if ties else ""
        return True, f"beats {current.model}{tie_note}: {figures}"
    if not worse:
        return False, f"ties with {current.model} on energy and force MAE: {figures}"
    return False, f"does not beat {current.model} on {' and '.join(worse)} MAE: {figures}"
