"""The ``pyxtal_mp`` space-group prior, the (space group, formula units) bandit and the
ground-state stopping signal."""

from __future__ import annotations

import itertools
from importlib import resources

import numpy as np
import pytest

from cspflow.campaign.evolution import ground_state, rediscovery
from cspflow.campaign.policy import stop_reason
from cspflow.errors import SpecError
from cspflow.generate.allocation import (
    arm_outcomes,
    arm_prior,
    bandit_shares,
    thompson_shares,
    top_arms,
)
from cspflow.generate.composition import parse_target
from cspflow.generate.priors import MP_SPREAD, mp_counts, spacegroup_probabilities
from cspflow.generate.sources import (
    RandomSymmetric,
    SourceContext,
    centring_multiplier,
    compatible_space_groups,
)
from cspflow.schemas.campaign import StopSpec, parse_spec


def _table() -> list[tuple[int, int, int]]:
    text = (resources.files("cspflow") / "data" / "spacegroup_frequency.csv").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "spacegroup,conventional_atoms,count"
    return [tuple(int(x) for x in ln.split(",")) for ln in lines[1:]]  # type: ignore[misc]


def test_pyxtal_mp_table_is_parsed_and_normalised():
    rows = _table()
    by_size, by_group, total = mp_counts()
    # every row read, none twice: the header's totals
    assert len(rows) == len(by_size) == 4841
    assert total == sum(c for _, _, c in rows) == 88678
    assert len(by_group) == 225 and not {1, 168, 184, 207, 222} & set(by_group)
    assert by_group[136] == sum(c for g, _, c in rows if g == 136)
    # TiO2 at 6 atoms (2 fu): w(g) = c(g, m_g * 6) + K c(g) / C + 1/4, renormalised, 80/20 mix
    groups = compatible_space_groups((2, 4))
    w = np.array([by_size.get((g, centring_multiplier(g) * 6), 0)
                  + MP_SPREAD * by_group.get(g, 0) / total + 0.25 for g in groups])  # fmt: skip
    p = spacegroup_probabilities(groups, 2, "pyxtal_mp", 0.2, 6)
    assert p == pytest.approx(0.8 * w / w.sum() + 0.2 / len(groups))
    assert p.sum() == pytest.approx(1.0) and p.min() >= 0.2 / len(groups) - 1e-12
    k = groups.index(136)  # rutile's group: 68 structures of 6 atoms in the table
    assert by_size[(136, 6)] == 68 and p[k] > 2.5 / len(groups)
    # conditioned on the cell size: without it the same group falls to its overall frequency
    overall = spacegroup_probabilities(groups, 2, "pyxtal_mp", 0.2, None)
    assert overall[k] < p[k] / 2
    # a centred group is looked up at its conventional size: rocksalt (225) for a 2-atom AB
    # cell at 8 atoms (87 structures); WC-type P-6m2 (187) at 2 (232) leads, CsCl's Pm-3m next
    nacl = compatible_space_groups((1, 1))
    q = spacegroup_probabilities(nacl, 2, "pyxtal_mp", 0.0, 2)
    assert [nacl[i] for i in np.argsort(q)[::-1][:2]] == [187, 221]
    assert q[nacl.index(225)] > 5 / len(nacl)


def test_draws_of_the_generator_follow_the_pyxtal_mp_prior():
    target = parse_target("TiO2", 6)  # 1 or 2 formula units, drawn uniformly
    source = RandomSymmetric(spacegroup_prior="pyxtal_mp")
    rng = np.random.default_rng(0)
    n = 20_000
    drawn = [source.draw(target, rng) for _ in range(n)]
    expected = {}
    for fu in target.fu_counts:
        groups = compatible_space_groups(tuple(target.num_ions(fu)))
        p = spacegroup_probabilities(groups, 2, "pyxtal_mp", 0.2, 3 * fu)
        expected.update({(fu, g): 0.5 * float(x) for g, x in zip(groups, p, strict=True)})
    counts: dict[tuple[int, int], int] = {}
    for fu, sg, p_group, p_arm in drawn:  # type: ignore[misc]
        counts[(fu, sg)] = counts.get((fu, sg), 0) + 1
        assert p_arm is None and p_group == pytest.approx(2 * expected[(fu, sg)])
    e = expected[(2, 136)]
    assert abs(counts.get((2, 136), 0) - n * e) < 5 * np.sqrt(n * e * (1 - e))
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - v) for k, v in expected.items())
    assert tv < 0.06  # total variation of 20,000 draws over ~230 arms (noise ~0.04)
    # built candidates record the prior and the probability of their group
    made = [g for g in itertools.islice(source.attempts(target, 1, SourceContext()), 4) if g]
    assert made
    for g in made:
        fu, sg = g.params["formula_units"], g.params["spacegroup"]
        assert g.params["spacegroup_prior"] == "pyxtal_mp"
        assert g.params["spacegroup_probability"] == pytest.approx(2 * expected[(fu, sg)], abs=1e-6)


