"""CHGNet fine-tuning (``learn.model: chgnet``): it learns, an offset alone earns nothing, and a
fine-tuned model registers, loads and relaxes.

The learnable set: 30 small Cu cells (fcc, bcc, sc, hcp, diamond; six volumes each, rattled)
labelled with ASE's EMT, a cheap real calculator whose energies differ from CHGNet's by about
4 eV/atom (a constant) and, relative to the lowest cell, by about 50 meV/atom (what must be
learnt). Every third cell is held out. The registry round uses the real GPAW Si data of
tests/learn/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow]

#: measured here (TrainSettings defaults: 30 epochs, lr 1e-3, batch 5, seed 1): held-out
#: relative-energy MAE 51.5 -> 10.2 meV/atom (5.0x), force MAE 71.7 -> 48.0 meV/A; the test
#: asks for 2x
FACTOR = 2.0


def emt_cu_frames(shift_ev_per_atom: float = 0.0):
    """Labelled Cu cells (REF_* keys) from ASE's EMT, optionally shifted by a constant per atom."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(0)
    protos = [("fcc", {"a": 3.61}), ("bcc", {"a": 2.87}), ("sc", {"a": 2.40}),
              ("hcp", {"a": 2.55, "c": 4.17}), ("diamond", {"a": 5.0})]  # fmt: skip
    frames = []
    for name, lattice in protos:
        for s in np.linspace(0.95, 1.07, 6):
            atoms = bulk("Cu", name, **{k: v * s for k, v in lattice.items()})
            if len(atoms) == 1:
                atoms = atoms.repeat((2, 1, 1))
            atoms.rattle(0.04, seed=int(rng.integers(10**6)))
            atoms.calc = EMT()
            cid = f"{name}-{len(frames)}"
            atoms.info.update({
                "REF_energy": float(atoms.get_potential_energy()) + shift_ev_per_atom * len(atoms),
                "REF_stress": atoms.get_stress(voigt=True).copy(),
                "candidate_id": cid, "frame_id": cid,
            })  # fmt: skip
            atoms.arrays["REF_forces"] = atoms.get_forces().copy()
            atoms.calc = None
            frames.append(atoms)
    return frames[0::3] + frames[2::3], frames[1::3]  # train, held out


def test_chgnet_finetuning_improves_heldout_relative_energies(tmp_path):
    from cspflow.learn.evaluate import evaluate, promotion
    from cspflow.learn.train import train_chgnet
    from cspflow.schemas.learn import TrainSettings

    train, test = emt_cu_frames()
    path, info = train_chgnet(train, tmp_path, settings=TrainSettings(model="chgnet", seed=1))
    # the labels' offset went into the composition model, not into the network
    assert info["energy_shift"]["Cu"] == pytest.approx(4.1, abs=0.1)
    before = evaluate("chgnet", test)
    after = evaluate(f"chgnet:{path}", test)
    print(f"held-out relative-energy MAE {before.relative_energy_mae_mev_per_atom} -> "
          f"{after.relative_energy_mae_mev_per_atom} meV/atom, force MAE "
          f"{before.force_mae_moving_mev_per_a} -> {after.force_mae_moving_mev_per_a} meV/A, "
          f"absolute {before.energy_mae_mev_per_atom} -> {after.energy_mae_mev_per_atom}")  # fmt: skip
    assert before.n_relative_frames == after.n_relative_frames == len(test) == 10
    assert after.relative_energy_mae_mev_per_atom * FACTOR < before.relative_energy_mae_mev_per_atom
    assert after.force_mae_moving_mev_per_a < before.force_mae_moving_mev_per_a
    ok, why = promotion(after, before)
    assert ok and why.startswith("beats chgnet on relative-energy MAE")


