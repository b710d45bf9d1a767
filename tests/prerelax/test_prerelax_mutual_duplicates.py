"""Two candidates of one batch that find each other as duplicates: one stays, no self-duplicate.

Template starts are already at (or next to) a minimum, so a candidate's relaxed structure can
match another batch member's stored start while that member's relaxed structure matches the
first candidate: the dedup pass must not mark a candidate a duplicate of itself.
"""

from __future__ import annotations

import pytest
from ase.build import bulk


@pytest.fixture(scope="module")
def chgnet():
    from cspflow.mlip import load_model

    return load_model("chgnet", device="cpu")


def test_candidates_that_find_each_other_keep_the_lower_energy_one(db, chgnet):
    from pymatgen.io.ase import AseAtomsAdaptor

    from cspflow.prerelax.stage import prerelax_candidates
    from cspflow.testing import insert_candidate

    starts = [bulk("Si", "diamond", a) for a in (5.40, 5.50)]
    ids = [insert_candidate(db, AseAtomsAdaptor.get_structure(s), status="generated")
           for s in starts]  # fmt: skip

    def find_each_other(database, cid, structure):
        return ids[1] if cid == ids[0] else ids[0]

    summary = prerelax_candidates(ids, db=db, loaded=chgnet, find_duplicate=find_each_other)
    assert len(summary.duplicates) == 1
    ((dup, keep),) = summary.duplicates.items()
    assert dup != keep and {dup, keep} == set(ids)
    docs = {d["candidate_id"]: d for d in db.candidates.find()}
    assert docs[dup]["duplicate_of"] == keep and docs[keep].get("duplicate_of") is None
    assert docs[keep]["energy_per_atom"]["mlip"] <= docs[dup]["energy_per_atom"]["mlip"]
