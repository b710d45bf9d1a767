"""Deduplication: invariant fingerprints, duplicates found in MongoDB, polymorphs kept apart,
concurrent writers, relaxed forms, and the generate job."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import bson
import numpy as np
import pytest
from pymatgen.core import Structure
from pymatgen.core.operations import SymmOp

from cspflow.dedup.fingerprint import fingerprint, fingerprint_distance
from cspflow.dedup.index import find_duplicate, find_relaxed_duplicate, register, register_relaxed
from cspflow.dedup.match import (
    cell_document,
    cell_from_document,
    cells_match,
    reduced_cell,
    structures_match,
)
from cspflow.generate.composition import parse_target
from cspflow.generate.sources import RandomSymmetric, SourceContext, builtin_prototypes, substitute


def _variants(s: Structure) -> dict[str, Structure]:
    rng = np.random.default_rng(0)
    rotated = s.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    translated = s.copy()
    translated.translate_sites(list(range(len(s))), [0.31, 0.17, 0.73])
    permuted = Structure.from_sites([s[int(i)] for i in rng.permutation(len(s))])
    supercell = s.copy()
    supercell.make_supercell([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    niggli = s.get_reduced_structure()
    scaled = s.copy()
    scaled.scale_lattice(s.volume * 1.15)
    return {"rotated": rotated, "translated": translated, "permuted": permuted,
            "supercell": supercell, "other cell": niggli, "scaled": scaled}  # fmt: skip


def _random(comp: str, max_atoms: int, seed: int) -> Structure:
    target = parse_target(comp, max_atoms)
    for s in range(seed, seed + 50):
        gen = RandomSymmetric().make(target, s, SourceContext())
        if gen is not None:
            return gen.structure
    raise AssertionError("no structure")


@pytest.fixture(scope="module")
def structures():
    lib = builtin_prototypes()
    return {
        "spinel": substitute(lib["spinel"], {"Mg": "Mg", "Al": "Al", "O": "O"}),
        "perovskite": substitute(lib["perovskite"], {"Sr": "Sr", "Ti": "Ti", "O": "O"}),
        "random_sto": _random("SrTiO3", 15, 3),
        "random_si": _random("Si", 8, 7),
    }


def _race(script, path, workers: int = 3) -> list:
    """Run ``script`` in ``workers`` processes that start their inserts at the same moment."""
    import time

    start = time.time() + 8.0  # all workers imported and connected by then
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(start), str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(1, workers + 1)]  # fmt: skip
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_fingerprint_is_invariant_and_variants_share_a_bucket(structures):
    for s in structures.values():
        fp = fingerprint(s)
        for name, v in _variants(s).items():
            fv = fingerprint(v)
            assert fingerprint_distance(fp.vector, fv.vector) < 1e-6, name
            assert set(fv.buckets()) & set(fp.buckets()), name  # a lookup reads them
            assert fv.hash() == fp.hash(), name


def test_rotated_translated_permuted_supercell_are_duplicates(db, structures):
    ids = {}
    for name, s in structures.items():
        cid, new = register(db, s, source="test", campaign="a")
        assert new
        ids[name] = cid
    for name, s in structures.items():
        for vname, v in _variants(s).items():
            assert find_duplicate(db, v) == ids[name], (name, vname)
            cid, new = register(db, v, source="test", campaign="b")
            assert (cid, new) == (ids[name], False), (name, vname)
    assert db.candidates.count_documents({}) == len(structures)
    # lookups work across campaigns: campaign "b" found campaign "a"'s structures
    assert db.candidates.count_documents({"campaign": "b"}) == 0


def test_reduced_cell_confirmation_agrees_with_structure_matcher(structures):
    """The lookup's confirmation (stored reduced cells, fast same-cell check, matcher without
    its own reduction) gives StructureMatcher's answer on the original structures."""
    lib = builtin_prototypes()
    others = [substitute(lib[n], {"Ti": "Ti", "O": "O"}) for n in ("rutile", "anatase")]
    rng = np.random.default_rng(1)
    pairs = [(a, b) for a, b in zip(others, others[1:] + others[:1], strict=True)]
    for s in structures.values():
        rattled = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.03, (len(s), 3)),
                            coords_are_cartesian=True)  # fmt: skip
        pairs += [(s, v) for v in _variants(s).values()] + [(s, rattled), (rattled, s)]
        pairs += [(s, o) for o in structures.values() if o is not s]
    answers = []
    for a, b in pairs:
        stored = cell_document(reduced_cell(b))
        back = cell_from_document(stored)
        assert np.array_equal(back.lattice.matrix, reduced_cell(b).lattice.matrix)
        assert np.array_equal(back.frac_coords, reduced_cell(b).frac_coords)
        answers.append(structures_match(a, b))
        assert cells_match(reduced_cell(a), back) == answers[-1], (a.formula, b.formula)
    assert 0 < sum(answers) < len(answers)  # both answers occur


