"""A two-iteration MLIP campaign with random structures and mutation: the iteration summaries
record per-source / per-operator statistics, the shares of the next iteration, and the
mutations' parents come from the niched population."""

from __future__ import annotations

import json

import pytest
import yaml

from cspflow.testing.cli import cli_env, run_cli

pytestmark = pytest.mark.slow

SPEC = {
    "name": "nacl-evo",
    "compositions": ["NaCl"],
    "max_atoms": 4,
    "generate": {
        "per_iteration": 6,
        "sources": {"random_symmetric": 0.5, "mutation": 0.5},
        "seed": 3,
        "spacegroup_prior": "aflow",
        "bandit": True,
    },
    "prerelax": {"model": "chgnet", "max_steps": 60, "batch_size": 8},
    "select": {"top_k": 0},
    "dft": {"engine": "none"},
    "stop": {"max_iterations": 2, "patience": 2},
}


def test_operator_statistics_in_iteration_summaries(settings, db, tmp_path):
    spec = tmp_path / "nacl.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = cli_env(settings)
    out = json.loads(run_cli("campaign", "run", str(spec), "--json", env=env, timeout=900).stdout)
    assert out["state"] == "completed" and [it["iteration"] for it in out["iterations"]] == [0, 1]
    docs = list(db.candidates.find({"campaign": "nacl-evo"}, {"_id": 0}))
    for it in out["iterations"]:
        ops = it["operators"]
        mine = [d for d in docs if d["iteration"] == it["iteration"]]
        # every candidate of the iteration is counted once, under its source / operator
        assert sum(row["generated"] for row in ops.values()) == len(mine)
        for key, row in ops.items():
            members = [d for d in mine if (d["source"] if d["source"] != "mutation"
                                           else f"mutation:{d['params']['operator']}") == key]  # fmt: skip
            assert row["generated"] == len(members)
            relaxed = [d for d in members if d["status"] != "failed"
                       and (d.get("energy_per_atom") or {}).get("mlip") is not None]  # fmt: skip
            assert row["relaxed"] == len(relaxed)
            if relaxed:
                best = min(d["energy_per_atom"]["mlip"] for d in relaxed)
                assert row["best_energy_per_atom"] == pytest.approx(best, abs=1e-6)
            assert row["in_top"] <= min(5, row["relaxed"])
            assert row["in_population"] <= row["relaxed"]
        # the shares the next iteration draws with: both sources, summing to 1
        shares = it["next_shares"]["NaCl"]
        assert set(shares["sources"]) == {"random_symmetric", "mutation"}
        assert sum(shares["sources"].values()) == pytest.approx(1.0, abs=1e-3)
        assert sum(shares["operators"].values()) == pytest.approx(1.0, abs=1e-3)
        # random_symmetric's formula units (1 or 2 NaCl in 4 atoms) are allocated too
        assert set(shares["formula_units"]) == {"1", "2"}
        assert sum(shares["formula_units"].values()) == pytest.approx(1.0, abs=1e-3)
        # the bandit's (space group, formula units) shares for the next iteration
        arms = shares["arms"]
        assert arms["arms"] > 50 and 0 < len(arms["top"]) <= 10
        assert sum(arms["top"].values()) + arms["rest"] == pytest.approx(1.0, abs=2e-3)
        assert all(int(k.split(":")[1]) in (1, 2) for k in arms["top"])
    first = out["iterations"][0]["operators"]
    # no parents before the first relaxations: iteration 0 is random structures only
    assert set(first) == {"random_symmetric"} and first["random_symmetric"]["generated"] == 6
    assert first["random_symmetric"]["in_top"] >= 1
    # iteration 1 mutates the population of iteration 0 and records the parents
    mutants = [d for d in docs if d["iteration"] == 1 and d["source"] == "mutation"]
    assert mutants
    pool = {d["candidate_id"] for d in docs if d["iteration"] == 0}
    for d in mutants:
        assert d["parent_ids"] and set(d["parent_ids"]) <= pool
        assert d["params"]["operator"] in {"strain", "permutation", "rattle", "heredity",
                                           "softmode", "supercell"}  # fmt: skip
    randoms = [d for d in docs if d["source"] == "random_symmetric"]
    assert all(d["params"]["spacegroup_prior"] == "aflow" for d in randoms)
    # iteration 0 draws from the prior, iteration 1 from the bandit's arms
    assert all(("allocation" in d["params"]) == (d["iteration"] == 1) for d in randoms)
    # the stopping signal: how often the lowest minimum was reached again
    red = out["iterations"][-1]["rediscovery"]["NaCl"]
    relaxed = [d for d in docs if d["status"] != "failed"
               and (d.get("energy_per_atom") or {}).get("mlip") is not None]  # fmt: skip
    reps = [d.get("duplicate_of") or d["candidate_id"] for d in relaxed]
    assert red["relaxed"] == len(relaxed) and red["minima"] == len(set(reps))
    lowest = min(relaxed, key=lambda d: d["energy_per_atom"]["mlip"])
    best = lowest.get("duplicate_of") or lowest["candidate_id"]
    assert red["best"] == best and red["best_hits"] == reps.count(best)
    assert red["new_minimum_chance"] == round(
        sum(reps.count(r) == 1 for r in set(reps)) / len(reps), 3
    )
    from cspflow.campaign.evolution import ground_state

    n1 = sum(reps.count(r) == 1 for r in set(reps))
    n2 = sum(reps.count(r) == 2 for r in set(reps))
    est = ground_state(len(reps), len(set(reps)), n1, n2, reps.count(best))
    assert {k: red[k] for k in est} == est
    assert out["rediscovery"] == out["iterations"][-1]["rediscovery"]
    # campaign status shows the tables
    wide = {**env, "COLUMNS": "300"}  # one line per cell: the long cells stay whole
    text = run_cli("campaign", "status", "nacl-evo", env=wide, timeout=300).stdout
    assert "sources and operators" in text and "next shares NaCl" in text
    assert "lowest found NaCl" in text and "ground state seen" in text
    assert "next arms NaCl" in text
