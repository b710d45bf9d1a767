"""MACE training on fewer frames than one batch: mace drops the last incomplete batch, so a
batch larger than the training split left nothing to train on (``torch.cat(): expected a
non-empty list of Tensors`` after data loading; seen in the demo's first round, 5 frames)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_mace_trains_on_fewer_frames_than_a_batch(tmp_path):
    from ase.build import bulk

    from cspflow.learn.dataset import fit_e0s
    from cspflow.learn.train import train_mace
    from cspflow.mlip import load_model
    from cspflow.schemas.learn import TrainSettings

    chgnet = load_model("chgnet", device="cpu")
    rng = np.random.default_rng(5)
    frames = []
    for k in range(5):
        a = bulk("Si", "diamond", 5.43 * rng.uniform(0.97, 1.03))
        a.rattle(0.05, seed=k)
        ev = chgnet.evaluate([a])[0]
        a.info.update({"REF_energy": ev.energy, "REF_stress": ev.stress, "candidate_id": f"s{k}"})
        a.arrays["REF_forces"] = ev.forces
        frames.append(a)
    s = TrainSettings(epochs=2, batch_size=5, seed=1)
    path = train_mace(frames, tmp_path / "few", e0s=fit_e0s(frames), settings=s)
    model = load_model(f"mace:{path}", device="cpu")
    ev = model.evaluate(frames[:1])[0]
    assert np.isfinite(ev.energy) and ev.forces.shape == (2, 3)
