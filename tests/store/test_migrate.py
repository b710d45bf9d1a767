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
    assert migrate.upgrade(db, force=True) == {"candidates": 0, "fingerprints": 0, "fireworks": 0}


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