def test_fingerprint_documents_of_older_versions_are_still_found(db, structures):
    """Documents without a reduced cell, filed under the old single-cell keys, still match."""
    from cspflow.dedup.fingerprint import legacy_query_key
    from cspflow.dedup.index import candidate_document

    s = structures["random_sto"]
    fp = fingerprint(s)
    doc = candidate_document(s, fp, source="test")
    db.candidates.insert_one(dict(doc))
    old = {"_id": f"{doc['candidate_id']}|initial", "candidate_id": doc["candidate_id"],
           "level": "initial", "formula": fp.formula, "chemsys": fp.chemsys,
           "spacegroup": fp.spacegroup, "nprim": fp.nprim, "nsites": len(s),
           "bucket": [legacy_query_key(fp)],
           "fp": bson.Binary(fp.vector.astype("<f4").tobytes())}  # fmt: skip
    db.fingerprints.insert_one(old)
    rotated = s.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([2, 1, 1], 50.0))
    assert find_duplicate(db, rotated) == doc["candidate_id"]
    assert register(db, rotated, source="test") == (doc["candidate_id"], False)
    assert find_duplicate(db, structures["perovskite"]) is None


def test_other_polymorphs_are_not_duplicates(db):
    lib = builtin_prototypes()
    pairs = [("rutile", "anatase", {"Ti": "Ti", "O": "O"}),
             ("zincblende", "wurtzite", {"Zn": "Zn", "S": "O"}),
             ("rocksalt", "cscl", {"Mg": "Mg", "O": "O"})]  # fmt: skip
    for a, b, mapping in pairs:
        sa = substitute(lib[a], mapping)
        mb = (
            {"Zn": "Zn", "O": "O"}
            if b == "wurtzite"
            else {"Cs": "Mg", "Cl": "O"}
            if b == "cscl"
            else mapping
        )
        sb = substitute(lib[b], mb)
        assert sa.composition.reduced_formula == sb.composition.reduced_formula
        ida, new_a = register(db, sa, source="test")
        idb, new_b = register(db, sb, source="test")
        assert new_a and new_b and ida != idb, (a, b)
        assert find_duplicate(db, sb) == idb


def test_document_fields(db, structures):
    cid, _ = register(db, structures["spinel"], source="prototype", params={"prototype": "spinel"},
                      seed=None, parent_ids=[], campaign="c", iteration=2)  # fmt: skip
    doc = db.candidates.find_one({"candidate_id": cid})
    assert doc["formula"] == "MgAl2O4" and doc["chemsys"] == "Al-Mg-O"
    assert doc["composition"] == {"Mg": 2.0, "Al": 4.0, "O": 8.0} and doc["nsites"] == 14
    assert doc["spacegroup"] == 227 and doc["status"] == "generated"
    assert doc["energy_per_atom"] == {"mlip": None, "dft": None}
    assert doc["campaign"] == "c" and doc["iteration"] == 2 and doc["source"] == "prototype"
    assert Structure.from_dict(doc["structure"]) == structures["spinel"]
    assert isinstance(doc["bucket"], list) and doc["fingerprint_hash"] and doc["content_hash"]