def _doc(cid, sg, fu, energy, source="random_symmetric", status="prerelaxed"):
    return {"candidate_id": cid, "formula": "TiO2", "source": source, "status": status,
            "params": {"spacegroup": sg, "formula_units": fu},
            "energy_per_atom": {"mlip": energy}}  # fmt: skip


HISTORY = [
    _doc("a", 136, 2, -9.00),  # the lowest: success
    _doc("b", 136, 2, -8.97),  # within 0.05: success
    _doc("c", 136, 2, -8.80),  # above: failure
    _doc("d", 58, 2, -8.50),
    _doc("e", 58, 2, None, status="failed"),  # failed: failure
    _doc("f", 12, 1, None, status="generated"),  # not relaxed yet: not counted
    _doc("m", None, None, -9.02, source="mutation"),  # sets the lowest, is no arm
]


def test_arm_outcomes_reward_relaxations_near_the_lowest_energy():
    out = arm_outcomes(HISTORY, window=0.05)
    # the mutation's -9.02 is the lowest: a (-9.00) and b (-8.97) lie within 0.05 of it
    assert out == {"136:2": (2, 1), "58:2": (0, 2)}
    assert arm_outcomes(HISTORY, window=0.03) == {"136:2": (1, 2), "58:2": (0, 2)}


def test_bandit_shares_move_toward_the_rewarded_arm():
    target = parse_target("TiO2", 6)
    prior = arm_prior(target, "uniform", 0.2)
    assert sum(prior.values()) == pytest.approx(1.0) and len(prior) > 200
    rng = np.random.default_rng
    before = thompson_shares(prior, {}, 10.0, rng(0))
    after = thompson_shares(prior, {"136:2": (3, 1)}, 10.0, rng(0))
    punished = thompson_shares(prior, {"136:2": (0, 30)}, 10.0, rng(0))
    assert sum(after.values()) == pytest.approx(1.0)
    assert max(after, key=after.__getitem__) == "136:2"
    assert after["136:2"] > 0.3 > 20 * before["136:2"]
    assert punished["136:2"] < before["136:2"]
    # seeded: the same outcomes and seed give the same shares
    assert thompson_shares(prior, {"136:2": (3, 1)}, 10.0, rng(0)) == after
    # a stronger prior needs more evidence
    strong = thompson_shares(prior, {"136:2": (3, 1)}, 1000.0, rng(0))
    assert strong["136:2"] < after["136:2"]
    shares, outcomes = bandit_shares(target, HISTORY, "uniform", 0.2, 0.05, 10.0, seed=1)
    assert max(shares, key=shares.__getitem__) == "136:2" and outcomes["58:2"] == (0, 2)
    rec = top_arms(shares, outcomes, n=3)
    assert list(rec["top"])[0] == "136:2" and rec["outcomes"]["136:2"] == [2, 1]
    assert rec["arms"] == len(prior) and sum(rec["top"].values()) + rec["rest"] == pytest.approx(
        1.0, abs=1e-3
    )
    # the generator draws arms with these shares
    source = RandomSymmetric(arm_weights=shares)
    r = np.random.default_rng(3)
    draws = [source.draw(target, r) for _ in range(4000)]
    hit = sum(1 for fu, sg, _, _ in draws if (sg, fu) == (136, 2))  # type: ignore[misc]
    assert abs(hit / 4000 - shares["136:2"]) < 5 * np.sqrt(shares["136:2"] / 4000)
    assert all(p_arm is not None for *_, p_arm in draws)  # type: ignore[misc]


def test_generate_job_allocates_by_the_campaigns_rewarded_arms(db):
    from cspflow.generate.maker import generate_candidates
    from cspflow.store import candidates

    more = [_doc(f"s{i}", 136, 2, -9.01) for i in range(4)]  # 136:2 rewarded 6 times in 7
    for d in HISTORY + more:
        candidates.insert_raw(db, {**d, "campaign": "c", "iteration": 0, "chemsys": "O-Ti",
                                   "fingerprint_hash": d["candidate_id"]})  # fmt: skip
    out = generate_candidates.original(
        "TiO2", 6, 6, sources={"random_symmetric": 1.0}, seed=5, campaign="c", iteration=1,
        spacegroup_prior="pyxtal_mp", bandit=True,
    )  # fmt: skip
    arms = out["arm_weights"]
    # the statistics read the last earlier iteration too (an index range that SecantusDB
    # 0.7.0b3 cut short with $lte)
    from cspflow.store import candidate_stats

    assert len(candidate_stats.source_records(db, "c", max_iteration=0)) == len(HISTORY) + 4
    assert list(arms["top"])[0] == "136:2" and arms["outcomes"]["136:2"] == [6, 1]
    assert arms["top"]["136:2"] > 0.5  # from 0.007 without the history (pyxtal_mp prior)
    new = candidates.get_many(db, out["candidate_ids"], {"params": 1})
    params = [d["params"] for d in new.values()]
    assert params and all(p["allocation"] == "bandit" for p in params)
    assert all(p["spacegroup_prior"] == "pyxtal_mp" and p["arm_probability"] > 0 for p in params)
    assert sum(p["spacegroup"] == 136 and p["formula_units"] == 2 for p in params) >= 2


