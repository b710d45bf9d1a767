"""Multi-head fine-tuning with replay data.

A tiny MACE model of Na-Cl (trained here on CHGNet-labelled frames: the mechanism is what is
tested; the DFT-labelled path is tests/learn/test_learn_rounds.py) is fine-tuned in mace's
multi-head mode: a replay head keeps the data it learnt from, the Default head learns the new
frames, and cspflow loads and evaluates the Default head. The learn round's one-line errors
use the real GPAW Si data.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow]

TRAIN = {"min_frames": 8, "ionic_steps": -1, "epochs": 8, "seed": 7}


def _nacl_frames(n: int, seed: int):
    from cspflow.mlip import load_model
    from cspflow.testing.frames import labelled_bulk

    chgnet = load_model("chgnet", device="cpu")
    return labelled_bulk(chgnet, "NaCl", "rocksalt", 5.64, n, seed=seed, rattle_seed=seed * 100,
                         id_prefix="n")  # fmt: skip


def test_multihead_finetuning_keeps_a_replay_head(tmp_path):
    from cspflow.learn.dataset import fit_e0s
    from cspflow.learn.evaluate import evaluate
    from cspflow.learn.train import train_mace
    from cspflow.mlip import load_model
    from cspflow.schemas.learn import TrainSettings

    old, new = _nacl_frames(12, 1), _nacl_frames(12, 2)
    s = TrainSettings(**TRAIN)
    base = train_mace(old, tmp_path / "base", e0s=fit_e0s(old), settings=s)
    tuned = train_mace(new, tmp_path / "mh", e0s=fit_e0s(new), settings=s, foundation=base,
                       replay=old)  # fmt: skip
    log = (tmp_path / "mh" / "mace_run_train.log").read_text()
    assert (
        "multiheads finetuning mode" in log
        and "--pt_train_file" in (tmp_path / "mh" / "mace_run_train.cmd").read_text()
    )
    model = load_model(f"mace:{tuned}", device="cpu")
    heads = model.calculator.available_heads
    assert len(heads) == 2 and "Default" in heads and model.calculator.head == "Default"
    m = evaluate(f"mace:{tuned}", new)
    assert m.energy_mae_mev_per_atom is not None and m.force_mae_mev_per_a is not None
    print(f"multihead: heads {heads}; on the new frames {m.energy_mae_mev_per_atom:.1f} meV/atom, "
          f"{m.force_mae_mev_per_a:.1f} meV/A")  # fmt: skip


@pytest.mark.gpaw
def test_multihead_bad_input_is_one_line_and_registers_nothing(db, settings, add_si, tmp_path):
    from cspflow.errors import CspflowError
    from cspflow.learn.round import learn
    from cspflow.schemas.learn import TrainSettings
    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    add_si(db, iterations=(0, 1))
    first = learn(db, "Si", settings=TrainSettings(**TRAIN), store=store, work_dir=tmp_path / "r1",
                  baseline="chgnet")  # fmt: skip
    model_file = tmp_path / "r1" / f"seed{TRAIN['seed']}" / "model.model"
    cases = [
        ({"foundation_model": f"registry:{first.model_id}"},
         "multihead fine-tuning needs a foundation model with two or more elements"),
        ({"foundation_model": str(tmp_path / "nope.model")}, "foundation model file"),
    ]  # fmt: skip
    for extra, message in cases:
        ts = TrainSettings(**{**TRAIN, "finetune": "multihead", **extra})
        with pytest.raises(CspflowError, match=message) as err:
            learn(db, "Si", settings=ts, store=store, work_dir=tmp_path / "bad")
        assert "\n" not in str(err.value)
    with pytest.raises(CspflowError, match="unknown finetune mode 'wide'"):
        learn(db, "Si", settings=TrainSettings(**{**TRAIN, "finetune": "wide"}), store=store,
              work_dir=tmp_path / "bad")  # fmt: skip
    assert model_file.is_file() and db["models"].count_documents({}) == 1
