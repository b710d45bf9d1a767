"""The prerelax stage with CHGNet (weights ship in its wheel): science, filters, database, jobs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal
from pymatgen.io.ase import AseAtomsAdaptor

from cspflow.errors import CspflowError
from cspflow.jobs import category_for
from cspflow.prerelax.relax import relax_structures
from cspflow.prerelax.select import SelectMaker, select_candidates
from cspflow.prerelax.stage import PrerelaxMaker, prerelax_candidates
from cspflow.schemas.prerelax import PrerelaxSettings, SelectSettings

EXPERIMENT = {"Si": 5.43, "NaCl": 5.64, "SrTiO3": 3.905}  # conventional cubic lattice constants


def perovskite(a: float = 3.905) -> Atoms:
    return crystal(
        ["Sr", "Ti", "O"],
        basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
        spacegroup=221,
        cellpar=[a, a, a, 90, 90, 90],
    )


def start_structures() -> list[Atoms]:
    """Si, NaCl and SrTiO3 strained away from experiment, so the cell has to relax."""
    return [bulk("Si", "diamond", 5.20), bulk("NaCl", "rocksalt", 5.95), perovskite(3.75)]


def cubic_constant(structure) -> float:
    """Conventional cubic lattice constant from the volume per formula unit."""
    formula = structure.composition.reduced_formula
    z = structure.composition.get_reduced_composition_and_factor()[1]
    per_cell = {"Si": 8, "NaCl": 4, "SrTiO3": 1}[formula]  # formula units per cubic cell
    return (structure.volume / z * per_cell) ** (1 / 3)


@pytest.fixture(scope="module")
def chgnet():
    from cspflow.mlip import load_model

    return load_model("chgnet", device="cpu")


def candidate_doc(structure, campaign="t", iteration=0, cid=None) -> dict:
    """A minimal ``candidates`` document as the generate stage writes it."""
    from pymatgen.core import Structure

    if not isinstance(structure, Structure):
        structure = AseAtomsAdaptor.get_structure(structure)
    comp = structure.composition
    return {
        "candidate_id": cid or f"{comp.reduced_formula}-{uuid.uuid4().hex[:8]}",
        "campaign": campaign,
        "iteration": iteration,
        "composition": {el.symbol: float(n) for el, n in comp.items()},
        "formula": comp.reduced_formula,
        "chemsys": comp.chemical_system,
        "nsites": len(structure),
        "structure": structure.as_dict(),
        "spacegroup": None,
        "fingerprint_hash": uuid.uuid4().hex,  # unique (chemsys, fingerprint_hash) index
        "bucket": [],
        "status": "generated",
        "energy_per_atom": {"mlip": None, "dft": None},
        "failure_reason": None,
    }


@pytest.mark.slow
def test_chgnet_lattice_constants_within_two_percent_of_experiment(chgnet):
    outs = relax_structures(start_structures(), chgnet, fmax=0.02, max_steps=200)
    for out in outs:
        assert out.ok and out.converged, out.failure_reason
        formula = out.structure.composition.reduced_formula
        a = cubic_constant(out.structure)
        assert abs(a / EXPERIMENT[formula] - 1) < 0.02, (formula, a)
    spacegroups = [o.spacegroup for o in outs]
    assert spacegroups == ["Fd-3m", "Fm-3m", "Pm-3m"]
    energies = [o.energy_per_atom for o in outs]
    # CHGNet (MP-compatible) energies per atom: Si -5.4, NaCl -3.7, SrTiO3 -8.4 eV/atom
    assert np.allclose(energies, [-5.4, -3.7, -8.4], atol=0.15), energies


def test_batched_and_one_by_one_evaluation_agree(chgnet):
    structs = [bulk("Si", "diamond", 5.3), perovskite(3.8)]
    batched = chgnet.evaluate(structs, batched=True)
    single = chgnet.evaluate(structs, batched=False)
    for b, s in zip(batched, single, strict=True):
        assert b.energy == pytest.approx(s.energy, abs=1e-4)
        assert np.allclose(b.forces, s.forces, atol=1e-4)
        assert np.allclose(b.stress, s.stress, atol=1e-5)


def test_non_convergence_and_time_limit_fail_the_candidate_only(chgnet):
    rattled = bulk("NaCl", "rocksalt", 5.6, cubic=True)
    rattled.rattle(0.2, seed=1)
    outs = relax_structures([rattled, bulk("Si", "diamond", 5.468)], chgnet, max_steps=2)
    assert outs[0].failure_reason.startswith("not converged in 2 steps")
    assert outs[0].structure is not None and outs[0].energy_per_atom is not None
    assert outs[1].ok
    timed = relax_structures([rattled], chgnet, max_seconds=0.0)
    assert timed[0].failure_reason.startswith("time limit")


def test_runtime_filters_fail_one_candidate_and_the_batch_goes_on(chgnet):
    """Each safety stop of the relaxation, tripped by real CHGNet dynamics under a tightened
    threshold; the untouched structure of the same batch always relaxes."""
    from dataclasses import replace

    from cspflow.schemas.prerelax import RelaxFilters

    squeezed = bulk("NaCl", "rocksalt", 4.9, cubic=True)
    squeezed.rattle(0.2, seed=2)  # forces of several eV/A at step 0
    strained = bulk("Si", "diamond", 5.20)  # expands by ~16 % in volume as it relaxes
    good = bulk("Si", "diamond", 5.468)
    cases = {
        "exploding forces": RelaxFilters(max_force=1.0),
        "exploding energy": RelaxFilters(max_energy_drop_per_atom=1e-3),
        "volume blew up": RelaxFilters(max_volume_ratio=1.05),
    }
    for reason, filters in cases.items():
        start = squeezed if reason == "exploding forces" else strained
        bad, ok = relax_structures([start, good], chgnet, filters=filters, max_steps=200)
        assert bad.failure_reason.startswith(reason), (reason, bad.failure_reason)
        assert not bad.ok and bad.structure is not None
        assert ok.ok and ok.failure_reason is None, reason
    compressed = relax_structures([bulk("Si", "diamond", 5.80)], chgnet,
                                  filters=RelaxFilters(max_volume_ratio=1.05))  # fmt: skip
    assert compressed[0].failure_reason.startswith("volume collapsed")

    class NanFirst:
        """CHGNet, except that the first structure of every call gets NaN forces."""

        def __getattr__(self, name):
            return getattr(chgnet, name)

        def evaluate(self, atoms_list, batched=None):
            evals = chgnet.evaluate(atoms_list, batched=batched)
            if len(atoms_list) == 2:
                evals[0] = replace(evals[0], forces=evals[0].forces * np.nan)
            return evals

    nan, ok = relax_structures([strained, good], NanFirst())
    assert nan.failure_reason.startswith("non-finite energy or forces at step 0")
    assert ok.ok

    class HotStart(NanFirst):
        """CHGNet, except that the first call puts every structure 8 eV/atom higher (a random
        start above zero, as close atoms give): falling to -5.4 eV/atom is a drop of 8+ eV/atom
        from the start but 5.4 from zero, not an explosion under a 6 eV/atom threshold."""

        calls = 0

        def evaluate(self, atoms_list, batched=None):
            evals = chgnet.evaluate(atoms_list, batched=batched)
            HotStart.calls += 1
            if HotStart.calls == 1:
                evals = [replace(ev, energy=ev.energy + 8.0 * len(a))
                         for ev, a in zip(evals, atoms_list, strict=True)]  # fmt: skip
            return evals

    hot = relax_structures([strained, good], HotStart(),
                           filters=RelaxFilters(max_energy_drop_per_atom=6.0))  # fmt: skip
    assert [o.failure_reason for o in hot] == [None, None]
    HotStart.calls = 0
    hole = relax_structures([strained], HotStart(),
                            filters=RelaxFilters(max_energy_drop_per_atom=5.0))  # fmt: skip
    # counted from zero (Si ends near -5.4 eV/atom), not from the start 8 eV/atom higher
    assert (
        hole[0].failure_reason.startswith("exploding energy: dropped 5.")
        and "below zero (the start was above)" in hole[0].failure_reason
    )


def test_broken_batch_completes_with_reasons(db, chgnet):
    # a Na-Cl pair and a Na atom 9 A from everything (its own images are 18 A away)
    lone = Atoms("NaClNa", positions=[[0, 0, 0], [2.8, 0, 0], [9, 9, 9]], cell=[18] * 3, pbc=True)
    squashed = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    squashed.positions[1] = squashed.positions[0] + [0.3, 0.2, 0.0]
    good = [bulk("Si", "diamond", 5.35), bulk("NaCl", "rocksalt", 5.8)]
    docs = [candidate_doc(s) for s in [lone, *good, squashed]]
    db["candidates"].insert_many([dict(d) for d in docs])
    ids = [d["candidate_id"] for d in docs]

    summary = prerelax_candidates(ids, db=db, loaded=chgnet, dedup=False)

    assert set(summary.relaxed) == {ids[1], ids[2]}
    assert summary.failed[ids[0]].startswith("isolated atom: Na2")
    assert summary.failed[ids[3]].startswith("overlapping atoms")
    by_id = {d["candidate_id"]: d for d in db["candidates"].find({}, {"_id": 0})}
    for cid in ids[1:3]:
        d = by_id[cid]
        assert d["status"] == "prerelaxed" and d["failure_reason"] is None
        mlip = d["relaxed"]["mlip"]
        assert mlip["converged"] and mlip["model_id"] == "chgnet-0.3.0"
        assert d["energy_per_atom"]["mlip"] == pytest.approx(mlip["energy_per_atom"])
        assert mlip["spacegroup_symbol"] in ("Fd-3m", "Fm-3m") and mlip["steps"] > 0
        assert mlip["spacegroup"] == {"Fd-3m": 227, "Fm-3m": 225}[mlip["spacegroup_symbol"]]
        assert mlip["committee"] is None
    for cid in (ids[0], ids[3]):
        d = by_id[cid]
        assert d["status"] == "failed" and d["failure_reason"] == summary.failed[cid]
        assert d["energy_per_atom"]["mlip"] is None
    assert set(summary.lowest) == {"Si", "NaCl"}


def test_relaxed_duplicates_are_marked_and_results_reused(db, chgnet):
    si_a = bulk("Si", "diamond", 5.25)
    si_b = bulk("Si", "diamond", 5.65)  # relaxes into the same diamond Si
    si_b.rattle(0.02, seed=3)
    docs = [candidate_doc(si_a), candidate_doc(si_b)]
    db["candidates"].insert_many([dict(d) for d in docs])
    ids = [d["candidate_id"] for d in docs]
    seen = []

    def find_duplicate(database, cid, structure):
        seen.append(cid)
        from cspflow.prerelax.relax import deduplicate_batch

        if len(seen) == 1:
            find_duplicate.first = (cid, structure)
            return None
        return deduplicate_batch([find_duplicate.first, (cid, structure)]).get(cid)

    summary = prerelax_candidates(ids, db=db, loaded=chgnet, find_duplicate=find_duplicate)
    assert len(summary.duplicates) == 1
    ((dup, orig),) = summary.duplicates.items()
    assert {dup, orig} == set(ids)
    stored = db["candidates"].find_one({"candidate_id": dup})
    assert stored["duplicate_of"] == orig
    # lowest-energy copy is looked up first and kept
    e = {c: db["candidates"].find_one({"candidate_id": c})["energy_per_atom"]["mlip"] for c in ids}
    assert e[orig] <= e[dup]

    again = prerelax_candidates(ids, db=db, loaded=chgnet, find_duplicate=find_duplicate)
    assert sorted(again.reused) == sorted(ids) and again.relaxed == []


def test_default_dedup_uses_the_index_or_batch_matcher(db, chgnet):
    docs = [candidate_doc(bulk("Si", "diamond", a)) for a in (5.3, 5.55)]
    db["candidates"].insert_many([dict(d) for d in docs])
    ids = [d["candidate_id"] for d in docs]
    summary = prerelax_candidates(ids, db=db, loaded=chgnet)
    assert len(summary.duplicates) == 1
    assert set(summary.duplicates.items()) <= {(ids[0], ids[1]), (ids[1], ids[0])}


def test_unknown_ids_and_uncovered_elements_are_user_errors(db, chgnet):
    with pytest.raises(CspflowError, match="not in the candidates collection"):
        prerelax_candidates(["nope-123"], db=db, loaded=chgnet)
    from dataclasses import replace

    si_only = replace(chgnet, elements=frozenset({14}))
    doc = candidate_doc(bulk("NaCl", "rocksalt", 5.64))
    db["candidates"].insert_one(dict(doc))
    with pytest.raises(CspflowError, match=r"does not cover Na, Cl|does not cover Cl, Na"):
        prerelax_candidates([doc["candidate_id"]], db=db, loaded=si_only)
    assert db["candidates"].find_one({"candidate_id": doc["candidate_id"]})["status"] == "generated"


def test_jobs_carry_stage_metadata_and_route_to_gpu():
    job = PrerelaxMaker(settings=PrerelaxSettings(max_steps=50)).make(
        ["a", "b"], campaign="c1", iteration=2
    )
    assert job.metadata == {"stage": "prerelax", "campaign": "c1", "iteration": 2}
    assert category_for(job.metadata["stage"]) == "gpu"
    assert job.function_args == (["a", "b"],)  # ids only, never structures in the job doc
    sel = SelectMaker().make("c1", 2)
    assert sel.metadata["stage"] == "select" and category_for("select") == "cpu"
    # two jobs never share one metadata dict
    other = PrerelaxMaker().make(["c"])
    other.metadata["x"] = 1
    assert "x" not in job.metadata


@pytest.mark.slow
def test_prerelax_and_select_jobs_run_with_jobflow_on_cpu(db, settings):
    from jobflow import Flow, run_locally

    assert settings.device == "auto"  # a CPU-only worker still runs the gpu-routed job
    structs = [bulk("Si", "diamond", 5.3), bulk("Si", "bcc", 3.2), bulk("NaCl", "rocksalt", 5.7)]
    docs = [candidate_doc(s, campaign="jf", iteration=1) for s in structs]
    db["candidates"].insert_many([dict(d) for d in docs])
    ids = [d["candidate_id"] for d in docs]
    relax_job = PrerelaxMaker(settings=PrerelaxSettings(max_steps=150)).make(
        ids, campaign="jf", iteration=1
    )
    select_job = SelectMaker(settings=SelectSettings(top_k=1, energy_window=0.5)).make(
        "jf", 1, prerelax_outputs=[relax_job.output]
    )
    responses = run_locally(Flow([relax_job, select_job]), ensure_success=True)
    summary = responses[relax_job.uuid][1].output
    assert summary["n_candidates"] == 3 and summary["device"] == "cpu"
    selection = responses[select_job.uuid][1].output
    si_diamond = ids[0]
    assert selection["by_formula"]["Si"] == [si_diamond]  # diamond is below bcc Si
    assert selection["by_formula"]["NaCl"] == [ids[2]]
    statuses = {d["candidate_id"]: d["status"] for d in db["candidates"].find()}
    assert statuses[si_diamond] == "selected" and statuses[ids[1]] == "prerelaxed"
    # selecting again gives the same answer (idempotent)
    again = select_candidates("jf", 1, db=db, top_k=1, energy_window=0.5)
    assert sorted(again.selected) == sorted(selection["selected"])


def test_relaxed_copies_of_one_minimum_are_listed_once_in_results_top(db, chgnet):
    """DyCu starts that CHGNet relaxes into the CsCl type (strained triclinic cells, a rotated
    one, another cell choice, a supercell) and a WC-type start: `results top` lists two minima,
    and selection and the mutation population see each once. The relaxed CsCl copies differ
    by up to 1 meV/atom and spglib puts them in several space groups (as in a real campaign,
    where three were listed as ranks 1-3)."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.core.operations import SymmOp

    from cspflow.dedup.fingerprint import fingerprint
    from cspflow.dedup.match import structures_match
    from cspflow.generate.batch import load_parents
    from cspflow.store.reports import top_structures

    rng = np.random.default_rng(1)
    starts = []
    for _ in range(6):
        lattice = Lattice.from_parameters(*(3.2 + 0.6 * rng.random(3)),
                                          *(90 + 12 * (rng.random(3) - 0.5)))  # fmt: skip
        starts.append(Structure(lattice, ["Dy", "Cu"],
                                [[0, 0, 0], 0.5 + 0.12 * (rng.random(3) - 0.5)]))  # fmt: skip
    rotated = starts[0].copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 41.0))
    m = starts[1].lattice.matrix
    other_cell = Structure(Lattice([m[0] + m[2], m[1], m[2]]), ["Dy", "Cu"],
                           [[0, 0, 0], starts[1][1].frac_coords - [0, 0, starts[1][1].frac_coords[0]]])  # fmt: skip
    supercell = starts[2].copy()
    supercell.make_supercell([1, 2, 1])
    starts += [rotated, other_cell, supercell]
    wc = Structure(Lattice.hexagonal(3.9, 3.6), ["Dy", "Cu"], [[0, 0, 0], [1 / 3, 2 / 3, 0.5]])
    docs = [candidate_doc(s, campaign="dycu") for s in [*starts, wc]]
    db["candidates"].insert_many([dict(d) for d in docs])
    db["campaigns"].insert_one({"name": "dycu", "chemsys": "Cu-Dy"})
    ids = [d["candidate_id"] for d in docs]
    cscl_ids, wc_id = ids[:-1], ids[-1]

    # FIRE with ASE's cell scaling (the defaults before 2026-12-07, and of the campaign that
    # listed three copies): its copies end far enough apart to land in different space groups
    summary = prerelax_candidates(ids, db=db, loaded=chgnet, optimizer="FIRE", cell_factor=None)
    assert sorted(summary.relaxed) == sorted(ids), summary.failed
    relaxed = {d["candidate_id"]: d for d in db.candidates.find({"candidate_id": {"$in": ids}})}
    final = {c: Structure.from_dict(relaxed[c]["relaxed"]["mlip"]["structure"]) for c in ids}
    # CHGNet relaxed every start into one CsCl-type minimum (a user's StructureMatcher agrees),
    # and the copies drifted apart enough that the fingerprint buckets alone would split them
    for cid in cscl_ids:
        assert structures_match(final[cscl_ids[0]], final[cid]), cid
    assert not structures_match(final[cscl_ids[0]], final[wc_id])
    assert len({fingerprint(final[c]).spacegroup for c in cscl_ids}) >= 2

    rows = top_structures(db, "dycu", n=10)
    assert [r["candidate_id"] for r in rows][1:] == [wc_id], [
        (r["candidate_id"], r["spacegroup"]) for r in rows
    ]
    keep = rows[0]["candidate_id"]
    # the kept copy is the lowest-energy one; every other copy points at it
    energies = {cid: relaxed[cid]["energy_per_atom"]["mlip"] for cid in cscl_ids}
    assert energies[keep] == min(energies.values())
    assert {relaxed[c].get("duplicate_of") for c in cscl_ids if c != keep} == {keep}
    assert summary.duplicates == {c: keep for c in cscl_ids if c != keep}

    chosen = select_candidates("dycu", 0, top_k=5, energy_window=1.0, db=db)
    assert sorted(chosen.selected) == sorted([keep, wc_id])
    assert [p.candidate_id for p in load_parents(db, "DyCu")] == [keep, wc_id]