_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pymatgen.core import Structure
    from pymatgen.core.operations import SymmOp
    from cspflow.store import get_database
    from cspflow.dedup.index import register
    rank, start, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    structures = [Structure.from_dict(d) for d in json.load(open(path))]
    db = get_database()
    out = []
    for s in structures:
        s = s.copy()
        s.apply_operation(SymmOp.from_axis_angle_and_translation([1, rank, 2], 20.0 * rank))
        while time.time() < start:
            pass
        out.append(register(db, s, source="race"))
        start += 0.5
    print(json.dumps(out))
    """
)


def test_concurrent_processes_inserting_the_same_structure_store_one(
    db, settings, tmp_path, structures
):
    path = tmp_path / "structures.json"
    path.write_text(json.dumps([s.as_dict() for s in structures.values()]))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)

    results = _race(script, path)
    stored = db.candidates.count_documents({})
    print(f"\n{len(results)} processes x {len(structures)} structures: "
          f"{sum(r[k][1] for r in results for k in range(len(structures)))} inserts won, "
          f"{stored} stored, {stored - len(structures)} duplicates")  # fmt: skip
    for k in range(len(structures)):
        ids = {r[k][0] for r in results}
        news = [r[k][1] for r in results]
        assert len(ids) == 1 and sum(news) == 1, (k, results)
    assert stored == len(structures)
    assert db.dedup_locks.count_documents({}) == 0


def test_relaxed_forms_are_indexed(db, structures):
    lib = builtin_prototypes()
    rutile = substitute(lib["rutile"], {"Ti": "Ti", "O": "O"})
    anatase = substitute(lib["anatase"], {"Ti": "Ti", "O": "O"})
    a, _ = register(db, rutile, source="test")
    b, _ = register(db, anatase, source="test")
    # candidate b "relaxed" into rutile: that is candidate a
    assert register_relaxed(db, b, rutile.copy(), "mlip") == a
    # a new structure relaxing into a known relaxed form is found too
    c, _ = register(db, structures["random_sto"], source="test")
    relaxed_c = structures["perovskite"].copy()
    assert register_relaxed(db, c, relaxed_c, "dft") is None
    rotated = relaxed_c.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 30.0))
    assert find_duplicate(db, rotated) == c


def test_generate_job_registers_unique_candidates_and_is_idempotent(db, settings):
    from jobflow import run_locally

    from cspflow.generate.maker import GenerateMaker
    from cspflow.schemas.generate import GenerateSettings
    from cspflow.store import get_jobstore

    maker = GenerateMaker(
        settings=GenerateSettings(
            per_iteration=6, sources={"random_symmetric": 0.7, "prototype": 0.3}
        ),
        max_atoms=10,
    )
    job = maker.make("SrTiO3", campaign="demo", iteration=0)
    assert job.metadata["stage"] == "generate" and job.metadata["iteration"] == 0
    store = get_jobstore(settings)
    responses = run_locally(job, store=store, ensure_success=True)
    summary = responses[job.uuid][1].output
    assert summary["n_new"] == 6 and len(summary["candidate_ids"]) == 6
    assert "structure" not in json.dumps(summary)
    assert db.candidates.count_documents({"campaign": "demo", "iteration": 0}) == 6
    # rerunning the iteration does not add candidates
    again = maker.make("SrTiO3", campaign="demo", iteration=0)
    summary2 = run_locally(again, store=store, ensure_success=True)[again.uuid][1].output
    assert summary2["n_new"] == 0 and sorted(summary2["candidate_ids"]) == sorted(
        summary["candidate_ids"]
    )
    # the next iteration adds new, different structures (dedup across iterations)
    nxt = maker.make("SrTiO3", campaign="demo", iteration=1)
    run_locally(nxt, store=store, ensure_success=True)
    assert db.candidates.count_documents({"campaign": "demo"}) == 12


def test_mutation_takes_parents_from_lowest_energy_candidates(db, structures):
    from cspflow.dedup.index import MongoIndex
    from cspflow.generate.batch import generate_batch, load_parents

    target = parse_target("SrTiO3", 20)
    ids = []
    for seed in range(3, 12):
        s = _random("SrTiO3", 15, seed * 10)
        cid, new = register(db, s, source="test")
        if new:
            ids.append(cid)
    energies = {cid: -5.0 + 0.1 * i for i, cid in enumerate(ids)}
    for cid, e in energies.items():
        db.candidates.update_one({"candidate_id": cid}, {"$set": {"energy_per_atom.mlip": e}})
    # a DFT energy outranks the MLIP one: the worst-by-MLIP candidate becomes the best
    # (a converged DFT result, as the DFT stage writes it: only those count as DFT energies)
    db.candidates.update_one({"candidate_id": ids[-1]}, {"$set": {
        "energy_per_atom.dft": -9.0, "relaxed.dft": {"status": "converged"}}})  # fmt: skip
    parents = load_parents(db, "SrTiO3", pool_size=3)
    assert [p.candidate_id for p in parents] == [ids[-1], ids[0], ids[1]]
    from cspflow.generate.sources import SourceContext as Ctx

    r = generate_batch(target, 5, MongoIndex(db), sources={"mutation": 1},
                       context=Ctx(parents=parents), seed=1)  # fmt: skip
    assert r.summary.n_new == 5
    for cid in r.summary.candidate_ids:
        doc = db.candidates.find_one({"candidate_id": cid})
        assert doc["source"] == "mutation" and doc["parent_ids"]
        assert set(doc["parent_ids"]) <= {p.candidate_id for p in parents}


_NEAR_WORKER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from pymatgen.core import Structure
    from pymatgen.core.operations import SymmOp
    import cspflow.dedup.index as dedup
    from cspflow.store import get_database
    rank, start, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    structures = [Structure.from_dict(d) for d in json.load(open(path))]
    db = get_database()
    lookup = dedup.find_duplicate

    def slow_lookup(*args, **kwargs):
        # A writer that is slow between its lookup and its insert: without the bucket locks
        # every worker misses and inserts.
        found = lookup(*args, **kwargs)
        time.sleep(0.4)
        return found

    dedup.find_duplicate = slow_lookup
    rng = np.random.default_rng(rank)
    out = []
    for s in structures:
        s = s.copy()
        s.apply_operation(SymmOp.from_axis_angle_and_translation([1, rank, 2], 20.0 * rank))
        s = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.01, (len(s), 3)),
                      coords_are_cartesian=True)
        while time.time() < start:
            time.sleep(0.001)
        out.append(dedup.register(db, s, source="race"))
        start += 2.0
    print(json.dumps(out))
    """
)


