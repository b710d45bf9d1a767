"""Bad input stops with one line and leaves the current model in place."""

from __future__ import annotations

import datetime
import re

import pytest
from jobflow import run_locally

from cspflow.errors import CspflowError


def _current(db, fidelity: dict | None = None) -> str:
    """Register a promoted model; at ``fidelity`` (the labels' Fidelity dict) when given, since
    the current model is looked up per fidelity."""
    doc = {
        "model_id": "mace-current",
        "chemsys": "Si",
        "promoted": True,
        "created_at": datetime.datetime.now(datetime.UTC),
    }
    if fidelity is not None:
        doc.update({"fidelity": fidelity, "fidelity_key": fidelity["key"]})
    db.models.insert_one(doc)
    return "registry:mace-current"


def test_no_dft_data_is_too_little_data(db, tmp_path):
    from cspflow.learn.round import learn
    from cspflow.schemas.learn import TrainSettings

    with pytest.raises(CspflowError, match=r"^too little data: 0 frames, need at least 20") as exc:
        learn(db, "Si", settings=TrainSettings(), work_dir=tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
@pytest.mark.gpaw
def test_too_little_data_is_one_line_and_current_model_stays(si_db, settings, tmp_path):
    from cspflow.learn.round import LearnMaker, label_fidelity, learn
    from cspflow.models import current_model_spec
    from cspflow.schemas.learn import TrainSettings
    from cspflow.store import get_jobstore

    current = _current(si_db, label_fidelity(si_db, "Si"))
    store = get_jobstore(settings)
    with pytest.raises(
        CspflowError, match=r"^too little data: \d+ frames, need at least 500"
    ) as exc:
        store.connect()
        learn(si_db, "Si", settings=TrainSettings(min_frames=500), store=store, work_dir=tmp_path)
    assert "\n" not in str(exc.value)
    # in a campaign the learn job does not fail: it says why and the current model stays
    j = LearnMaker(settings=TrainSettings(min_frames=500)).make("Si", campaign="c", iteration=0)
    summary = run_locally(j, store=store, create_folders=True, root_dir=tmp_path)[j.uuid][1].output
    assert summary["trained"] is False
    n = int(re.match(r"too little data: (\d+) frames", summary["reason"]).group(1))
    assert n >= 8  # the 8 converged relaxations' final frames, plus sampled ionic steps
    assert summary["current_model"] == current == current_model_spec(si_db, "Si")
    assert si_db.models.count_documents({}) == 1


def test_foundation_file_that_is_not_mace_is_one_line(db, tmp_path):
    from cspflow.learn.round import learn
    from cspflow.schemas.learn import TrainSettings

    current = _current(db)
    bad = tmp_path / "foundation.model"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(
        CspflowError, match=r"^foundation model: .*is not a loadable MACE model"
    ) as exc:
        learn(db, "Si", settings=TrainSettings(foundation_model=str(bad)), work_dir=tmp_path / "w")
    assert "\n" not in str(exc.value)
    with pytest.raises(CspflowError, match=r"foundation model file .*missing.model not found"):
        learn(db, "Si", settings=TrainSettings(foundation_model=str(tmp_path / "missing.model")),
              work_dir=tmp_path / "w")  # fmt: skip
    assert not (tmp_path / "w").exists()  # nothing was trained
    assert db.models.count_documents({}) == 1 and db.models.find_one()["model_id"] in current
