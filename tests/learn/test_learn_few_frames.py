"""MACE training on fewer frames than one batch: mace drops the last incomplete batch, so a
batch larger than the training split left nothing to train on (``torch.cat(): expected a
non-empty list of Tensors`` after data loading; seen in the demo's first round, 5 frames)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_mace_trains_on_fewer_frames_than_a_batch(tmp_path):
    from cspflow.learn.dataset import fit_e0s
    from cspflow.learn.train import train_mace
    from cspflow.mlip import load_model
    from cspflow.schemas.learn import TrainSettings
    from cspflow.testing.frames import labelled_bulk

    chgnet = load_model("chgnet", device="cpu")
    frames = labelled_bulk(chgnet, "Si", "diamond", 5.43, 5, seed=5, scale=(0.97, 1.03),
                           rattle=0.05, id_prefix="s")  # fmt: skip
    s = TrainSettings(epochs=2, batch_size=5, seed=1)
    path = train_mace(frames, tmp_path / "few", e0s=fit_e0s(frames), settings=s)
    model = load_model(f"mace:{path}", device="cpu")
    ev = model.evaluate(frames[:1])[0]
    assert np.isfinite(ev.energy) and ev.forces.shape == (2, 3)
