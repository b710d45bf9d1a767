"""Real replay and the forgetting check, on the real GPAW Si data (tests/learn/conftest.py).

Round 1 trains a tiny MACE on iteration 0's DFT data; iteration 1's data arrive and round 2
trains on all of it: round 2's record holds its and round 1's errors on round 1's held-out
frames. Replay for a fine-tuning of round 2's model on final frames only (``ionic_steps: 0``)
is round 2's own ionic-step frames: the frames the new set holds are dropped and counted.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.gpaw]

TRAIN = {"min_frames": 8, "ionic_steps": -1, "epochs": 8, "seed": 7}


def _same_structure(a, b) -> bool:
    """Same atoms, cell and positions up to a lattice vector (a relaxation's last ionic step
    is its final structure, which pymatgen wrapped into the cell)."""
    if len(a) != len(b) or list(a.numbers) != list(b.numbers):
        return False
    d = a.get_scaled_positions(wrap=False) - b.get_scaled_positions(wrap=False)
    return np.allclose(a.cell, b.cell, atol=1e-6) and np.allclose(d - np.round(d), 0, atol=1e-6)


def test_replay_is_disjoint_from_the_new_set_and_forgetting_is_recorded(
    db, settings, add_si, tmp_path
):
    from typer.testing import CliRunner

    from cspflow.cli.main import app
    from cspflow.learn.dataset import build_training_set
    from cspflow.learn.evaluate import evaluate
    from cspflow.learn.replay import IN_NEW_SET, replay_frames
    from cspflow.learn.round import learn
    from cspflow.models import get_model
    from cspflow.schemas.learn import TrainSettings
    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    s = TrainSettings(**TRAIN)
    add_si(db, iterations=(0,))
    r1 = learn(db, "Si", settings=s, store=store, work_dir=tmp_path / "r1", baseline="chgnet")
    doc1 = get_model(db, r1.model_id)
    assert doc1["forgetting"] is None  # CHGNet has no held-out set of ours
    add_si(db, iterations=(1,))
    r2 = learn(db, "Si", settings=s, store=store, work_dir=tmp_path / "r2",
               current=f"registry:{r1.model_id}")  # fmt: skip
    doc2 = get_model(db, r2.model_id)

    # forgetting: both models on round 1's held-out frames, rebuilt here as round 1 built them
    previous = build_training_set(db, "Si", store=store, settings=s, max_iteration=0).test
    assert sorted({a.info["candidate_id"] for a in previous}) == sorted(
        doc1["training_set"]["test_candidate_ids"]
    )
    fg = doc2["forgetting"]
    assert fg["previous_model"] == r1.model_id and fg["n_frames"] == len(previous) > 0
    assert fg["candidate_ids"] == doc1["training_set"]["test_candidate_ids"]
    after = evaluate(f"registry:{r2.model_id}", previous, db)
    before = evaluate(f"registry:{r1.model_id}", previous, db)
    for got, want in ((fg["after"], after), (fg["before"], before)):
        assert want.energy_mae_mev_per_atom > 0
        assert got["energy_mae_mev_per_atom"] == pytest.approx(want.energy_mae_mev_per_atom)
        assert got["force_mae_mev_per_a"] == pytest.approx(want.force_mae_mev_per_a)
    assert r2.forgetting is not None and r2.forgetting.after.model == f"registry:{r2.model_id}"
    shown = CliRunner().invoke(app, ["model", "show", r2.model_id]).output
    assert f"forgetting: on the held-out frames of {r1.model_id}" in shown

    # replay for fine-tuning round 2's model on final frames only: round 2's ionic steps
    finals = TrainSettings(**{**TRAIN, "ionic_steps": 0, "finetune": "multihead",
                              "foundation_model": f"registry:{r2.model_id}"})  # fmt: skip
    tset = build_training_set(db, "Si", store=store, settings=finals)
    frames, rdoc = replay_frames(db, finals, f"registry:{r2.model_id}", tset, store=store)
    new = tset.train + tset.test
    assert all(a.info["frame_kind"] == "final" for a in new)
    assert not {a.info["frame_id"] for a in frames} & {a.info["frame_id"] for a in new}
    assert not any(_same_structure(a, b) for a in frames for b in new)
    parent_test = set(doc2["training_set"]["test_candidate_ids"])
    assert frames and not {a.info["candidate_id"] for a in frames} & parent_test
    assert all(a.info["frame_kind"] == "ionic" for a in frames)
    # every training frame of round 2 was read; those the new set holds (its final frames, and
    # ionic steps identical to a final structure) are dropped and counted, the rest replayed
    own = build_training_set(db, "Si", store=store, settings=s).train
    held = [a for a in own if a.info["frame_id"] in {b.info["frame_id"] for b in new}
            or any(_same_structure(a, b) for b in new)]  # fmt: skip
    assert len(own) == doc2["training_set"]["n_train"] and len(held) < len(own)
    assert rdoc.sources == {"parent": len(own)} and rdoc.n_read == len(own)
    assert rdoc.dropped == {IN_NEW_SET: len(held)}
    assert sorted(a.info["frame_id"] for a in frames) == sorted(
        a.info["frame_id"] for a in own if a not in held
    )
    print(f"replay: {rdoc.n_kept} kept of {rdoc.n_read} read, dropped {rdoc.dropped}; forgetting "
          f"on {fg['n_frames']} frames: {fg['before']['energy_mae_mev_per_atom']:.1f} -> "
          f"{fg['after']['energy_mae_mev_per_atom']:.1f} meV/atom")  # fmt: skip
