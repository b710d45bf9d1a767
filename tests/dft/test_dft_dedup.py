"""Two candidates that DFT relaxes into the same minimum are shown once (the lower one)."""

from __future__ import annotations


def _diamond(a: float = 5.47, rotate: bool = False):
    from pymatgen.core import Lattice, Structure
    from pymatgen.transformations.standard_transformations import RotationTransformation

    s = Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"], [[0, 0, 0]])
    s = s.get_primitive_structure()
    return RotationTransformation([1, 1, 0], 33).apply_transformation(s) if rotate else s


def _result(structure, energy_per_atom: float):
    from cspflow.schemas.dft import DftResultDoc

    return DftResultDoc(engine="gpaw", preset="fast", settings_hash="h", status="converged",
                        structure=structure.as_dict(), energy_per_atom=energy_per_atom,
                        energy=energy_per_atom * len(structure), nsites=len(structure))  # fmt: skip


def test_same_dft_minimum_marks_the_higher_energy_duplicate(db):
    from pymatgen.core import Lattice, Structure

    from cspflow.dft.stage import write_result
    from cspflow.testing import insert_candidate

    start = Structure(Lattice.cubic(3.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    a, b, c = (insert_candidate(db, start) for _ in range(3))
    write_result(db, a, _result(_diamond(), -5.30))
    # b relaxed into the same diamond (rotated cell), 2 meV/atom lower: a becomes the duplicate
    write_result(db, b, _result(_diamond(rotate=True), -5.302))
    # c found something else (a denser cell is another structure)
    beta = Structure(Lattice.tetragonal(4.8, 2.65), ["Si", "Si"], [[0, 0, 0], [0, 0.5, 0.25]])
    write_result(db, c, _result(beta, -5.20))
    dups = {d["candidate_id"]: d.get("duplicate_of") for d in db.candidates.find()}
    assert dups == {a: b, b: None, c: None}, dups
    # a rerun of the write (a job rerun) changes nothing
    write_result(db, b, _result(_diamond(rotate=True), -5.302))
    assert {d["candidate_id"]: d.get("duplicate_of") for d in db.candidates.find()} == dups
    print(f"DFT-level duplicates: {sum(v is not None for v in dups.values())} of {len(dups)}")


def _at(result, xc: str):
    from cspflow.schemas.dft import DftSpec

    fid = DftSpec(engine="gpaw", gpaw={"xc": xc}).fidelity()
    return result.model_copy(update={"fidelity": fid}), fid.key


def test_dft_duplicates_and_results_stay_within_one_fidelity(db):
    from pymatgen.core import Lattice, Structure

    from cspflow.dft.stage import write_result
    from cspflow.schemas.dft import DftResultDoc
    from cspflow.store import candidates
    from cspflow.testing import insert_candidate

    start = Structure(Lattice.cubic(3.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    a, b = insert_candidate(db, start), insert_candidate(db, start)
    beta = Structure(Lattice.tetragonal(4.8, 2.65), ["Si", "Si"], [[0, 0, 0], [0, 0.5, 0.25]])
    # PBE: two different minima
    pbe_a, pbe = _at(_result(_diamond(), -5.42), "PBE")
    write_result(db, a, pbe_a)
    write_result(db, b, _at(_result(beta, -5.20), "PBE")[0])
    # LDA: b relaxes into a's diamond, 2 meV/atom lower: a is the duplicate at LDA only
    lda_a, lda = _at(_result(_diamond(5.40), -5.95), "LDA")
    write_result(db, a, lda_a)
    write_result(db, b, _at(_result(_diamond(5.40, rotate=True), -5.952), "LDA")[0])
    docs = candidates.get_many(db, [a, b])
    assert candidates.dft_result_at(docs[a], lda)["duplicate_of"] == b
    assert candidates.dft_result_at(docs[a], pbe)["duplicate_of"] is None
    assert docs[a].get("duplicate_of") is None  # still on the PBE hull
    assert {d["candidate_id"] for d in candidates.usable(db, "dft", fidelity=pbe)} == {a, b}
    assert {d["candidate_id"] for d in candidates.usable(db, "dft", fidelity=lda)} == {b}
    # the first fidelity stays the primary result; the LDA energies sit beside it
    assert docs[a]["energy_per_atom"]["dft"] == -5.42 and docs[a]["status"] == "dft_done"
    assert candidates.energy_at(docs[a], "dft", lda) == -5.95
    # a failed run at a third fidelity leaves the converged ones and the status alone
    failed = DftResultDoc(engine="gpaw", preset="fast", settings_hash="h", status="failed",
                          reason="scf")  # fmt: skip
    failed, pbe0 = _at(failed, "PBE0")
    write_result(db, b, failed)
    doc = candidates.get_many(db, [b])[b]
    assert doc["status"] == "dft_done" and doc["energy_per_atom"]["dft"] == -5.20
    assert [r["fidelity"]["key"] for r in doc["relaxed"]["dft_by_fidelity"]] == [pbe, lda, pbe0]
