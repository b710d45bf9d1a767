"""Held-out evaluation of a model and the rule that decides whether a new model is promoted.

What CSP needs from a potential is the order of the structures of one composition, not their
absolute energies: a code or functional offset (GPAW's reference atoms against VASP's PAW
energies, MP2020 corrections, a constant per element) moves every structure of a composition by
the same amount and changes no ranking. The figures that decide promotion are therefore, per
composition of the held-out split, the MAE of relative energies (E/atom minus that of the
composition's lowest labelled frame, the anchor, for DFT and for the model each), Spearman's
rank correlation with DFT, and the force MAE on frames whose DFT forces do not vanish by
symmetry. The absolute energy MAE is kept as information only.

Models are loaded and evaluated through :mod:`cspflow.mlip` (no torch import here).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from cspflow.errors import CspflowError
from cspflow.schemas.learn import ModelMetrics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ase import Atoms
    from pymongo.database import Database

__all__ = [
    "SYMMETRIC_FORCE_EV_PER_A",
    "TIE_ENERGY_MEV",
    "TIE_FORCE_MEV",
    "TIE_RANK",
    "evaluate",
    "metrics_from_predictions",
    "promotion",
    "reduced_formula",
]

#: frames whose largest DFT force is at most this (eV/A) have forces that vanish by symmetry
#: (a relaxed or high-symmetry cell): every model scores about 0 there, so they are not counted
#: in the force MAE that decides promotion
SYMMETRIC_FORCE_EV_PER_A = 0.01


def reduced_formula(atoms: Atoms) -> str:
    """The reduced formula of a frame (the composition its relative energies belong to)."""
    from pymatgen.core import Composition

    return Composition(atoms.get_chemical_formula()).reduced_formula


def metrics_from_predictions(
    model_spec: str,
    frames: list[Atoms],
    energies: list[float],
    forces: list[np.ndarray],
    anchors: Sequence[tuple[Atoms, float]] = (),
) -> ModelMetrics:
    """The held-out figures of one model from its predictions on labelled frames.

    Parameters
    ----------
    model_spec
        Name recorded with the figures.
    frames
        Frames with ``REF_energy`` (eV) and ``REF_forces`` (eV/A).
    energies, forces
        The model's energy (eV) and forces (eV/A) for each frame.
    anchors
        Per composition at most one ``(frame, model energy in eV)``: the composition's lowest
        DFT frame of the whole labelled set (:attr:`TrainingSet.anchors
        <cspflow.learn.dataset.TrainingSet.anchors>`, training frames included). With an
        anchor, a held-out frame's relative energy is its energy above the anchor, so one
        held-out structure already says whether the model places it correctly against the
        lowest known structure (what ranking needs); without one, relative energies are taken
        within the held-out frames of the composition.

    Returns
    -------
    ModelMetrics
        Relative-energy MAE and Spearman rank correlation over the compositions with an anchor
        or with two or more held-out frames (rank correlation: held-out frames and the anchor,
        averaged over compositions, weighted by their frames; compositions whose DFT or model
        energies are all equal have none); force MAE on the held-out frames whose largest DFT
        force is above :data:`SYMMETRIC_FORCE_EV_PER_A`; absolute energy and force MAE over
        every held-out frame; the mean signed energy offset.
    """
    from scipy.stats import spearmanr

    e_ref = np.array([a.info["REF_energy"] / len(a) for a in frames])
    e_mod = np.array([e / len(a) for a, e in zip(frames, energies, strict=True)])
    groups: dict[str, list[int]] = defaultdict(list)
    for i, atoms in enumerate(frames):
        groups[reduced_formula(atoms)].append(i)
    held_ids = {a.info.get("frame_id") for a in frames}
    anchor_of = {reduced_formula(a): (a, e) for a, e in anchors}
    rel_err: list[float] = []
    rhos: list[tuple[float, int]] = []
    n_compositions = 0
    for formula, idx in groups.items():
        ref, mod = e_ref[idx], e_mod[idx]
        if formula in anchor_of:
            atoms, energy = anchor_of[formula]
            ref0, mod0 = atoms.info["REF_energy"] / len(atoms), energy / len(atoms)
            if atoms.info.get("frame_id") not in held_ids:  # ranked with the held-out frames
                ref, mod = np.append(ref, ref0), np.append(mod, mod0)
            rel_err.extend(np.abs((e_mod[idx] - mod0) - (e_ref[idx] - ref0)).tolist())
        elif len(idx) >= 2:
            rel_err.extend(np.abs((mod - mod.min()) - (ref - ref.min())).tolist())
        else:
            continue  # one frame of a composition has no relative energy to get wrong
        n_compositions += 1
        if np.ptp(ref) > 0 and np.ptp(mod) > 0:
            rho = float(spearmanr(ref, mod).statistic)
            if np.isfinite(rho):
                rhos.append((rho, len(ref)))
    f_all, f_moving = [], []
    n_force = 0
    for atoms, f in zip(frames, forces, strict=True):
        ref_f = atoms.arrays["REF_forces"]
        err = np.abs(np.asarray(f) - ref_f).ravel()
        f_all.append(err)
        if float(np.linalg.norm(ref_f, axis=1).max()) > SYMMETRIC_FORCE_EV_PER_A:
            f_moving.append(err)
            n_force += 1
    weight = sum(n for _, n in rhos)
    return ModelMetrics(
        model=model_spec,
        energy_mae_mev_per_atom=round(1000 * float(np.mean(np.abs(e_mod - e_ref))), 3),
        force_mae_mev_per_a=round(1000 * float(np.mean(np.concatenate(f_all))), 3),
        n_frames=len(frames),
        relative_energy_mae_mev_per_atom=(
            round(1000 * float(np.mean(rel_err)), 3) if rel_err else None
        ),
        rank_correlation=(round(sum(r * n for r, n in rhos) / weight, 4) if weight else None),
        force_mae_moving_mev_per_a=(
            round(1000 * float(np.mean(np.concatenate(f_moving))), 3) if f_moving else None
        ),
        n_relative_frames=len(rel_err),
        n_compositions=n_compositions,
        n_force_frames=n_force,
        energy_offset_mev_per_atom=round(1000 * float(np.mean(e_mod - e_ref)), 3),
    )


def evaluate(
    model_spec: str,
    frames: list[Atoms],
    db: Database | None = None,
    anchors: Sequence[Atoms] = (),
) -> ModelMetrics:
    """Held-out figures of a model on labelled frames (see :func:`metrics_from_predictions`;
    ``anchors``: per composition its lowest labelled frame, evaluated with the held-out ones).

    A model that cannot run on the frames (an element it does not cover, a missing file)
    gets no figures and a note, never an exception: the new model is then compared with
    nothing.
    """
    from cspflow.mlip import load_model

    if not frames:
        return ModelMetrics(model=model_spec, n_frames=0, note="no held-out frames")
    try:
        model = load_model(model_spec, db=db)
        model.check_elements({int(z) for a in [*frames, *anchors] for z in a.numbers})
        evals = model.evaluate([*frames, *anchors])
    except CspflowError as exc:
        return ModelMetrics(model=model_spec, n_frames=len(frames), note=str(exc))
    held, extra = evals[: len(frames)], evals[len(frames) :]
    return metrics_from_predictions(
        model_spec, frames, [ev.energy for ev in held], [ev.forces for ev in held],
        anchors=[(a, ev.energy) for a, ev in zip(anchors, extra, strict=True)],
    )  # fmt: skip


# differences within these (or 1 % of the current figure) are ties
TIE_ENERGY_MEV = 0.1
TIE_RANK = 0.01
TIE_FORCE_MEV = 0.5


def _compare(d: float, current: float, tie: float) -> int:
    """-1 better, 0 tie, 1 worse (``d`` = new - current, lower is better)."""
    if abs(d) <= max(tie, 0.01 * abs(current)):
        return 0
    return -1 if d < 0 else 1


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _figures(new: ModelMetrics, current: ModelMetrics) -> str:
    return (
        f"relative-energy MAE {_fmt(new.relative_energy_mae_mev_per_atom)} vs "
        f"{_fmt(current.relative_energy_mae_mev_per_atom)} meV/atom on "
        f"{new.n_relative_frames} frames of {new.n_compositions} composition(s), "
        f"rank correlation {_fmt(new.rank_correlation, 2)} vs {_fmt(current.rank_correlation, 2)}, "
        f"force MAE {_fmt(new.force_mae_moving_mev_per_a)} vs "
        f"{_fmt(current.force_mae_moving_mev_per_a)} meV/A on {new.n_force_frames} frames with "
        f"forces (absolute energy MAE {_fmt(new.energy_mae_mev_per_atom)} vs "
        f"{_fmt(current.energy_mae_mev_per_atom)} meV/atom, not compared)"
    )


def promotion(new: ModelMetrics, current: ModelMetrics | None) -> tuple[bool, str]:
    """Whether the new model replaces the current one, and why (or why not).

    Lexicographic, on the held-out split: the relative-energy MAE decides; when it ties (a
    difference within :data:`TIE_ENERGY_MEV` meV/atom or 1 %) or either model has none, the
    rank correlation does (higher is better; tie within :data:`TIE_RANK`); then the force MAE
    on frames with non-vanishing DFT forces (tie within :data:`TIE_FORCE_MEV` meV/A or 1 %).
    Ties all the way down keep the current model. The absolute energy MAE never counts: a model
    that differs from the current one by a constant energy per atom ties. A current model
    without figures (none, or it cannot run on these elements) is beaten by any new model with
    figures.
    """
    if new.energy_mae_mev_per_atom is None:
        return False, f"new model has no held-out figures ({new.note})"
    if current is None:
        return True, "no current model for this system"
    if current.energy_mae_mev_per_atom is None:
        return True, f"current model {current.model} has no held-out figures ({current.note})"
    figures = _figures(new, current)
    keys = (
        ("relative-energy MAE", "relative_energy_mae_mev_per_atom", 1, TIE_ENERGY_MEV),
        ("rank correlation", "rank_correlation", -1, TIE_RANK),
        ("force MAE", "force_mae_moving_mev_per_a", 1, TIE_FORCE_MEV),
    )
    tied: list[str] = []
    for label, attr, sign, tie in keys:
        a, b = getattr(new, attr), getattr(current, attr)
        if a is None or b is None:
            continue
        verdict = _compare(sign * (a - b), b, tie)
        if verdict < 0:
            note = f" ({' and '.join(tied)} tied)" if tied else ""
            return True, f"beats {current.model} on {label}{note}: {figures}"
        if verdict > 0:
            note = f" ({' and '.join(tied)} tied)" if tied else ""
            return False, f"does not beat {current.model} on {label}{note}: {figures}"
        tied.append(label)
    if not tied:
        return False, f"no comparable held-out figures with {current.model}: {figures}"
    return False, f"ties with {current.model} on {', '.join(tied)}: {figures}"