def test_ground_state_estimate_on_constructed_histories():
    # one minimum reached by all 10 relaxations: no singleton, f0 = 1/10, (1/2) ** 0.1
    one = ground_state(10, 1, 0, 0, 10)
    assert one == {"new_minimum_chance": 0.0, "lower_minimum_chance": 0.0,
                   "unseen_minima": 0.1, "ground_state_confidence": 0.933}  # fmt: skip
    # 20 relaxations, 5 minima: best 10x, then 4, 3, 2 ... and singletons
    hist = [{"candidate_id": c, "energy_per_atom": -5 + i / 10, "hits": h}
            for i, (c, h) in enumerate(zip("abcde", (10, 5, 2, 2, 1), strict=True))]  # fmt: skip
    r = rediscovery(hist)
    f0 = 1 * 0 / (2 * 3) + 1 / 20
    assert r["singletons"] == 1 and r["doubletons"] == 2 and r["unseen_minima"] == 0.05
    assert r["ground_state_confidence"] == pytest.approx((5 / 6) ** f0, abs=1e-3)
    assert r["lower_minimum_chance"] == pytest.approx(1 / 20 / 6, abs=1e-4)
    # all singletons: many unseen minima, no confidence
    flat = ground_state(12, 12, 12, 0, 1)
    assert flat["unseen_minima"] == pytest.approx(66 + 1 / 12, abs=0.01)
    assert flat["ground_state_confidence"] == 0.0  # the best was reached once
    some = ground_state(12, 11, 10, 1, 2)  # the best twice, ten singletons: f0 = 22.6
    assert 0 < some["ground_state_confidence"] < 0.2
    # more rediscoveries of the same minima raise the confidence
    assert ground_state(40, 5, 1, 1, 30)["ground_state_confidence"] > r["ground_state_confidence"]


def test_ground_state_confidence_is_a_stop_rule():
    stop = StopSpec(max_iterations=10, patience=10, ground_state_confidence=0.9)
    assert "ground state likely seen" in stop_reason(stop, 1, 0, 0, None, {"TiO2": 0.95})
    assert stop_reason(stop, 1, 0, 0, None, {"TiO2": 0.95, "SiO2": 0.5}) is None
    assert stop_reason(stop, 1, 0, 0, None, {"TiO2": None}) is None
    off = StopSpec(max_iterations=10, patience=10)
    assert off.ground_state_confidence is None
    assert stop_reason(off, 1, 0, 0, None, {"TiO2": 0.999}) is None


@pytest.mark.parametrize(
    "block",
    [
        {"generate": {"bandit_window": 0}},
        {"generate": {"bandit_window": -0.1}},
        {"generate": {"bandit_strength": 0}},
        {"generate": {"bandit": "maybe"}},
        {"generate": {"spacegroup_prior": "icsd"}},
        {"stop": {"ground_state_confidence": 1.5}},
        {"stop": {"ground_state_confidence": 0}},
    ],
)
def test_bad_bandit_and_stop_values_are_one_line_errors(block):
    with pytest.raises(SpecError) as exc:
        parse_spec({"name": "x", "compositions": ["TiO2"], "max_atoms": 6, **block},
                   source="s.yaml")  # fmt: skip
    lines = exc.value.lines()
    section = next(iter(block))
    assert len(lines) == 1 and lines[0].startswith(f"s.yaml: {section}."), lines
    if block == {"generate": {"spacegroup_prior": "icsd"}}:
        assert "pyxtal_mp" in lines[0]


def test_status_lines_show_the_estimate_and_the_arms():
    from cspflow.cli.render_campaign import arms_line, campaign_status_json, rediscovery_line

    red = {"relaxed": 20, "minima": 5, "best": "a", "best_hits": 10, "singletons": 1,
           "doubletons": 2, "new_minimum_chance": 0.05, "lower_minimum_chance": 0.0083,
           "unseen_minima": 0.05, "ground_state_confidence": 0.991}  # fmt: skip
    line = rediscovery_line(red)
    assert line.startswith("10x in 20 relaxations (5 minima, 1 seen once;")
    assert line.endswith("ground state seen: 0.99 (next relaxation lower: 0.008)")
    old = {k: v for k, v in red.items() if k in ("relaxed", "minima", "best", "best_hits",
                                                 "singletons", "new_minimum_chance")}  # fmt: skip
    assert "ground state" not in rediscovery_line(old)  # summaries written before the estimate
    rec = top_arms({"136:2": 0.5, "58:2": 0.3, "12:1": 0.2}, {"136:2": (2, 1)}, n=2)
    assert arms_line(rec) == "136:2 0.50 (2/3)  58:2 0.30 (0/0)  (of 3 arms; rest 0.20)"
    doc = {"state": "completed", "iterations": [{"iteration": 0, "rediscovery": {"TiO2": red}}]}
    out = campaign_status_json("x", doc, {}, {"candidates": {}, "fireworks": {}, "running": []},
                               {}, [])  # fmt: skip
    assert out["rediscovery"] == {"TiO2": red}
