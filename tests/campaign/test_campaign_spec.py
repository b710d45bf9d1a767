"""CampaignSpec validation: every problem listed at once with its YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cspflow.errors import SpecError
from cspflow.schemas.campaign import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def test_all_problems_listed_with_paths():
    with pytest.raises(SpecError) as err:
        parse_spec({
            "name": "x", "compositions": ["NaXx", "MgO", "Mg0.5O"],
            "generate": {"per_iteration": -1, "bogus": 1}, "dft": {"budget": -3}, "stopp": 1,
        })  # fmt: skip
    problems = err.value.problems
    assert "compositions.0: 'NaXx' has unknown element(s) ['Xx']" in problems
    assert any(p.startswith("compositions.2:") for p in problems)
    assert any(p.startswith("generate.per_iteration:") for p in problems)
    assert "generate.bogus: unknown key" in problems
    assert any(p.startswith("dft.budget:") for p in problems)
    assert "stopp: unknown key" in problems
    assert len(problems) == 6


def test_impossible_stoichiometry_and_nothing_to_search():
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "x", "compositions": ["MgAl2O4"], "max_atoms": 4})
    assert "needs 7 atoms" in " ".join(err.value.problems)
    with pytest.raises(SpecError):
        parse_spec({"name": "x"})


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncompositions: [Si\n")
    with pytest.raises(SpecError, match="malformed YAML at line"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read campaign spec"):
        load_spec(tmp_path / "absent.yaml")


def test_system_and_grid():
    s = parse_spec({"name": "nacl", "chemsys": ["Na", "Cl"], "composition_grid": 2})
    assert s.system() == "Cl-Na"
    assert set(s.formulas()) == {"Na", "Cl2", "NaCl"}


@pytest.mark.parametrize("path", sorted((REPO / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    assert load_spec(path).name


def test_a_campaign_stored_before_the_bfgs_default_goes_on_with_fire(db):
    """A spec stored by the previous release (schema 1: FIRE, no cell_factor) matches the same
    file now, and keeps relaxing as it started; a file that sets a value the campaign did not
    store is a different campaign."""
    from cspflow.campaign.state import register_campaign, stored_spec
    from cspflow.errors import CspflowError

    text = {"name": "old", "compositions": ["Si"], "max_atoms": 2,
            "prerelax": {"model": "chgnet", "max_steps": 150}}  # fmt: skip
    stored = parse_spec(text).model_dump(mode="json")
    stored["schema_version"] = 1
    stored["prerelax"]["optimizer"] = "FIRE"
    del stored["prerelax"]["cell_factor"], stored["prerelax"]["symmetry_rattle"]
    db.campaigns.insert_one({"name": "old", "spec": stored, "state": "running", "iterations": []})

    old = stored_spec(stored)
    assert (old.prerelax.optimizer, old.prerelax.cell_factor) == ("FIRE", None)
    fresh = parse_spec(text)  # the same file today: the new defaults
    assert (fresh.prerelax.optimizer, fresh.prerelax.cell_factor) == ("BFGS", 1.0)
    doc, created = register_campaign(db, fresh)
    assert not created and doc["spec"]["prerelax"]["optimizer"] == "FIRE"
    for changed in ({"optimizer": "BFGS"}, {"max_steps": 200}):
        edited = {**text, "prerelax": {**text["prerelax"], **changed}}
        with pytest.raises(CspflowError, match="already exists with a different spec"):
            register_campaign(db, parse_spec(edited))
