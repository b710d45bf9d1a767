"""Training sets from stored DFT: frames, REF_ keys, hash split, E0s, too little data."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.gpaw]


def test_frames_come_from_converged_dft_with_ionic_steps(si_db, settings, tmp_path):
    from ase.io import read

    from cspflow.learn import TrainSettings, build_training_set, write_extxyz
    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    tset = build_training_set(
        si_db, "Si", store=store, settings=TrainSettings(min_frames=5, ionic_steps=-1)
    )
    doc = tset.doc
    print(doc.model_dump())
    assert doc.n_final == 8 and doc.n_ionic > 0
    assert doc.n_frames == doc.n_train + doc.n_test == doc.n_final + doc.n_ionic
    assert doc.test_candidate_ids and set(doc.test_candidate_ids) < set(doc.candidate_ids)
    path = write_extxyz(tset.train, tmp_path / "train.xyz")
    back = read(path, index=":")
    assert len(back) == doc.n_train
    assert {"REF_energy", "REF_stress"} <= set(back[0].info) and "REF_forces" in back[0].arrays
