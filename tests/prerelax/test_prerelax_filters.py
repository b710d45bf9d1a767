"""Pure functions of the prerelax stage that need no model: geometry filters, selection, dedup."""

from __future__ import annotations

from ase import Atoms
from ase.build import bulk
from pymatgen.core.operations import SymmOp
from pymatgen.io.ase import AseAtomsAdaptor

from cspflow.prerelax.relax import check_geometry, deduplicate_batch
from cspflow.prerelax.select import select_for_dft
from cspflow.schemas.prerelax import RelaxFilters


def test_good_crystals_pass_the_geometry_filter():
    assert check_geometry(bulk("Si", "diamond", 5.43)) is None
    assert check_geometry(bulk("NaCl", "rocksalt", 5.64)) is None


def test_isolated_atom_is_named():
    lone = Atoms("Si", positions=[[0, 0, 0]], cell=[12, 12, 12], pbc=True)
    reason = check_geometry(lone)
    assert reason is not None and reason.startswith("isolated atom: Si0")
    # a shorter isolation cutoff accepts the same cell
    assert check_geometry(lone, RelaxFilters(isolated_distance=13.0)) is None


def test_overlapping_atoms_are_named():
    atoms = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    atoms.positions[1] = atoms.positions[0] + [0.4, 0, 0]
    reason = check_geometry(atoms)
    assert reason is not None and reason.startswith("overlapping atoms")
    assert "0.40 A" in reason


def test_selection_takes_top_k_within_window_per_formula():
    recs = [
        {"candidate_id": "a", "formula": "Si", "energy_per_atom": -5.40},
        {"candidate_id": "b", "formula": "Si", "energy_per_atom": -5.38},
        {"candidate_id": "c", "formula": "Si", "energy_per_atom": -5.30},  # outside 0.05
        {"candidate_id": "d", "formula": "Si", "energy_per_atom": -5.39},
        {"candidate_id": "e", "formula": "NaCl", "energy_per_atom": -3.6},
        {"candidate_id": "f", "formula": "NaCl", "energy_per_atom": None},
    ]
    sel = select_for_dft(recs, top_k=2, energy_window=0.05)
    assert sel.by_formula == {"NaCl": ["e"], "Si": ["a", "d"]}
    assert set(sel.selected) == {"a", "d", "e"}
    assert all(r == "lowest" for r in sel.reasons.values())


def test_selection_adds_most_uncertain_when_committee_exists():
    recs = [
        {
            "candidate_id": "a",
            "formula": "Si",
            "energy_per_atom": -5.40,
            "committee": {"force_std": 0.01},
        },
        {
            "candidate_id": "b",
            "formula": "Si",
            "energy_per_atom": -5.00,
            "committee": {"force_std": 0.90},
        },
        {
            "candidate_id": "c",
            "formula": "Si",
            "energy_per_atom": -5.10,
            "committee": {"force_std": 0.20},
        },
    ]
    sel = select_for_dft(recs, top_k=1, energy_window=0.05, n_uncertain=1)
    assert sel.selected == ["a", "b"]
    assert sel.reasons == {"a": "lowest", "b": "uncertain"}
    # without a committee nothing is added
    plain = [{k: v for k, v in r.items() if k != "committee"} for r in recs]
    assert select_for_dft(plain, top_k=1, n_uncertain=1).selected == ["a"]


def test_batch_dedup_keeps_first_of_each_structure():
    si = AseAtomsAdaptor.get_structure(bulk("Si", "diamond", 5.43))
    si_big = si.copy()
    si_big.scale_lattice(si.volume * 1.05)
    si_rot = si.copy()
    si_rot.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 30))
    nacl = AseAtomsAdaptor.get_structure(bulk("NaCl", "rocksalt", 5.64))
    si_bcc = AseAtomsAdaptor.get_structure(bulk("Si", "bcc", 3.1))
    dups = deduplicate_batch([("a", si), ("b", nacl), ("c", si_big), ("d", si_rot), ("e", si_bcc)])
    assert dups == {"c": "a", "d": "a"}
