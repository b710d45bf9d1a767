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
    # enough frames but none held out: no model could be judged, so none is trained
    with pytest.raises(CspflowError, match=r"^too little data: \d+ frames and none held out"):
        learn(si_db, "Si", settings=TrainSettings(min_frames=1, test_fraction=0.0), store=store,
              work_dir=tmp_path / "none-held-out")  # fmt: skip
    assert not (tmp_path / "none-held-out").exists()
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


def test_foundation_of_the_other_architecture_is_one_line(db, tmp_path):
    """learn.model and the foundation model disagree: one line before any work, nothing
    registered (MACE files and CHGNet files are told apart by spec and registry kind)."""
    from cspflow.learn.round import learn
    from cspflow.schemas.learn import TrainSettings

    _current(db)  # registry:mace-current, a MACE record (kind defaults to mace)
    db.models.insert_one({"model_id": "chgnet-0123456789ab", "kind": "chgnet", "chemsys": "Si",
                          "promoted": False, "created_at": datetime.datetime.now(datetime.UTC)})  # fmt: skip
    not_torch = tmp_path / "chgnet.pth.tar"
    not_torch.write_bytes(b"not a torch file")
    cases = [
        ({"model": "chgnet", "foundation_model": "mace:/some/where.model"},
         r"^foundation model mace:/some/where.model is a MACE model but learn.model is chgnet"),
        ({"model": "chgnet", "foundation_model": "registry:mace-current"},
         r"^foundation model registry:mace-current is a MACE model but learn.model is chgnet"),
        ({"model": "chgnet", "foundation_model": "current"},  # the current model is MACE
         r"^foundation model registry:mace-current is a MACE model"),
        ({"model": "chgnet", "foundation_model": f"chgnet:{not_torch}"},
         r"^foundation model: .*chgnet.pth.tar is not a loadable CHGNet model"),
        ({"model": "mace", "foundation_model": "chgnet"},
         r"^learn.foundation_model chgnet is a CHGNet model but learn.model is mace"),
        ({"model": "mace", "foundation_model": "registry:chgnet-0123456789ab"},
         r"^learn.foundation_model registry:chgnet-0123456789ab is a CHGNet model"),
        ({"model": "chgnet", "finetune": "multihead"},
         r"^learn.model chgnet fine-tunes CHGNet naively"),
    ]  # fmt: skip
    for fields, pattern in cases:
        with pytest.raises(CspflowError, match=pattern) as exc:
            learn(db, "Si", settings=TrainSettings(**fields), work_dir=tmp_path / "w")
        assert "\n" not in str(exc.value)
    # mace with the baseline chgnet as "current": the same line
    with pytest.raises(CspflowError, match=r"^learn.foundation_model chgnet is a CHGNet model"):
        learn(db, "Sr", settings=TrainSettings(foundation_model="current"), baseline="chgnet",
              work_dir=tmp_path / "w")  # fmt: skip
    with pytest.raises(CspflowError, match=r"^learn.foundation_model is 'current' but there is "
                       "no current model for this system"):  # fmt: skip
        learn(db, "Sr", settings=TrainSettings(foundation_model="current"), work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing was trained
    assert db.models.count_documents({}) == 2  # nothing was registered


def test_foundation_that_does_not_cover_the_frames_is_one_line():
    from cspflow.learn.train import check_coverage

    check_coverage("mace:x.model", frozenset({8, 12}), ["Mg", "O"])
    check_coverage("chgnet", None, ["Mg", "O", "Pu"])  # CHGNet knows H..Pu
    with pytest.raises(CspflowError, match=r"^foundation model mace:x.model knows O, Mg but the "
                       r"training frames also have Al, Si; fine-tune a model that covers them"):  # fmt: skip
        check_coverage("mace:x.model", frozenset({8, 12}), ["Al", "Mg", "O", "Si"])


def test_empty_training_set_is_too_little_data_whatever_min_frames(db, tmp_path):
    from cspflow.learn.round import learn
    from cspflow.schemas.learn import TrainSettings

    for model in ("mace", "chgnet"):
        with pytest.raises(CspflowError, match=r"^too little data: 0 frames, need at least 0"):
            learn(db, "Si", settings=TrainSettings(min_frames=0, model=model), work_dir=tmp_path)
    assert db.models.count_documents({}) == 0


def test_campaign_submit_checks_the_foundation_model(db):
    """``check_models`` (campaign submit/run) refuses a registry foundation of the other
    architecture and an unknown one, before anything is stored."""
    from cspflow.scheduler.local import check_models
    from cspflow.schemas.campaign import parse_spec

    db.models.insert_one({"model_id": "chgnet-0123456789ab", "kind": "chgnet", "chemsys": "Si"})

    def spec(model, foundation):
        return parse_spec({"name": "c", "compositions": ["Si"], "dft": {"engine": "gpaw"},
                           "learn": {"enabled": True, "model": model,
                                     "foundation_model": foundation}})  # fmt: skip

    check_models(spec("chgnet", "registry:chgnet-0123456789ab"), db)
    with pytest.raises(CspflowError, match=r"^learn.foundation_model: registry model "
                       r"chgnet-0123456789ab is a chgnet model but learn.model is mace$"):  # fmt: skip
        check_models(spec("mace", "registry:chgnet-0123456789ab"), db)
    with pytest.raises(CspflowError, match=r"^learn.foundation_model: model 'mace-nope' is not"):
        check_models(spec("mace", "registry:mace-nope"), db)