def test_concurrent_near_duplicates_store_one(db, settings, tmp_path, structures):
    """Rattled copies differ in fingerprint_hash, so only the bucket locks keep them apart."""

    from cspflow.dedup.fingerprint import fingerprint

    chosen = [structures["random_sto"], structures["spinel"]]
    rng = np.random.default_rng(0)
    for s in chosen:  # the noise really defeats the unique (chemsys, fingerprint_hash) index
        noise = rng.normal(0, 0.01, (len(s), 3))
        noisy = Structure(s.lattice, s.species, s.cart_coords + noise, coords_are_cartesian=True)
        assert fingerprint(noisy).hash() != fingerprint(s).hash()
    path = tmp_path / "structures.json"
    path.write_text(json.dumps([s.as_dict() for s in chosen]))
    script = tmp_path / "worker.py"
    script.write_text(_NEAR_WORKER)
    results = _race(script, path)
    stored = db.candidates.count_documents({})
    print(f"\n{len(results)} processes x {len(chosen)} near-duplicates: {stored} stored, "
          f"{stored - len(chosen)} duplicates")  # fmt: skip
    for k in range(len(chosen)):
        assert len({r[k][0] for r in results}) == 1 and sum(r[k][1] for r in results) == 1, k
    assert stored == len(chosen)
    assert db.fingerprints.count_documents({}) == len(chosen)
    assert db.dedup_locks.count_documents({}) == 0


