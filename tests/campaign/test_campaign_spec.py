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
