"""Two active-learning rounds on real GPAW data: registry, lineage, before/after, reuse.

Round 1 trains a tiny MACE from scratch on iteration 0's DFT data through the learn job
(``LearnMaker`` run by jobflow) and compares it with CHGNet on the held-out split; iteration 1's
DFT data then arrive and round 2 fine-tunes round 1's model on all of it and compares it with
round 1's model on the same split. The models load through ``mace:PATH`` and ``registry:ID`` and
relax a candidate of the next iteration in the prerelax stage (PrerelaxMaker jobs); round 2
trains a committee of two seeds.
"""

from __future__ import annotations

import json

import pytest
from jobflow import run_locally

pytestmark = [pytest.mark.slow, pytest.mark.gpaw]

TRAIN = {"min_frames": 8, "ionic_steps": -1, "epochs": 60, "seed": 7}


def test_two_learning_rounds_registry_lineage_and_reuse(db, settings, add_si, tmp_path):
    from ase.build import bulk
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor
    from typer.testing import CliRunner

    from cspflow.cli.main import app
    from cspflow.jobs import category_for
    from cspflow.learn.evaluate import promotion
    from cspflow.learn.round import LearnMaker, learn
    from cspflow.mlip import committee_disagreement, load_model
    from cspflow.models import current_model_spec, get_model, lineage
    from cspflow.prerelax.stage import PrerelaxMaker
    from cspflow.schemas.learn import ModelMetrics, TrainSettings
    from cspflow.schemas.prerelax import PrerelaxSettings
    from cspflow.store import get_jobstore
    from cspflow.testing import insert_candidate

    store = get_jobstore(settings)
    add_si(db, iterations=(0,))
    # round 1: the learn job as a campaign runs it (gpu category), CHGNet is the model to beat
    j = LearnMaker(settings=TrainSettings(**TRAIN)).make(
        "Si", campaign="learn-test", iteration=0, baseline="chgnet"
    )
    assert category_for(j.metadata["stage"]) == "gpu"
    out = run_locally(j, store=store, create_folders=True, root_dir=tmp_path / "r1")
    s1 = out[j.uuid][1].output
    assert s1["trained"], s1["reason"]
    m1 = s1["model_id"]
    doc1 = get_model(db, m1)
    assert (
        doc1["parent"] == "chgnet" and doc1["campaign"] == "learn-test" and doc1["iteration"] == 0
    )
    new1, cur1 = (ModelMetrics(**doc1["metrics"][k]) for k in ("new", "current"))
    assert cur1.model == "chgnet" and new1.n_frames == cur1.n_frames > 0
    for m in (new1, cur1):
        assert m.energy_mae_mev_per_atom > 0 and m.force_mae_mev_per_a > 0
    assert (doc1["promoted"], doc1["promotion_reason"]) == promotion(new1, cur1)
    assert current_model_spec(db, "Si", "chgnet") == (
        f"registry:{m1}" if doc1["promoted"] else "chgnet"
    )
    assert doc1["training_set"]["candidate_ids"] == ["si-00", "si-01", "si-02", "si-03"]
    assert set(doc1["e0s"]) == {"Si"} and -6 < doc1["e0s"]["Si"] < -4

    # iteration 1's DFT arrives; round 2 fine-tunes round 1's model, which is the one to beat
    add_si(db, iterations=(1,))
    ts = TrainSettings(**{**TRAIN, "foundation_model": f"registry:{m1}", "committee": 2})
    s2 = learn(db, "Si", settings=ts, store=store, work_dir=tmp_path / "r2",
               current=f"registry:{m1}", campaign="learn-test", iteration=1)  # fmt: skip
    m2 = s2.model_id
    doc2 = get_model(db, m2)
    assert m2 != m1 and doc2["parent"] == m1 and doc2["foundation_model"] == f"registry:{m1}"
    assert lineage(db, m2) == [m2, m1, "chgnet"]
    assert doc2["training_set"]["n_frames"] > doc1["training_set"]["n_frames"]
    # the held-out split did not move, so "before" of round 2 is "after" of round 1
    assert doc2["training_set"]["test_hash"] == doc1["training_set"]["test_hash"]
    before2 = doc2["metrics"]["current"]
    assert before2["model"] == f"registry:{m1}"
    assert doc2["metrics"]["new"]["model"] == f"registry:{m2}"
    assert before2["energy_mae_mev_per_atom"] == pytest.approx(
        new1.energy_mae_mev_per_atom, abs=1e-3
    )
    assert before2["force_mae_mev_per_a"] == pytest.approx(new1.force_mae_mev_per_a, abs=1e-3)
    new2 = ModelMetrics(**doc2["metrics"]["new"])
    assert (doc2["promoted"], doc2["promotion_reason"]) == promotion(new2, ModelMetrics(**before2))
    print(f"round 1: {doc1['promotion_reason']}\nround 2: {doc2['promotion_reason']}")
    # round 2 trained a committee: the second seed is registered as a member, not promoted
    [member] = doc2["committee"]
    mdoc = get_model(db, member)
    assert mdoc["committee_of"] == m2 and not mdoc["promoted"] and mdoc["parent"] == m1
    assert mdoc["train_settings"]["seed"] == TRAIN["seed"] + 1
    # a rerun of the round (a job rerun by FireWorks) returns the stored model, no retraining
    again = learn(db, "Si", settings=ts, store=store, work_dir=tmp_path / "r2-again",
                  current=f"registry:{m1}", campaign="learn-test", iteration=1)  # fmt: skip
    assert again.model_id == m2 and not (tmp_path / "r2-again").exists()

    # the CLI shows both rounds, before/after figures and the lineage
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["model", "list", "--json"]).stdout)
    assert [r["model_id"] for r in listed if not r.get("committee_of")] == [m2, m1]
    assert len(listed) == 3  # and round 2's committee member
    shown = runner.invoke(app, ["model", "show", m2[:10]], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    print(shown.stdout)
    assert f"{m2} <- {m1} <- chgnet" in shown.stdout
    assert f"{before2['energy_mae_mev_per_atom']:.1f}" in shown.stdout
    assert f"{new2.force_mae_mev_per_a:.1f}" in shown.stdout
    assert json.loads(runner.invoke(app, ["model", "show", m2, "--json"]).stdout)["lineage"] == [
        m2, m1, "chgnet"
    ]  # fmt: skip
    exported = tmp_path / "export"
    exported.mkdir()
    res = runner.invoke(app, ["model", "export", m2, str(exported)])
    assert res.exit_code == 0, res.output
    path = exported / f"{m2}.model"

    # the model loads as mace:PATH and registry:ID (same id) and, as the model of the prerelax
    # stage (PrerelaxMaker jobs, as the next iteration runs them), relaxes a strained Si2
    by_path = load_model(f"mace:{path}", device="cpu")
    by_id = load_model(f"registry:{m2}", device="cpu", db=db)
    assert by_path.model_id == by_id.model_id == m2
    start = bulk("Si", "diamond", 5.6)
    start.rattle(0.05, seed=1)
    relaxed = {}
    for spec in (f"mace:{path}", f"registry:{m2}"):
        cid = insert_candidate(db, AseAtomsAdaptor.get_structure(start), status="generated",
                               campaign="learn-test", iteration=2)  # fmt: skip
        job = PrerelaxMaker(settings=PrerelaxSettings(model=spec, fmax=0.05, max_steps=200, dedup=False)).make(
            [cid], campaign="learn-test", iteration=2)  # fmt: skip
        run_locally(job, store=store, create_folders=True, root_dir=tmp_path / "prerelax")
        relaxed[spec] = db.candidates.find_one({"candidate_id": cid})
    for spec, d in relaxed.items():
        assert d["status"] == "prerelaxed", (spec, d.get("failure_reason"))
        assert d["relaxed"]["mlip"]["model_id"] == m2 and d["relaxed"]["mlip"]["converged"]
        assert abs(Structure.from_dict(d["relaxed"]["mlip"]["structure"]).volume / 2
                   - start.get_volume() / 2) > 0.01  # the cell moved  # fmt: skip
    e_path, e_id = (d["energy_per_atom"]["mlip"] for d in relaxed.values())
    assert e_path == pytest.approx(e_id, abs=1e-6)
    # the committee's disagreement (what selection uses for uncertain candidates)
    member_model = load_model(f"registry:{member}", device="cpu", db=db)
    [d] = committee_disagreement([by_id, member_model], [start])
    assert d["energy_std"] > 0 and d["force_std"] > 0
