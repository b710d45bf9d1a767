"""A database written by the previous release (main at 772b1e9) loads and its campaign resumes.

``data/db_772b1e9.json.gz`` is that release's database after ``cspflow campaign submit
data/si-old.yaml`` and one pass of a cpu and a gpu worker: iteration 0 generated and
pre-relaxed 6 Si candidates (old layout: ``relaxed.mlip.spacegroup`` a symbol), and the
select, hull and decide fireworks wait, serialized with that release's module paths
(``cspflow.prerelax``, ``cspflow.campaign``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def _restore(db) -> dict:
    from bson import json_util

    dump = json_util.loads(gzip.open(DATA / "db_772b1e9.json.gz", "rt").read())
    for name in db.list_collection_names():
        db[name].drop()
    for name, docs in dump["collections"].items():
        if docs:
            db[name].insert_many(docs)
    return dump


def _old_paths(db) -> list[str]:
    text = json.dumps([fw["spec"] for fw in db.fireworks.find()], default=str)
    return [m for m in ('cspflow.prerelax"', 'cspflow.campaign"') if m in text]


def test_upgrade_brings_old_documents_to_this_layout(db):
    from cspflow.schemas.candidate import CandidateDoc
    from cspflow.store import migrate

    _restore(db)
    assert migrate.layout_version(db) is None
    symbols = {d["candidate_id"]: d["relaxed"]["mlip"]["spacegroup"]
               for d in db.candidates.find({"relaxed.mlip": {"$exists": True}})}  # fmt: skip
    assert symbols and all(isinstance(s, str) for s in symbols.values())
    assert _old_paths(db)

    changed = migrate.upgrade(db, force=True)
    assert changed["candidates"] == 6 and changed["fireworks"] >= 4, changed
    assert migrate.layout_version(db) == migrate.LAYOUT_VERSION
    for doc in db.candidates.find({}, {"_id": 0}):
        CandidateDoc.model_validate(doc)  # every field declared, each with its one type
        mlip = doc["relaxed"]["mlip"]
        assert mlip["spacegroup_symbol"] == symbols[doc["candidate_id"]]
        assert isinstance(mlip["spacegroup"], int) and mlip["spacegroup"] >= 1
    assert _old_paths(db) == []
    relaxed_forms = list(db.fingerprints.find({"level": "mlip"}))
    assert relaxed_forms and all(f["energy_per_atom"] < 0 for f in relaxed_forms)
    # a second run finds nothing left to change
    assert set(migrate.upgrade(db, force=True).values()) == {0}


def _old_dft(campaign: str, engine: str = "gpaw", preset: str = "fast", e: float = -5.4) -> dict:
    """A DFT result as layout 2 stored it (no fidelity)."""
    return {"schema_version": 1, "candidate_id": None, "campaign": campaign, "engine": engine,
            "preset": preset, "settings_hash": "0" * 24, "status": "converged",
            "energy_per_atom": e, "nsites": 2}  # fmt: skip


def test_upgrade_gives_every_stored_energy_a_fidelity(db):
    import datetime

    from cspflow.schemas.candidate import CandidateDoc
    from cspflow.schemas.dft import DftSpec
    from cspflow.store import candidates, migrate

    _restore(db)
    lda_spec = {"engine": "gpaw", "preset": "fast", "gpaw": {"xc": "LDA"}, "budget": None}
    lda_key = (
        DftSpec.model_validate({k: v for k, v in lda_spec.items() if k != "budget"}).fidelity().key
    )
    db.campaigns.insert_one({"name": "si-lda-old", "chemsys": "Si",
                             "spec": {"name": "si-lda-old", "dft": lda_spec,
                                      "references": "/data/refs.json"}})  # fmt: skip
    ids = sorted(d["candidate_id"] for d in db.candidates.find())
    known, gone, other_preset = ids[:3]
    # the layout-2 candidates with DFT results: one of a campaign whose spec is stored, one of
    # a campaign that is gone, one whose stored spec names another preset than the result
    for cid, dft in (
        (known, _old_dft("si-lda-old")),
        (gone, _old_dft("deleted", e=-5.3)),
        (other_preset, _old_dft("si-lda-old", preset="accurate", e=-5.2)),
    ):
        db.candidates.update_one({"candidate_id": cid}, {"$set": {
            "relaxed.dft": dft, "energy_per_atom.dft": dft["energy_per_atom"],
            "status": "dft_done"}})  # fmt: skip
    # a hull of layout 2 (its unique index on chemsys + version), a reference, a model
    db.hull.drop_indexes()
    db.hull.create_index([("chemsys", 1), ("version", -1)], unique=True, name="chemsys_version")
    db.hull.insert_one({"chemsys": "Si", "version": 1, "level": "dft", "complete": True,
                        "stable": [known], "stable_formulas": ["Si"],
                        "entries": [{"entry_id": known, "source": "candidate",
                                     "energy_per_atom": -5.4}],
                        "created_at": datetime.datetime(2026, 1, 1)})  # fmt: skip
    db.hull.insert_one({"chemsys": "Si", "version": 2, "level": "dft", "complete": True,
                        "stable": [gone], "stable_formulas": ["Si"],
                        "entries": [{"entry_id": e, "source": "candidate", "energy_per_atom": -5}
                                    for e in (known, gone)],
                        "created_at": datetime.datetime(2026, 1, 2)})  # fmt: skip
    db.hull_references.insert_one({"entry_id": "ref-1", "formula": "Si", "chemsys_level": "dft",
                                   "composition": {"Si": 1}, "energy_per_atom": -5.0,
                                   "source_file": "/data/refs.json"})  # fmt: skip
    db.models.insert_many([{"model_id": "mace-a", "chemsys": "Si", "campaign": "si-lda-old",
                            "promoted": True, "created_at": datetime.datetime(2026, 1, 1)},
                           {"model_id": "mace-b", "chemsys": "Si", "campaign": None,
                            "promoted": True, "created_at": datetime.datetime(2026, 1, 2)}])  # fmt: skip
    db.cspflow_meta.delete_many({})

    changed = migrate.upgrade(db, force=True)
    assert changed["candidates"] == 6 and changed["hull"] == 2 and changed["models"] == 2
    assert migrate.layout_version(db) == 3
    docs = {d["candidate_id"]: d for d in db.candidates.find({}, {"_id": 0})}
    for doc in docs.values():
        CandidateDoc.model_validate(doc)
        assert doc["relaxed"]["mlip"]["fidelity"]["key"] == "mlip:chgnet-0.3.0"
    # the DFT result of a campaign whose spec is stored gets that spec's fidelity, exactly
    assert docs[known]["relaxed"]["dft"]["fidelity"]["key"] == lda_key
    assert [r["fidelity"]["key"] for r in docs[known]["relaxed"]["dft_by_fidelity"]] == [lda_key]
    # else an explicit unknown that never equals a known key
    assert docs[gone]["relaxed"]["dft"]["fidelity"]["key"] == "unknown:dft:gpaw:fast"
    assert docs[gone]["relaxed"]["dft"]["fidelity"]["known"] is False
    assert docs[other_preset]["relaxed"]["dft"]["fidelity"]["key"] == "unknown:dft:gpaw:accurate"
    assert [d["candidate_id"] for d in candidates.usable(db, "dft", fidelity=lda_key)] == [known]
    # hulls: the fidelity their entries share, unknown where they mixed
    hulls = {h["version"]: h for h in db.hull.find()}
    assert hulls[1]["fidelity_key"] == lda_key and hulls[2]["fidelity_key"] == "unknown:dft"
    assert "chemsys_version" not in db.hull.index_information()
    ref = db.hull_references.find_one()
    assert ref["fidelity_key"] == lda_key  # the file the LDA campaign's spec imported
    models = {m["model_id"]: m["fidelity_key"] for m in db.models.find()}
    assert models == {"mace-a": lda_key, "mace-b": "unknown:dft"}
    from cspflow.models import current_model

    assert current_model(db, "Si", lda_key)["model_id"] == "mace-a"
    # a new hull at the LDA fidelity counts its own versions beside the old ones
    from cspflow.hull import update_hull

    assert update_hull(db, "Si", fidelity=docs[known]["relaxed"]["dft"]["fidelity"])["version"] == 2
    assert set(migrate.upgrade(db, force=True).values()) == {0}


@pytest.mark.slow
def test_a_campaign_started_by_the_previous_release_resumes(db, settings, tmp_path):
    from cspflow.testing.cli import cli_env, run_cli

    _restore(db)
    before = {d["candidate_id"] for d in db.candidates.find()}
    env = cli_env(settings)
    # the first command of this release on that database upgrades it, then runs the rest
    run_cli("campaign", "run", str(DATA / "si-old.yaml"), "--json", env=env, timeout=900)
    camp = db.campaigns.find_one({"name": "si-old"})
    assert camp["state"] == "completed"
    assert [it["iteration"] for it in camp["iterations"]] == [0, 1]
    # iteration 0's stored candidates were selected from, not generated again
    assert camp["iterations"][0]["counts"].get("selected", 0) >= 1
    assert before <= {d["candidate_id"] for d in db.candidates.find()}
    assert db.candidates.count_documents({"iteration": 1}) >= 1
    top = json.loads(run_cli("results", "top", "si-old", "--json", env=env).stdout)
    assert top["schema_version"] == 2
    assert all(isinstance(r["spacegroup"], int) for r in top["structures"])
    assert top["structures"][0]["spacegroup"] == 227  # diamond, found in iteration 0