def test_fingerprints_collection_holds_one_small_document_per_form(db, structures):
    cid, _ = register(db, structures["spinel"], source="test")
    doc = db.fingerprints.find_one({"candidate_id": cid})
    assert doc["level"] == "initial" and doc["formula"] == "MgAl2O4" and doc["nsites"] == 14
    assert "structure" not in doc and doc["bucket"] == fingerprint(structures["spinel"]).buckets()
    # a lookup reads every document of its buckets whole: reduced cell included, about 2 kB
    assert len(bson.encode(doc)) < 2500 and doc["cell"]["species"].count(" ") == 13
    relaxed = structures["spinel"].copy()
    relaxed.scale_lattice(relaxed.volume * 1.02)
    for _ in range(2):  # filing the same level again replaces its document
        assert register_relaxed(db, cid, relaxed, "mlip") is None
    assert sorted(d["level"] for d in db.fingerprints.find({"candidate_id": cid})) == [
        "initial",
        "mlip",
    ]


def test_a_bucket_lock_left_by_a_gone_owner_is_taken_over_and_a_live_ones_is_waited_for(
    db, structures
):
    """A registration an outage broke off leaves its lock behind (its release failed too): the
    next registration takes it over at once when the owner is known to be gone (an earlier
    attempt of this process, an exited process of this host), and waits for a live owner."""
    import os
    import socket
    import time

    from cspflow.dedup.fingerprint import lock_key
    from cspflow.dedup.locks import _bucket_locks
    from cspflow.errors import CspflowError
    from cspflow.procs import pid_namespace

    s = next(iter(structures.values()))
    key = lock_key(fingerprint(s))
    host, ns = socket.gethostname(), pid_namespace()
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    for owner in (f"{host}:{os.getpid()}:broken01", f"{host}:{exited.stdout.strip()}:dead0001"):
        db.dedup_locks.delete_many({})
        db.dedup_locks.insert_one({"_id": key, "owner": owner, "at": datetime_now(), "pidns": ns})
        t0 = time.monotonic()
        with _bucket_locks(db, [key], wait_s=5):  # the old LOCK_WAIT_S of 60 s failed here
            holder = db.dedup_locks.find_one({"_id": key})["owner"]
        print(f"\nlock of {owner} taken over after {time.monotonic() - t0:.3f} s")
        assert holder != owner and db.dedup_locks.count_documents({}) == 0

    # a live owner (this test's parent process) keeps its lock until it is stale
    db.dedup_locks.insert_one({"_id": key, "owner": f"{host}:{os.getppid()}:alive001",
                               "at": datetime_now(), "pidns": ns})  # fmt: skip
    with pytest.raises(CspflowError, match="stayed locked"), _bucket_locks(db, [key], wait_s=0.5):
        pass
    assert db.dedup_locks.find_one({"_id": key})["owner"].endswith("alive001")
    db.dedup_locks.delete_many({})
    cid, new = register(db, s, source="after")
    assert new and db.dedup_locks.count_documents({}) == 0


def datetime_now():
    from cspflow.dedup.locks import _utcnow

    return _utcnow()


