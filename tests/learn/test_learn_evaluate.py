"""The promotion rule (cspflow.learn.evaluate)."""

from __future__ import annotations

from cspflow.learn.evaluate import promotion
from cspflow.schemas.learn import ModelMetrics


def _m(e, f, model="x"):
    return ModelMetrics(model=model, energy_mae_mev_per_atom=e, force_mae_mev_per_a=f, n_frames=5)


def test_promotion_needs_one_error_lower_none_worse_and_says_why():
    assert promotion(_m(5, 50), None) == (True, "no current model for this system")
    ok, why = promotion(_m(5, 50), _m(6, 60, "chgnet"))
    assert ok and why.startswith("beats chgnet: energy MAE 5.0 vs 6.0 meV/atom")
    ok, why = promotion(_m(7, 50), _m(6, 60, "registry:m1"))
    assert not ok and why.startswith("does not beat registry:m1 on energy MAE")
    ok, why = promotion(_m(7, 70), _m(6, 60))
    assert not ok and "on energy and force MAE" in why
    none = ModelMetrics(model="chgnet", n_frames=5, note="model chgnet does not cover Xx")
    assert promotion(_m(7, 70), none)[0]
    # forces that vanish by symmetry: every model scores 0, a tie, which must not block
    ok, why = promotion(_m(35.2, 0.0), _m(581.5, 0.0, "chgnet"))
    assert ok and why.startswith("beats chgnet (force MAE tied): energy MAE 35.2 vs 581.5")
    ok, why = promotion(_m(6.02, 60.3), _m(6.0, 60.0, "chgnet"))  # within 1 %: ties on both
    assert not ok and why.startswith("ties with chgnet on energy and force MAE")
    assert not promotion(_m(5.0, 61.0), _m(6.0, 60.0))[0]  # force worse by more than 1 %