def test_model_trained_on_shifted_labels_is_not_promoted_for_the_offset(tmp_path):
    from cspflow.learn.evaluate import evaluate, promotion
    from cspflow.learn.train import train_chgnet
    from cspflow.schemas.learn import TrainSettings

    # the frozen variant (only the last convolution and the readout train) is the cheaper one
    s = TrainSettings(model="chgnet", chgnet_epochs=3, seed=3, chgnet_freeze=True)
    train, test = emt_cu_frames()
    shifted_train, _ = emt_cu_frames(shift_ev_per_atom=0.5)
    plain, _ = train_chgnet(train, tmp_path / "plain", settings=s)
    shifted, info = train_chgnet(shifted_train, tmp_path / "shifted", settings=s)
    assert info["energy_shift"]["Cu"] == pytest.approx(4.1 + 0.5, abs=0.1)
    assert 0 < info["trainable_parameters"] < 200_000  # of CHGNet's 412,525
    m_plain = evaluate(f"chgnet:{plain}", test)
    m_shifted = evaluate(f"chgnet:{shifted}", test)
    # 0.5 eV/atom apart in absolute energy, the same on everything that decides
    assert m_shifted.energy_offset_mev_per_atom - m_plain.energy_offset_mev_per_atom == (
        pytest.approx(500.0, abs=1.0)
    )
    assert m_shifted.relative_energy_mae_mev_per_atom == pytest.approx(
        m_plain.relative_energy_mae_mev_per_atom, abs=0.05
    )
    for new, current in ((m_plain, m_shifted), (m_shifted, m_plain)):
        ok, why = promotion(new, current)
        assert not ok and why.startswith(f"ties with {current.model} on relative-energy MAE")


@pytest.mark.gpaw
def test_chgnet_round_registers_loads_and_relaxes(db, settings, add_si, tmp_path):
    """A learn round with ``model: chgnet`` on real GPAW Si data: kind, id, lineage, figures;
    the registry model loads through ``registry:ID`` (what prerelax and rescreen use) and
    relaxes a cell; ``foundation_model: current`` then fine-tunes that CHGNet again."""
    from ase.build import bulk

    from cspflow.learn.evaluate import promotion
    from cspflow.learn.round import learn
    from cspflow.mlip import load_model
    from cspflow.models import fetch_model, get_model, lineage
    from cspflow.prerelax.relax import relax_structures
    from cspflow.schemas.learn import ModelMetrics, TrainSettings
    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    add_si(db, iterations=(0, 1))
    s = TrainSettings(model="chgnet", min_frames=8, ionic_steps=-1, chgnet_epochs=4, seed=7)
    summary = learn(db, "Si", settings=s, store=store, work_dir=tmp_path / "r1",
                    baseline="chgnet", campaign="learn-test", iteration=0)  # fmt: skip
    doc = get_model(db, summary.model_id)
    assert doc["kind"] == "chgnet" and doc["model_id"].startswith("chgnet-")
    assert doc["parent"] == "chgnet" and doc["foundation_model"] == "chgnet"
    assert lineage(db, doc["model_id"]) == [doc["model_id"], "chgnet"]
    assert set(doc["energy_shift"]) == {"Si"} and doc["e0s"] == {}
    new, cur = (ModelMetrics(**doc["metrics"][k]) for k in ("new", "current"))
    assert cur.model == "chgnet" and new.model == f"registry:{doc['model_id']}"
    assert new.n_relative_frames == cur.n_relative_frames > 0
    assert new.relative_energy_mae_mev_per_atom is not None and new.rank_correlation is not None
    assert (doc["promoted"], doc["promotion_reason"]) == promotion(new, cur)
    print(doc["promotion_reason"])

    by_id = load_model(f"registry:{doc['model_id']}", device="cpu", db=db)
    by_path = load_model(f"chgnet:{fetch_model(doc['model_id'], db=db)}", device="cpu")
    universal = load_model("chgnet", device="cpu")
    assert by_id.family == by_path.family == "chgnet" and by_id.elements is None
    assert by_id.model_id == by_path.model_id == doc["model_id"]
    start = bulk("Si", "diamond", 5.6)
    start.rattle(0.05, seed=1)
    e_id, e_path, e_universal = (m.evaluate([start])[0].energy for m in (by_id, by_path, universal))
    assert e_id == pytest.approx(e_path, abs=1e-6)
    assert abs(e_id - e_universal) > 1e-3  # not the universal weights
    [outcome] = relax_structures([start], by_id, fmax=0.05, max_steps=200)
    assert outcome.converged and outcome.ok, outcome.failure_reason
    assert outcome.energy_per_atom == pytest.approx(e_id / 2, abs=0.05)
    assert outcome.energy_per_atom < e_id / 2 - 1e-4  # it went downhill on this model

    # a second round fine-tunes the current CHGNet when it was promoted, else the universal one
    s2 = TrainSettings(**{**s.as_dict(), "foundation_model": "current", "chgnet_epochs": 2})
    current = f"registry:{doc['model_id']}" if doc["promoted"] else "chgnet"
    r2 = learn(db, "Si", settings=s2, store=store, work_dir=tmp_path / "r2", current=current)
    doc2 = get_model(db, r2.model_id)
    assert doc2["kind"] == "chgnet" and doc2["foundation_model"] == current
    assert doc2["parent"] == current.removeprefix("registry:")
    store.close()
