"""The held-out figures and the promotion rule (cspflow.learn.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest

from cspflow.learn.evaluate import metrics_from_predictions, promotion
from cspflow.schemas.learn import ModelMetrics


def _m(rel, rank=None, force=None, model="x", absolute=1.0):
    return ModelMetrics(
        model=model, energy_mae_mev_per_atom=absolute, force_mae_mev_per_a=1.0, n_frames=5,
        relative_energy_mae_mev_per_atom=rel, rank_correlation=rank,
        force_mae_moving_mev_per_a=force, n_relative_frames=5, n_compositions=1, n_force_frames=3,
    )  # fmt: skip


def _frames():
    """Six labelled frames: four Si2 (two with vanishing forces), two NaCl (one per formula
    unit count), energies in eV."""
    from ase import Atoms

    rng = np.random.default_rng(0)
    out = []
    for k, (symbols, e_per_atom, moving) in enumerate(
        [("Si2", -5.40, False), ("Si2", -5.35, True), ("Si2", -5.20, True), ("Si2", -5.30, False),
         ("NaCl", -3.40, True), ("Na2Cl2", -3.30, True)]
    ):  # fmt: skip
        n = len(Atoms(symbols))
        a = Atoms(symbols, positions=rng.uniform(0, 3, (n, 3)), cell=np.eye(3) * 5, pbc=True)
        a.info["REF_energy"] = e_per_atom * len(a)
        a.arrays["REF_forces"] = (
            rng.normal(0, 0.5, (len(a), 3)) if moving else np.zeros((len(a), 3))
        )
        a.info["candidate_id"] = f"c{k}"
        out.append(a)
    return out


def test_relative_energies_rank_and_forces_ignore_a_constant_offset():
    frames = _frames()
    ref_e = [a.info["REF_energy"] for a in frames]
    ref_f = [a.arrays["REF_forces"] for a in frames]
    exact = metrics_from_predictions("exact", frames, ref_e, ref_f)
    assert exact.relative_energy_mae_mev_per_atom == 0.0 and exact.rank_correlation == 1.0
    assert exact.n_compositions == 2 and exact.n_relative_frames == 6
    assert exact.n_force_frames == 4  # the two Si2 frames with zero DFT forces are not counted
    # the same predictions shifted by 0.5 eV/atom: absolute MAE 500, everything that decides 0
    shifted = metrics_from_predictions(
        "shifted", frames, [e + 0.5 * len(a) for a, e in zip(frames, ref_e, strict=True)], ref_f
    )
    assert shifted.energy_mae_mev_per_atom == pytest.approx(500.0)
    assert shifted.energy_offset_mev_per_atom == pytest.approx(500.0)
    assert shifted.relative_energy_mae_mev_per_atom == 0.0 and shifted.rank_correlation == 1.0
    ok, why = promotion(exact, shifted)
    assert not ok and why.startswith(
        "ties with shifted on relative-energy MAE, rank correlation, force MAE"
    )
    assert not promotion(shifted, exact)[0]
    # swapping the two lowest Si2 energies: relative MAE 50 meV/atom on those two, rank drops
    swapped = list(ref_e)
    swapped[0], swapped[1] = ref_e[1], ref_e[0]
    m = metrics_from_predictions("swapped", frames, swapped, ref_f)
    # Si2 relatives: DFT (0, 50, 200, 100), model (50, 0, 200, 100) -> errors 50, 50, 0, 0
    assert m.relative_energy_mae_mev_per_atom == pytest.approx(100 / 6, abs=1e-3)
    assert m.rank_correlation == pytest.approx((0.8 * 4 + 1.0 * 2) / 6, abs=1e-4)  # rho(Si2) 0.8
    # force errors on a symmetric frame do not count in the deciding force MAE
    noisy = [f.copy() for f in ref_f]
    noisy[0] = noisy[0] + 0.3
    m = metrics_from_predictions("noisy", frames, ref_e, noisy)
    assert m.force_mae_moving_mev_per_a == 0.0 and m.force_mae_mev_per_a > 0


def test_promotion_is_lexicographic_and_says_why():
    assert promotion(_m(5), None) == (True, "no current model for this system")
    ok, why = promotion(_m(5, 0.9, 50), _m(6, 0.5, 40, "chgnet"))  # forces worse: rel decides
    assert ok and why.startswith(
        "beats chgnet on relative-energy MAE: relative-energy MAE 5.0 vs 6.0"
    )
    ok, why = promotion(_m(7, 0.9, 30), _m(6, 0.5, 60, "registry:m1"))
    assert not ok and why.startswith("does not beat registry:m1 on relative-energy MAE")
    # relative MAE tied (within 1 %): the rank correlation decides, then forces
    ok, why = promotion(_m(6.02, 0.8, 70), _m(6.0, 0.6, 60, "chgnet"))
    assert ok and why.startswith("beats chgnet on rank correlation (relative-energy MAE tied)")
    ok, why = promotion(_m(6.02, 0.6, 50), _m(6.0, 0.605, 60, "chgnet"))
    assert ok and "on force MAE (relative-energy MAE and rank correlation tied)" in why
    ok, why = promotion(_m(6.02, 0.6, 60.3), _m(6.0, 0.6, 60.0, "chgnet"))
    assert not ok and why.startswith("ties with chgnet on relative-energy MAE, rank correlation")
    # the absolute energy MAE never decides, however large the difference
    assert not promotion(_m(6.0, 0.6, 60, absolute=1.0), _m(6.0, 0.6, 60, absolute=900.0))[0]
    # a figure one side lacks is skipped (no composition with two held-out frames)
    ok, why = promotion(_m(None, None, 40), _m(None, None, 60, "chgnet"))
    assert ok and why.startswith("beats chgnet on force MAE")
    none = ModelMetrics(model="chgnet", n_frames=5, note="model chgnet does not cover Xx")
    assert promotion(_m(7), none)[0]
    assert not promotion(ModelMetrics(model="new", note="cannot run"), _m(6))[0]


def test_an_anchor_gives_one_held_out_structure_a_relative_energy():
    """One held-out Si2 frame 100 meV/atom above the set's lowest Si2 frame (a training frame):
    measured from that anchor, a model that puts it 20 meV/atom too low is 20 meV/atom off,
    a constant offset still counts nothing, and without the anchor there is nothing to judge."""
    from cspflow.learn.dataset import lowest_frames

    frames = _frames()
    for k, a in enumerate(frames):
        a.info["frame_id"] = f"f{k}"
    held = [frames[3]]  # Si2 at -5.30 eV/atom
    anchor = lowest_frames(frames)
    assert [a.info["frame_id"] for a in anchor] == ["f4", "f0"]  # NaCl -3.40, Si2 -5.40
    e_held = held[0].info["REF_energy"]
    f_held = [held[0].arrays["REF_forces"]]
    alone = metrics_from_predictions("alone", held, [e_held], f_held)
    assert alone.relative_energy_mae_mev_per_atom is None and alone.n_compositions == 0
    exact = [(a, a.info["REF_energy"]) for a in anchor]
    m = metrics_from_predictions("exact", held, [e_held], f_held, anchors=exact)
    assert m.relative_energy_mae_mev_per_atom == 0.0 and m.n_compositions == 1
    assert m.rank_correlation == 1.0 and m.n_relative_frames == 1
    low = metrics_from_predictions("low", held, [e_held - 0.020 * 2], f_held, anchors=exact)
    assert low.relative_energy_mae_mev_per_atom == pytest.approx(20.0)
    shifted = [(a, e + 0.5 * len(a)) for a, e in exact]
    m = metrics_from_predictions("shifted", held, [e_held + 1.0], f_held, anchors=shifted)
    assert m.relative_energy_mae_mev_per_atom == pytest.approx(0.0, abs=1e-9)
    # a model that puts the held-out frame below the anchor ranks the two the wrong way round
    wrong = metrics_from_predictions("wrong", held, [e_held - 0.3 * 2], f_held, anchors=exact)
    assert wrong.rank_correlation == -1.0
    assert wrong.relative_energy_mae_mev_per_atom == pytest.approx(300.0)