def _dycu_cscl(abc=(3.4657, 3.4657, 3.4657), beta=90.0) -> Structure:
    from pymatgen.core import Lattice

    lattice = Lattice.from_parameters(*abc, 90.0, beta, 90.0)
    return Structure(lattice, ["Dy", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _start(k: int) -> Structure:
    """A distinct triclinic DyCu cell per k: the generated structure a relaxation started from."""
    from pymatgen.core import Lattice

    lattice = Lattice.from_parameters(3.3 + 0.3 * k, 3.9, 4.4, 80.0 + 3 * k, 95.0, 101.0)
    return Structure(lattice, ["Dy", "Cu"], [[0, 0, 0], [0.31, 0.22 + 0.07 * k, 0.6]])


def test_relaxed_copies_of_one_minimum_are_one_entry_however_they_drifted(db):
    """Copies of CsCl-type DyCu as CHGNet left them (a 1-iteration campaign listed them as ranks
    1-3): spglib puts the drifted ones in Cmcm/Cmmm, not Pm-3m, so they share no bucket; the
    relaxed-energy lookup still finds them, whatever their orientation or cell."""
    from pymatgen.core import Lattice

    cubic = _dycu_cscl()
    drifted = _dycu_cscl((3.4579, 3.4653, 3.4693), beta=90.87)
    rotated = drifted.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 1, 0], 23.0))
    # another cell choice (a' = a + c, a monoclinic cell of the same lattice), strained 1 %
    m = cubic.lattice.matrix
    other_cell = Structure(
        Lattice(np.array([m[0] + m[2], m[1], m[2]]) * [[1.01], [1.0], [0.995]]),
        ["Dy", "Cu"],
        [[0, 0, 0], [0.5, 0.5, 0.0]],
    )
    supercell = drifted.copy()
    supercell.make_supercell([2, 1, 1])
    assert structures_match(cubic, other_cell)  # the same crystal, by the user's criterion
    copies = {"drifted": drifted, "rotated": rotated, "other cell": other_cell,
              "supercell": supercell}  # fmt: skip
    classes = {fingerprint(s).spacegroup for s in copies.values()}
    assert len(classes - {fingerprint(cubic).spacegroup}) >= 1, classes  # buckets differ

    first, _ = register(db, _start(0), source="test")
    assert register_relaxed(db, first, cubic, "mlip", -4.59684) is None
    # Control: the bucket lookup alone misses the drifted copy, so what follows exercises the
    # relaxed-energy lookup.
    assert find_duplicate(db, drifted) is None
    ids: list[str] = []
    for k, (name, s) in enumerate(copies.items(), start=1):
        cid, new = register(db, _start(k), source="test")
        assert new
        found = register_relaxed(db, cid, s, "mlip", -4.59684 + 0.0004)
        assert found in [first, *ids], name
        db.candidates.update_one({"candidate_id": cid}, {"$set": {"duplicate_of": found}})
        ids.append(cid)
        # whichever copy it matched, the answer names the representative (via duplicate_of)
        assert register_relaxed(db, cid, s, "mlip", -4.59684 + 0.0004) == first, name
    # A polymorph at the same energy (WC type) and a copy at another level are not duplicates.
    wc = Structure(Lattice.hexagonal(3.80, 3.70), ["Dy", "Cu"],
                   [[0, 0, 0], [1 / 3, 2 / 3, 0.5]])  # fmt: skip
    other, _ = register(db, _start(6), source="test")
    assert find_duplicate(db, wc) is None
    assert register_relaxed(db, other, wc, "mlip", -4.59684) is None
    # A rerun of the representative's own registration (copies now point at it): not a copy.
    assert register_relaxed(db, first, cubic, "mlip", -4.59684) is None
    # Energies of one level are compared with that level only.
    assert find_relaxed_duplicate(db, drifted, "mlip", -4.59684) == first
    assert find_relaxed_duplicate(db, drifted, "dft", -4.59684) is None
    assert find_relaxed_duplicate(db, drifted, "mlip", -4.59684 + 0.05) is None
    assert db.dedup_locks.count_documents({}) == 0
