"""Generation: N requested -> N unique valid structures; sources, seeds, time limit."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from cspflow.dedup.index import MemoryIndex
from cspflow.dedup.match import MATCHER_KWARGS
from cspflow.generate.batch import generate_batch, parse_sources
from cspflow.generate.composition import parse_target
from cspflow.generate.constraints import Constraints, violations
from cspflow.generate.sources import (
    External,
    Mutation,
    Parent,
    Prototype,
    SourceContext,
    builtin_prototypes,
    heredity,
)
from cspflow.generate.timelimit import GenerationTimeout, call_with_time_limit


@pytest.mark.parametrize(
    ("composition", "max_atoms", "n"), [("MgAl2O4", 28, 14), ("SrTiO3", 20, 14), ("Si", 16, 14)]
)
def test_n_requested_gives_n_unique_valid_structures(composition, max_atoms, n):
    target = parse_target(composition, max_atoms)
    result = generate_batch(target, n, MemoryIndex(), seed=11)
    structures = [gen.structure for _, gen, _ in result.new]
    assert len(structures) == n and result.summary.n_new == n and result.summary.complete
    for s in structures:
        assert s.composition.reduced_formula == target.formula
        assert len(s) <= max_atoms
        assert violations(s, Constraints()) == []
        angles = s.lattice.angles
        assert min(angles) >= 20 and max(angles) <= 160
    # Unique by the same criterion a user would apply: no pair matches.
    matcher = StructureMatcher(**MATCHER_KWARGS)
    for a, b in itertools.combinations(structures, 2):
        assert not matcher.fit(a, b)
    spacegroups = {fp.spacegroup for _, _, fp in result.new}
    fus = {len(s) // target.atoms_per_fu for s in structures}
    assert len(spacegroups) >= 6, spacegroups
    assert len(fus) >= 3, fus
    assert set(result.summary.by_source) == {"random_symmetric", "prototype"}


def test_same_seed_same_structures_other_seed_others():
    target = parse_target("SrTiO3", 15)

    def run(seed):
        r = generate_batch(target, 5, MemoryIndex(), sources={"random_symmetric": 1}, seed=seed)
        return [(g.seed, g.params, g.structure) for _, g, _ in r.new]

    a, b, c = run(3), run(3), run(4)
    for (sa, pa, xa), (sb, pb, xb) in zip(a, b, strict=True):
        assert sa == sb and pa == pb
        assert np.allclose(xa.lattice.matrix, xb.lattice.matrix)
        assert np.allclose(xa.frac_coords, xb.frac_coords)
    assert [x[0] for x in a] != [x[0] for x in c]


def test_recorded_seed_reproduces_the_structure():
    from cspflow.generate.sources import RandomSymmetric

    target = parse_target("MgAl2O4", 14)
    r = generate_batch(target, 3, MemoryIndex(), sources={"random_symmetric": 1}, seed=5)
    for _, gen, _ in r.new:
        again = RandomSymmetric().make(target, gen.seed, SourceContext())
        assert again.params == gen.params
        assert np.allclose(again.structure.frac_coords, gen.structure.frac_coords)


def test_prototype_source_substitutes_known_structure_types():
    matcher = StructureMatcher(**MATCHER_KWARGS)
    lib = builtin_prototypes()
    assert {"rocksalt", "cscl", "zincblende", "wurtzite", "fluorite", "rutile", "anatase",
            "perovskite", "spinel", "corundum", "nias", "cdi2"} <= set(lib)  # fmt: skip
    for comp, max_atoms, proto in [("MgAl2O4", 28, "spinel"), ("SrTiO3", 20, "perovskite"),
                                   ("Si", 16, "diamond"), ("Li2O", 12, "fluorite")]:  # fmt: skip
        target = parse_target(comp, max_atoms)
        context = SourceContext()
        gens = [g for g in Prototype().attempts(target, 0, context) if g is not None]
        names = {g.params["prototype"] for g in gens}
        assert proto in names, (comp, names)
        for g in gens:
            assert g.structure.composition.reduced_formula == target.formula
            assert violations(g.structure) == []
            if g.params["prototype"] == proto:
                assert matcher.fit(g.structure, lib[proto].copy()) or comp != "Si"
    # A user's own prototype file joins the library.
    ext = Prototype(builtin=False, files=[])
    assert ext.library() == {}


def test_user_prototype_file(tmp_path):
    s = Structure(Lattice.cubic(4.0), ["K", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.to(filename=str(tmp_path / "my_ab.cif"))
    target = parse_target("NaCl", 8)
    gens = list(Prototype(builtin=False, files=[str(tmp_path / "my_ab.cif")]).attempts(
        target, 0, SourceContext()))  # fmt: skip
    ok = [g for g in gens if g is not None]
    # K->Na/Br->Cl and K->Cl/Br->Na give the same CsCl-type crystal: only one is kept
    assert len(gens) == 2 and len(ok) == 1 and ok[0].params["prototype"] == "my_ab"


def _parents():
    lib = builtin_prototypes()
    target = parse_target("SrTiO3", 20)
    gens = [g for g in Prototype().attempts(target, 0, SourceContext()) if g is not None]
    return target, [Parent(f"p{i}", g.structure, -1.0 - i / 10) for i, g in enumerate(gens)], lib


@pytest.mark.parametrize("operator", ["strain", "permutation", "rattle", "heredity", "softmode"])
def test_mutation_operators_keep_composition_and_record_parents(operator):
    target, parents, _ = _parents()
    # heredity needs two parents with equal atom counts: add a strained twin of the first
    twin = parents[0].structure.copy()
    twin.apply_strain(0.05)
    parents.append(Parent("twin", twin, 0.0))
    context = SourceContext(parents=parents)
    source = Mutation(operators={operator: 1.0})
    made = [g for g in itertools.islice(source.attempts(target, 1, context), 40) if g is not None]
    assert made, context.rejected
    for g in made:
        assert g.params["operator"] == operator
        assert g.structure.composition.reduced_formula == "SrTiO3"
        assert g.parent_ids and set(g.parent_ids) <= {p.candidate_id for p in parents}
        assert len(g.parent_ids) == (2 if operator == "heredity" else 1)
        assert violations(g.structure) == []


def test_operators_are_used_in_their_shares_when_one_is_often_rejected(monkeypatch):
    import cspflow.generate.sources as sources

    target, parents, _ = _parents()
    real = sources.permute

    def flaky(structure, rng):  # three in four permutation children are rejected
        return real(structure, rng) if rng.random() < 0.25 else None

    monkeypatch.setattr(sources, "permute", flaky)
    source = Mutation(operators={"strain": 0.5, "permutation": 0.5})
    attempts = source.attempts(target, 3, SourceContext(parents=parents))
    made = [g for g in itertools.islice(attempts, 300) if g is not None]
    share = sum(g.params["operator"] == "permutation" for g in made) / len(made)
    # drawing a new operator after each rejection would give permutation about 0.2
    assert len(made) > 250 and 0.35 < share < 0.6


def test_heredity_mixes_both_parents():
    a = Structure(Lattice.cubic(4.0), ["Na", "Cl"] * 4,
                  [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0.5],
                   [0.5, 0.5, 0], [0, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0.5]])  # fmt: skip
    b = a.copy()
    b.translate_sites(range(len(b)), [0.1, 0.1, 0.1])
    child = heredity(a, b, parse_target("NaCl", 8), np.random.default_rng(0))
    assert child is not None and child.composition == a.composition


def test_mutation_without_parents_hands_quota_to_random():
    target = parse_target("Si", 8)
    r = generate_batch(target, 3, MemoryIndex(), sources={"random_symmetric": 0.5,
                       "mutation": 0.5}, seed=2)  # fmt: skip
    assert r.summary.n_new == 3 and r.summary.by_source == {"random_symmetric": 3}


def test_external_source_reads_cif_poscar_extxyz_and_filters(tmp_path):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    lib = builtin_prototypes()
    sto = lib["perovskite"]
    sto.to(filename=str(tmp_path / "a.cif"))
    s2 = sto.copy()
    s2.make_supercell([1, 1, 2])
    s2.to(filename=str(tmp_path / "POSCAR"), fmt="poscar")
    frames = [AseAtomsAdaptor.get_atoms(lib["ilmenite"].copy()),
              AseAtomsAdaptor.get_atoms(lib["rocksalt"])]  # fmt: skip
    frames[0].set_chemical_symbols(
        [{"Fe": "Sr", "Ti": "Ti", "O": "O"}[x] for x in frames[0].get_chemical_symbols()]
    )
    write(tmp_path / "gen.extxyz", frames)
    src = External(files=[str(tmp_path)])
    context = SourceContext()
    gens = list(src.attempts(parse_target("SrTiO3", 20), 0, context))
    assert len(gens) == 4
    assert context.rejected.get("wrong composition") == 1  # the rocksalt frame
    # a.cif and the POSCAR supercell are the same structure: the batch keeps one of them
    r = generate_batch(parse_target("SrTiO3", 20), 4, MemoryIndex(),
                       sources={"external": 1}, source_options={"external": {"files": [str(tmp_path)]}})  # fmt: skip
    assert r.summary.n_new == 2 and r.summary.n_duplicates == 1 and not r.summary.complete


def test_parse_sources_weights_and_errors():
    from cspflow.errors import CspflowError

    assert parse_sources("random_symmetric:3,prototype:1") == {
        "random_symmetric": 0.75,
        "prototype": 0.25,
    }
    with pytest.raises(CspflowError, match="unknown source 'magic'"):
        parse_sources("magic:1")
    with pytest.raises(CspflowError, match="not a number"):
        parse_sources("prototype:x")


def _spin():
    while True:
        pass


def test_time_limit_interrupts_python_loops_in_main_thread():
    t0 = time.monotonic()
    with pytest.raises(GenerationTimeout):
        call_with_time_limit(_spin, (), 0.3)
    assert time.monotonic() - t0 < 2.0
    assert call_with_time_limit(sum, ([1, 2],), 1.0) == 3


def test_time_limit_kills_child_process_outside_main_thread():
    out = {}

    def worker():
        t0 = time.monotonic()
        try:
            call_with_time_limit(time.sleep, (60,), 0.5)
        except GenerationTimeout:
            out["elapsed"] = time.monotonic() - t0
        out["value"] = call_with_time_limit(sum, ([1, 2],), 30.0)

    th = threading.Thread(target=worker)
    th.start()
    th.join(120)
    assert out["value"] == 3
    # includes the child's start-up (imports) once; the sleep itself is cut at 0.5 s
    assert out["elapsed"] < 60


def test_pyxtal_attempts_over_the_time_limit_are_counted_and_skipped():
    target = parse_target("MgAl2O4", 28)
    context = SourceContext(time_limit=1e-4)
    t0 = time.monotonic()
    r = generate_batch(target, 5, MemoryIndex(), sources={"random_symmetric": 1},
                       context=context, max_attempts=8)  # fmt: skip
    # a one-atom-per-site cell can finish inside the first 10 ms alarm period; most cannot
    assert r.summary.rejected.get("time limit", 0) >= 5
    assert r.summary.n_new <= 3 and time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    ("species", "primitive", "spacegroup"),
    [(["Al", "O"], [4, 6], 167),  # corundum R-3c: 10 atoms primitive, 30 conventional
     (["Mg", "Al", "O"], [2, 4, 8], 227),  # spinel Fd-3m: 14 / 56
     (["Zr", "Si", "O"], [2, 2, 8], 141)],  # zircon I4_1/amd: 12 / 24
)  # fmt: skip
def test_centred_lattice_targets_are_reachable_at_primitive_size(species, primitive, spacegroup):
    from cspflow.dedup.fingerprint import space_group
    from cspflow.generate.sources import (
        centring_multiplier,
        compatible_space_groups,
        primitive_cell,
        random_symmetric_structure,
    )

    assert spacegroup in compatible_space_groups(tuple(primitive))
    m = centring_multiplier(spacegroup)
    assert m > 1
    for seed in range(10):
        data = random_symmetric_structure(species, [m * n for n in primitive], spacegroup, seed)
        if data is not None:
            break
    assert data is not None
    conventional = Structure.from_dict(data)
    cell = primitive_cell(conventional)
    assert len(conventional) == m * sum(primitive) and len(cell) == sum(primitive)
    assert space_group(cell) == spacegroup


def test_generation_counts_and_stores_primitive_cells():
    """At max_atoms = corundum's primitive size, centred groups are drawn and stored reduced."""
    target = parse_target("Al2O3", 10)
    result = generate_batch(target, 40, MemoryIndex(), sources={"random_symmetric": 1}, seed=0)
    assert result.summary.n_new == 40
    ratios = set()
    for _, gen, _ in result.new:
        s = gen.structure
        # the drawn formula units (a random cell may still reduce further)
        assert len(s) <= 10 and len(s) % 5 == 0 and len(s) <= gen.params["formula_units"] * 5
        assert len(s.get_primitive_structure()) == len(s)
        ratios.add(gen.params["conventional_atoms"] // len(s))
    assert {2, 4} <= ratios, ratios  # body-/face-centred groups were generated and reduced
    # Sources agree: a prototype stored as a conventional cell enters as its primitive cell.
    spinel = Prototype().attempts(parse_target("MgAl2O4", 14), 0, SourceContext())
    names = {g.params["prototype"]: len(g.structure) for g in spinel if g is not None}
    assert names.get("spinel") == 14, names
