"""Training sets from stored DFT: frames, REF_ keys, hash split, E0s, too little data."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.gpaw]


def test_frames_come_from_converged_dft_with_ionic_steps(si_db, settings, tmp_path):
    from ase.io import read

    from cspflow.learn.dataset import build_training_set, write_extxyz
    from cspflow.schemas.learn import TrainSettings
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


def test_ionic_steps_far_above_the_final_frame_are_left_out(si_db, settings):
    """A relaxation's first step lifted 3 eV/atom above its final frame (what a collapsed start
    cell gives) is skipped with its reason; the force filter alone would have kept it."""
    from cspflow.learn.dataset import collect_frames
    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    frames, skipped = collect_frames(si_db, "Si", store=store, ionic_steps=-1)
    relaxed = next(c for c in si_db.candidates.find({"relaxed.dft.status": "converged"})
                   if any(a.info["candidate_id"] == c["candidate_id"] and a.info["frame_kind"] == "ionic"
                          for a in frames))  # fmt: skip
    uuid = relaxed["relaxed"]["dft"]["task_uuid"]
    natoms = len(relaxed["structure"]["sites"])
    si_db.outputs.update_one({"uuid": uuid},
                             {"$inc": {"output.output.ionic_steps.0.energy": 3.0 * natoms}})  # fmt: skip
    again, skipped_again = collect_frames(si_db, "Si", store=store, ionic_steps=-1)
    reason = "more than 1 eV/atom above the final frame"
    print(
        f"\n{len(frames)} frames, then {len(again)} with one step lifted: skipped {skipped_again}"
    )
    assert len(again) == len(frames) - 1
    assert skipped_again.get(reason, 0) == skipped.get(reason, 0) + 1
    assert not any(a.info["candidate_id"] == relaxed["candidate_id"]
                   and a.info["frame_id"].endswith("/step0") for a in again)  # fmt: skip


def test_a_configuration_is_one_frame_however_often_the_trajectory_repeats_it(si_db, settings):
    """ASE's trajectory repeats a relaxation's last configuration (and a one-step relaxation's
    only step is its final frame): each configuration of a relaxation is one frame, the
    repeats are counted as skipped."""
    import numpy as np

    from cspflow.learn.dataset import collect_frames
    from cspflow.store import get_jobstore

    store = get_jobstore(settings)
    store.connect()
    frames, skipped = collect_frames(si_db, "Si", store=store, ionic_steps=-1)
    seen: dict[str, list] = {}
    for a in frames:
        key = (np.round(a.cell.array, 5).tobytes(),
               np.round(a.get_scaled_positions() % 1.0, 5).tobytes())  # fmt: skip
        assert key not in seen.setdefault(a.info["candidate_id"], []), a.info["frame_id"]
        seen[a.info["candidate_id"]].append(key)
    assert skipped.get("repeated configuration", 0) >= 1
