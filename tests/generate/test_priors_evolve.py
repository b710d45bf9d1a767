"""Space-group and Wyckoff priors of random_symmetric; the evolutionary operators, niching and
the adapted shares of sources and operators."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cspflow.dedup.fingerprint import fingerprint, fingerprint_distance
from cspflow.errors import CspflowError, SpecError
from cspflow.generate.composition import parse_target
from cspflow.generate.constraints import violations
from cspflow.generate.evolve import (
    adapt_weights,
    niche,
    operator_stats,
    soft_modes,
    softmode,
    supercell,
)
from cspflow.generate.priors import (
    aflow_counts,
    choose_wyckoff,
    spacegroup_probabilities,
    wyckoff_combinations,
)
from cspflow.generate.sources import (
    Mutation,
    Parent,
    RandomSymmetric,
    SourceContext,
    compatible_space_groups,
)
from cspflow.schemas.campaign import parse_spec


@pytest.mark.parametrize(("num_ions", "group"), [((2, 4), 136), ((2, 2), 186)])
def test_aflow_prior_raises_the_draw_of_rutile_and_wurtzite_groups(num_ions, group):
    groups = compatible_space_groups(num_ions)
    k = groups.index(group)
    uniform = spacegroup_probabilities(groups, 2, "uniform")
    aflow = spacegroup_probabilities(groups, 2, "aflow", mix=0.2)
    # the expected factor from the counts: binary prototypes + 1/4 of all + 1/4, mixed 80/20
    c = aflow_counts()
    w = np.array([c[2][g] + 0.25 * c[0][g] + 0.25 for g in groups])
    expected = 0.8 * w[k] / w.sum() + 0.2 / len(groups)
    assert aflow[k] == pytest.approx(expected)
    assert aflow[k] / uniform[k] > 2.0
    # every compatible group keeps at least its share of the uniform part
    assert aflow.min() >= 0.2 / len(groups) - 1e-12 and aflow.sum() == pytest.approx(1.0)
    # a seeded draw follows it: 20,000 draws, the frequency within 5 sigma of the expectation
    rng = np.random.default_rng(0)
    n = 20_000
    hits = int(np.sum(rng.choice(len(groups), size=n, p=aflow) == k))
    sigma = np.sqrt(n * expected * (1 - expected))
    assert abs(hits - n * expected) < 5 * sigma
    assert hits > 1.5 * n * uniform[k] + 5 * np.sqrt(n * uniform[k])  # rises, not noise


def test_prior_is_recorded_with_each_candidate_and_steers_the_draw():
    target = parse_target("TiO2", 6)
    source = RandomSymmetric(spacegroup_prior={136: 1.0}, prior_mix=0.0)
    made = [g for g in itertools.islice(source.attempts(target, 3, SourceContext()), 12) if g]
    two_fu = [g for g in made if g.params["formula_units"] == 2]
    assert two_fu, [g.params for g in made]
    for g in two_fu:  # 136 is the only group with weight: every 2-fu cell is drawn in it
        assert g.params["spacegroup"] == 136
        assert g.params["spacegroup_prior"] == "custom"
        assert g.params["spacegroup_probability"] == 1.0
    aflow = RandomSymmetric(spacegroup_prior="aflow")
    g = next(x for x in aflow.attempts(target, 0, SourceContext()) if x)
    assert g.params["spacegroup_prior"] == "aflow" and g.params["prior_mix"] == 0.2
    groups = compatible_space_groups(tuple(target.num_ions(g.params["formula_units"])))
    p = spacegroup_probabilities(groups, 2, "aflow", 0.2)[groups.index(g.params["spacegroup"])]
    assert g.params["spacegroup_probability"] == pytest.approx(p, abs=1e-6)


def test_formula_unit_shares_steer_the_cell_size():
    target = parse_target("NaCl", 8)  # 1-4 formula units
    source = RandomSymmetric(fu_weights={"3": 1.0})
    made = [g for g in itertools.islice(source.attempts(target, 0, SourceContext()), 8) if g]
    assert made and {g.params["formula_units"] for g in made} == {3}


def test_uniform_prior_draws_as_before():
    # the uniform draw is the earlier releases' rng.choice(groups): same seed, same group
    target = parse_target("SrTiO3", 10)
    seed = 12345
    rng = np.random.default_rng(seed)
    fu = int(rng.choice(target.fu_counts))
    expected = int(rng.choice(compatible_space_groups(tuple(target.num_ions(fu)))))
    g = RandomSymmetric().make(target, seed, SourceContext())
    assert g is not None and g.params["spacegroup"] == expected


def test_fewest_sites_prefers_parsimonious_wyckoff_assignments():
    # corundum's conventional cell (R-3c, 12 Al + 18 O): 2 of 6 assignments use two orbits
    # (Al 12c + O 18e, corundum's own), 4 use three; weights e^0 : e^-1 give the two-orbit ones
    # 2 / (2 + 4/e) = 0.576 of the draws against 1/3 uniformly
    combos = wyckoff_combinations(167, (12, 18))
    orbits = sorted(sum(len(s) for s in c) for c in combos)
    assert orbits == [2, 2, 3, 3, 3, 3]
    rng = np.random.default_rng(0)
    picks = [choose_wyckoff(167, [12, 18], rng) for _ in range(2000)]
    share = sum(sum(len(s) for s in p) == 2 for p in picks) / len(picks)
    assert share == pytest.approx(2 / (2 + 4 / np.e), abs=0.04)
    assert (["12c"], ["18e"]) in [tuple(p) for p in picks]
    target = parse_target("TiO2", 6)
    source = RandomSymmetric(spacegroup_prior={136: 1.0}, prior_mix=0.0, wyckoff="fewest_sites")
    made = [g for g in itertools.islice(source.attempts(target, 5, SourceContext()), 10) if g]
    sited = [g for g in made if "wyckoff" in g.params]
    assert sited and all(g.params["wyckoff_choice"] == "fewest_sites" for g in made)


def test_bad_prior_values_are_one_line_errors():
    for bad in ({"spacegroup_prior": "icsd"}, {"spacegroup_prior": {"999": 1}},
                {"prior_mix": 1.5}, {"wyckoff": "most"}, {"niche_distance": -1}):  # fmt: skip
        with pytest.raises(SpecError) as exc:
            parse_spec({"name": "x", "compositions": ["TiO2"], "max_atoms": 6, "generate": bad},
                       source="s.yaml")  # fmt: skip
        lines = exc.value.lines()
        assert len(lines) == 1 and lines[0].startswith("s.yaml: generate."), lines
    with pytest.raises(CspflowError, match="unknown space-group prior 'icsd'"):
        RandomSymmetric(spacegroup_prior="icsd")
    with pytest.raises(CspflowError, match="unknown mutation operator"):
        Mutation(operators={"twist": 1.0})


def _rutile() -> Structure:
    return Structure.from_spacegroup(
        136, Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]
    )


@pytest.mark.parametrize("operator", ["strain", "permutation", "rattle", "softmode", "heredity"])
def test_operators_give_valid_primitive_children_with_parents(operator):
    target = parse_target("TiO2", 6)
    a = _rutile()
    b = a.copy()
    b.perturb(0.15, min_distance=0.05)
    parents = [Parent("a", a, -9.0), Parent("b", b, -8.9)]
    context = SourceContext(parents=parents)
    made = [
        g
        for g in itertools.islice(
            Mutation(operators={operator: 1.0}).attempts(target, 2, context), 30
        )
        if g is not None
    ]
    assert len(made) >= 5, context.rejected
    for g in made:
        s = g.structure
        assert g.source == "mutation" and g.params["operator"] == operator
        assert s.composition.reduced_formula == "TiO2" and len(s) <= 6
        assert len(s) == len(s.get_primitive_structure())  # stored primitive
        assert violations(s) == []
        assert set(g.parent_ids) <= {"a", "b"}
        assert len(g.parent_ids) == (2 if operator == "heredity" else 1)


def test_supercell_children_are_multiples_of_the_parent_cell_with_broken_translation():
    cubic = Structure(Lattice.cubic(4.15), ["Sr", "Zr", "O", "O", "O"],
                      [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])  # fmt: skip
    target = parse_target("SrZrO3", 20)
    context = SourceContext(parents=[Parent("cubic", cubic, -8.6)])
    made = [g for g in itertools.islice(
        Mutation(operators={"supercell": 1.0}).attempts(target, 5, context), 30) if g is not None]  # fmt: skip
    assert len(made) >= 20, context.rejected
    sizes = {len(g.structure) for g in made}
    # 2, 3 or 4 perovskite units, stored primitive: the displacement broke the parent's
    # translations, so none reduces back to the 5-atom cell; the 20-atom cells of the tilted
    # orthorhombic perovskites are among them
    assert sizes <= {10, 15, 20} and 20 in sizes
    for g in made:
        assert g.params["operator"] == "supercell" and g.parent_ids == ["cubic"]
        assert g.structure.composition.reduced_formula == "SrZrO3"
        assert violations(g.structure) == []
    # no multiple of the parent fits in max_atoms: the operator makes nothing
    assert supercell(cubic, np.random.default_rng(0), max_atoms=9) is None


def test_softmode_moves_along_the_softest_spring_mode():
    s = _rutile()
    w, modes = soft_modes(s, 3)
    assert modes.shape == (3, 6, 3) and np.all(np.diff(w) >= -1e-12) and w[0] > 1e-8
    # no rigid translation among the modes: the atoms do not all move alike
    assert all(np.linalg.norm(m - m.mean(axis=0)) > 0.1 for m in modes)
    child = softmode(s, np.random.default_rng(1), amplitude=0.5)
    disp = child.cart_coords - s.cart_coords
    disp -= np.round(disp @ np.linalg.inv(s.lattice.matrix)) @ s.lattice.matrix
    assert 0.2 < np.linalg.norm(disp, axis=1).max() <= 0.5 + 1e-6


def test_niching_keeps_near_duplicates_out_of_the_population():
    best = _rutile()
    near = best.copy()
    near.perturb(0.03)  # a slightly displaced copy of the best
    other = Structure.from_spacegroup(
        58, Lattice.orthorhombic(4.5, 5.5, 2.9), ["Ti", "O"], [[0, 0, 0], [0.25, 0.35, 0]]
    )
    members = [best, near, other]
    vectors = [fingerprint(s).vector for s in members]
    assert (
        fingerprint_distance(vectors[0], vectors[1])
        < 0.3
        < fingerprint_distance(vectors[0], vectors[2])
    )
    assert niche(members, vectors, 0.3) == [0, 2]
    assert niche(members, vectors, 0.0) == [0, 1, 2]


def test_operator_stats_and_adapted_shares():
    docs = [
        {"candidate_id": "h1", "source": "mutation", "params": {"operator": "heredity"},
         "status": "prerelaxed", "energy_per_atom": {"mlip": -9.1}},
        {"candidate_id": "h2", "source": "mutation", "params": {"operator": "heredity"},
         "status": "prerelaxed", "energy_per_atom": {"mlip": -9.0}},
        {"candidate_id": "s1", "source": "mutation", "params": {"operator": "strain"},
         "status": "failed", "energy_per_atom": {"mlip": None}},
        *({"candidate_id": f"r{i}", "source": "random_symmetric", "params": {},
           "status": "prerelaxed", "duplicate_of": "h1" if i == 0 else None,
           "energy_per_atom": {"mlip": -8.0 - i / 100}} for i in range(8)),
    ]  # fmt: skip
    stats = operator_stats(docs, population=["h1", "h2", "r7"], top=["h1"])
    assert stats["mutation:heredity"] == {"generated": 2, "relaxed": 2, "duplicates": 0,
                                          "failed": 0, "in_population": 2, "in_top": 1,
                                          "best_energy_per_atom": -9.1}  # fmt: skip
    assert stats["mutation:strain"]["failed"] == 1 and stats["mutation:strain"]["relaxed"] == 0
    assert (
        stats["random_symmetric"]["relaxed"] == 8 and stats["random_symmetric"]["duplicates"] == 1
    )
    sources = adapt_weights({"random_symmetric": 0.5, "mutation": 0.5}, stats)
    # mutation: 2 of 3 generated in the population (3/5); random: 1 of 8 (2/10)
    assert sources["mutation"] == pytest.approx(0.6 / 0.8, abs=1e-3)
    ops = adapt_weights({"heredity": 0.5, "strain": 0.5}, stats, min_share=0.0)
    assert ops["heredity"] == pytest.approx(0.75 / (0.75 + 1 / 3), abs=1e-3)
    floored = adapt_weights({"heredity": 0.5, "strain": 0.5}, stats, min_share=0.45)
    assert floored["strain"] > ops["strain"] + 0.05  # the floor keeps a poor operator alive


def test_rediscovery_counts_how_often_the_lowest_minimum_is_found():
    from cspflow.campaign.evolution import rediscovery

    minima = [{"candidate_id": "a", "energy_per_atom": -5.0, "hits": 6},
              {"candidate_id": "b", "energy_per_atom": -4.9, "hits": 1},
              {"candidate_id": "c", "energy_per_atom": -4.8, "hits": 3}]  # fmt: skip
    r = rediscovery(minima)
    # Chao1 (bias-corrected): 1 * 0 / (2 * 1) = 0 unseen, plus 1/10; (3/4) ** 0.1 = 0.9716
    assert r == {"relaxed": 10, "minima": 3, "best": "a", "best_hits": 6, "singletons": 1,
                 "doubletons": 0, "new_minimum_chance": 0.1, "lower_minimum_chance": 0.025,
                 "unseen_minima": 0.1, "ground_state_confidence": 0.972}  # fmt: skip
    assert rediscovery([])["new_minimum_chance"] is None


def test_population_read_from_the_database_is_niched(db):
    from cspflow.generate.batch import load_parents
    from cspflow.store import candidates

    best = _rutile()
    near = best.copy()
    near.perturb(0.03)
    other = Structure.from_spacegroup(
        58, Lattice.orthorhombic(4.5, 5.5, 2.9), ["Ti", "O"], [[0, 0, 0], [0.25, 0.35, 0]]
    )
    for cid, s, e in (("best", best, -9.0), ("near", near, -8.99), ("other", other, -8.5)):
        candidates.insert_raw(db, {
            "candidate_id": cid, "formula": "TiO2", "chemsys": "O-Ti", "fingerprint_hash": cid,
            "status": "prerelaxed", "duplicate_of": None,
            "energy_per_atom": {"mlip": e}, "structure": s.as_dict(),
            "relaxed": {"mlip": {"structure": s.as_dict()}},
            "dedup_forms": {"mlip": {"fingerprint": fingerprint(s).vector.tolist()}},
        })  # fmt: skip
    assert [p.candidate_id for p in load_parents(db, "TiO2", 20)] == ["best", "near", "other"]
    niched = load_parents(db, "TiO2", 20, niche_distance=0.3)
    assert [p.candidate_id for p in niched] == ["best", "other"]
    assert niched[0].energy_per_atom == -9.0
