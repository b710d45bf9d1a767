"""A 5,000-candidate iteration stays far below MongoDB's 16 MB document limit.

The generate -> prerelax fan-out of campaign.py runs for real on FireWorks: a stand-in
generate job reports 5,000 stored candidates (each with its structure in ``candidates``),
``prerelax_fanout`` replaces itself with one gpu job per batch, and every document FireWorks
and jobflow wrote is measured with ``bson.encode``. Structures must travel by candidate id.
"""

from __future__ import annotations

import math
import time

import bson

N = 5000
LIMIT = 16 * 1024 * 1024
MARGIN = 4 * 1024 * 1024


def insert_candidates(db, name: str, n: int) -> None:
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).as_dict()
    docs = [
        {"candidate_id": f"c-{i:06d}", "campaign": name, "iteration": 0, "formula": "MgO",
         "chemsys": "Mg-O", "composition": {"Mg": 1.0, "O": 1.0}, "fingerprint_hash": f"fp-{i:06d}",
         "nsites": 2, "structure": structure, "status": "generated",
         "energy_per_atom": {"mlip": None, "dft": None}}
        for i in range(n)
    ]  # fmt: skip
    for k in range(0, n, 1000):
        db.candidates.insert_many(docs[k : k + 1000], ordered=False)


def test_5000_candidate_fanout_documents_stay_small(settings, db):
    from jobflow import Flow

    from cspflow.campaign.loop import prerelax_fanout
    from cspflow.campaign.state import register_campaign
    from cspflow.prerelax.select import SelectMaker
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.scheduler.workers import run_worker
    from cspflow.schemas.campaign import CampaignSpec
    from cspflow.testing.jobs import announce_candidates

    name = "big"
    spec = CampaignSpec(name=name, compositions=["MgO"], max_atoms=2,
                        generate={"per_iteration": N}, dft={"engine": "none"})  # fmt: skip
    register_campaign(db, spec)
    t0 = time.monotonic()
    insert_candidates(db, name, N)
    gen = announce_candidates(name, 0, "MgO")
    fan = prerelax_fanout([gen.output], name, 0)
    fan.update_metadata({"stage": "control", "campaign": name, "iteration": 0}, dynamic=False)
    select = SelectMaker().make(campaign=name, iteration=0, prerelax_outputs=[fan.output])
    submit_flow(
        Flow([gen, fan, select], name=f"campaign {name}"), settings, metadata={"campaign": name}
    )
    ran = run_worker("cpu", settings, nlaunches=0, sleep_time=1)  # generate + fan-out; select waits
    elapsed = time.monotonic() - t0

    lp = get_launchpad(settings)
    batches = math.ceil(N / spec.prerelax.batch_size)
    prerelax = list(lp.fireworks.find({"spec._category": "gpu"}, {"fw_id": 1, "state": 1}))
    sizes: dict[str, tuple[int, int, str]] = {}
    for coll in ("fireworks", "workflows", "launches", "outputs"):
        biggest, count, what = 0, 0, ""
        for doc in db[coll].find({}):
            raw = bson.encode(doc)
            count += 1
            assert b"lattice" not in raw or coll == "candidates", f"a structure inline in {coll}"
            if len(raw) > biggest:
                biggest, what = (
                    len(raw),
                    str(doc.get("name") or doc.get("fw_id") or doc.get("uuid")),
                )
        sizes[coll] = (biggest, count, what)
    largest = max(sizes.values())
    print(f"\n{N} candidates -> {len(prerelax)} prerelax batches of {spec.prerelax.batch_size} "
          f"({ran} cpu launches, {elapsed:.0f} s); largest document per collection:")  # fmt: skip
    for coll, (size, count, what) in sizes.items():
        print(f"  {coll:9s} {count:5d} docs, largest {size / 1024:8.1f} KiB ({what[:60]})")
    per_batch = sizes["launches"][0] / batches  # the fan-out's FWAction carries the new workflow
    print(f"  largest overall {largest[0] / 1024:.1f} KiB = {largest[0] / LIMIT:.2%} of 16 MB; the "
          f"fan-out launch grows {per_batch / 1024:.1f} KiB per batch: 16 MB at about "
          f"{LIMIT / per_batch * spec.prerelax.batch_size:,.0f} candidates in one fan-out")  # fmt: skip
    assert ran == 2
    assert len(prerelax) == batches and all(f["state"] == "READY" for f in prerelax)
    assert largest[0] < MARGIN < LIMIT
