"""Pure pieces of the learn stage's data (cspflow.learn.dataset): split, E0s, subsystems,
replay data."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from cspflow.learn.dataset import fit_e0s, split_frames, subsystems, validation_split


def _frame(cid: str, symbols: str = "Si2", energy: float = 0.0) -> Atoms:
    a = Atoms(symbols, positions=np.zeros((len(Atoms(symbols)), 3)), cell=np.eye(3) * 5, pbc=True)
    a.info.update({"candidate_id": cid, "REF_energy": energy})
    return a


def test_split_is_fixed_by_candidate_and_only_grows():
    first = [_frame(f"c{i}") for i in range(30) for _ in range(3)]
    train, test = split_frames(first, 0.2)
    held = {a.info["candidate_id"] for a in test}
    assert 0 < len(held) < 30
    # every frame of a candidate is on one side
    assert not held & {a.info["candidate_id"] for a in train}
    # more data later: earlier candidates keep their side
    more = first + [_frame(f"d{i}") for i in range(30)]
    _, test2 = split_frames(more, 0.2)
    held2 = {a.info["candidate_id"] for a in test2}
    assert held <= held2 and held2 - held <= {f"d{i}" for i in range(30)}
    # a set too small for the fraction still holds one candidate out, and keeps one to train on
    tr, te = split_frames([_frame("a"), _frame("b")], 0.01)
    assert len(te) == 1 and len(tr) == 1


def test_few_training_candidates_are_all_fitted_many_set_one_tenth_aside():
    """Nine candidates (three types of a campaign's first rounds): every frame is fitted and
    validates; from ten on, a tenth of the candidates (by split value) validate only."""
    few = [_frame(f"c{i}") for i in range(9) for _ in range(2)]
    fit, valid = validation_split(few)
    assert fit == few and valid == few
    many = [_frame(f"c{i}") for i in range(20) for _ in range(2)]
    fit, valid = validation_split(many)
    held = {a.info["candidate_id"] for a in valid}
    assert len(held) == 2 and len(valid) == 4 and len(fit) == 36
    assert not held & {a.info["candidate_id"] for a in fit}


def test_e0s_are_least_squares_per_element():
    e0 = {"Mg": -1.5, "O": -4.25}
    frames = [
        _frame(f"x{i}", symbols, energy=sum(e0[s] for s in Atoms(symbols).get_chemical_symbols()))
        for i, symbols in enumerate(["MgO", "Mg2O2", "Mg2", "O2", "MgO2"])
    ]
    fitted = fit_e0s(frames)
    assert fitted == pytest.approx(e0)


def test_subsystems():
    assert subsystems("O-Mg") == ["Mg", "O", "Mg-O"]
    assert len(subsystems("Sr-Ti-O")) == 7


def test_replay_data_from_a_file_or_one_clear_line(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from cspflow.errors import CspflowError
    from cspflow.learn.dataset import TrainingSet
    from cspflow.learn.replay import replay_frames
    from cspflow.schemas.learn import TrainingSetDoc, TrainSettings

    def labelled(atoms, k):
        atoms.info["REF_energy"] = -10.0 - k
        atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
        return atoms

    frames = [labelled(bulk("Si", "diamond", 5.43 + 0.01 * k), k) for k in range(4)]
    # the new set holds frame 1 (same structure, other labels: dropped all the same)
    tset = TrainingSet(train=[labelled(frames[1].copy(), 7)], test=[],
                       doc=TrainingSetDoc(chemsys="Si"))  # fmt: skip
    (tmp_path / "text.xyz").write_text("not an extxyz file\n")
    write(tmp_path / "unlabelled.xyz", [bulk("Si", "diamond", 5.43)], format="extxyz")
    for name, message in (("nope.xyz", "no such file"), ("text.xyz", "as extxyz"),
                          ("unlabelled.xyz", "frame 0 has no REF_energy")):  # fmt: skip
        s = TrainSettings(replay_file=str(tmp_path / name))
        with pytest.raises(CspflowError, match=f"cannot read replay file .*{name}.*{message}") as e:
            replay_frames(None, s, "x.model", tset)
        assert "\n" not in str(e.value)
    with pytest.raises(CspflowError, match="needs replay data the new training set does not hold"):
        replay_frames(None, TrainSettings(), "mace:/models/foundation.model", tset)
    write(tmp_path / "replay.xyz", frames, format="extxyz")
    got, doc = replay_frames(None, TrainSettings(replay_file=str(tmp_path / "replay.xyz")), "x",
                             tset)  # fmt: skip
    assert [a.info["REF_energy"] for a in got] == [-10.0, -12.0, -13.0]
    assert doc.n_read == 4 and doc.n_kept == 3 and doc.dropped == {"in the new training set": 1}
    write(tmp_path / "only_new.xyz", frames[1:2], format="extxyz")
    with pytest.raises(CspflowError, match=r"1 frame\(s\) found, dropped: 1 in the new training"):
        replay_frames(None, TrainSettings(replay_file=str(tmp_path / "only_new.xyz")), "x", tset)
