"""The template source: AFLOW + built-in structure types, ranked substitutions, stored templates."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Lattice, Structure

from cspflow.dedup.index import MemoryIndex
from cspflow.dedup.match import structures_match
from cspflow.generate.batch import generate_batch
from cspflow.generate.composition import parse_target
from cspflow.generate.constraints import Constraints, violations
from cspflow.generate.sources import SourceContext, primitive_cell
from cspflow.generate.templates import (
    Template,
    aflow_templates,
    matching_templates,
    reference_templates,
    require_templates,
    score_assignment,
)

SPINEL = "A2BC4_cF56_227_d_a_e"
PEROVSKITE = "AB3C_cP5_221_a_c_b"


def _perovskite(a: float = 3.9) -> Structure:
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(a), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]
    )


def test_aflow_library_is_read_with_names_and_unique_ids():
    lib = aflow_templates()
    assert len(lib) == 288
    assert len({t.id for t in lib}) == 288  # labels that name two entries are numbered
    assert all(t.name and t.name != "None" for t in lib)


def test_spinel_and_perovskite_are_templates_of_mgal2o4_and_srtio3():
    fit, _ = matching_templates(parse_target("MgAl2O4", 14))
    by_id = {t.id: t for t in fit}
    assert by_id[SPINEL].name == "Spinel" and by_id[SPINEL].tags["pearson"] == "cF56"
    assert by_id[SPINEL].tags["builtin"] == "spinel"  # the built-in spinel is merged, not twice
    assert not any(t.id == "builtin:spinel" for t in fit)
    assert all(len(t.structure) <= 14 for t in fit)
    fit, large = matching_templates(parse_target("SrTiO3", 5))
    names = {t.id: t.name for t in fit}
    assert names[PEROVSKITE] == "(Cubic) Perovskite"
    assert fit[0].tags.get("builtin") == "perovskite" or any(
        t.tags.get("builtin") == "perovskite" for t in fit
    )
    # orthorhombic perovskite (20 atoms) needs a larger cell: counted, not used
    assert "AB3C_oP20_62_c_cd_a" in {t.id for t in large}


def test_ranking_puts_the_chemically_closest_assignment_first():
    target = parse_target("SrTiO3", 5)
    ranked = Template().ranked(target)
    t, mapping, score, scorer = ranked[0]
    assert t.id == PEROVSKITE and mapping == {"Ca": "Sr", "Ti": "Ti", "O": "O"}
    assert scorer == "substitution_probability"
    swapped, _ = score_assignment("CaTiO3", "SrTiO3", {"Ca": "Ti", "Ti": "Sr", "O": "O"},
                                  "substitution")  # fmt: skip
    assert score > 100 * swapped
    # elements have no oxidation states: the electronegativity rule ranks them
    assert score_assignment("Sn", "Si", {"Sn": "Si"}, "substitution")[1] == "electronegativity"


@pytest.mark.parametrize(("formula", "max_atoms"), [("SrTiO3", 10), ("MgAl2O4", 14)])
def test_template_candidates_are_valid_primitive_unique_and_recorded(formula, max_atoms):
    target = parse_target(formula, max_atoms)
    result = generate_batch(target, 40, MemoryIndex(), sources={"template": 1.0}, seed=3)
    new = [gen for _, gen, _ in result.new]
    assert len(new) >= 3 and not result.summary.complete  # a finite library, exhausted
    for gen in new:
        s = gen.structure
        assert s.composition.reduced_formula == formula and len(s) <= max_atoms
        assert len(primitive_cell(s)) == len(s)
        assert violations(s, Constraints()) == []
        p = gen.params
        assert gen.source == "template" and p["template"] and p["template_name"]
        assert sorted(p["substitution"].values()) == sorted(target.species)
        assert p["score"] > 0 and p["scorer"] in ("substitution_probability", "electronegativity")
    # cspflow's dedup rule: no two of one space group are the same structure (a distorted
    # variant of a type, e.g. tetragonal perovskite, is a candidate of its own)
    fps = [fp for _, _, fp in result.new]
    for i, a in enumerate(new):
        assert not any(structures_match(a.structure, b.structure)
                       for b, fb in zip(new[:i], fps[:i], strict=True)
                       if fb.spacegroup == fps[i].spacegroup)  # fmt: skip
    again = generate_batch(target, 40, MemoryIndex(), sources={"template": 1.0}, seed=3)
    assert [g.params for _, g, _ in again.new] == [g.params for g in new]
    assert new[0].params["template"] == (PEROVSKITE if formula == "SrTiO3" else SPINEL)


def test_leave_one_out_removes_the_reference_type():
    from cspflow.bench.score import library_match
    from cspflow.bench.sets import MatchSpec

    target = parse_target("SrTiO3", 10)
    ref = _perovskite()
    left = reference_templates(ref, target)
    assert PEROVSKITE in left
    made = [g for g in Template(exclude=left).attempts(target, 0, SourceContext()) if g]
    assert made and not any(structures_match(ref, g.structure) for g in made)

    class Entry:
        formula, max_atoms, reference = "SrTiO3", 10, ref

    match = MatchSpec()
    assert library_match(Entry, match, ("template",)).startswith("template:(Cubic) Perovskite")
    assert library_match(Entry, match, ("template",), left) is None


def test_no_template_of_the_stoichiometry_is_one_clear_line():
    from cspflow.errors import CspflowError

    with pytest.raises(
        CspflowError, match=r"no template of stoichiometry ABC3D8 .*\(0 of 288 AFLOW"
    ):
        require_templates(parse_target("KAlSi3O8", 26))
    with pytest.raises(
        CspflowError, match=r"2 of that stoichiometry need more atoms \(smallest 8\)"
    ):
        require_templates(parse_target("BaCuSF", 6))


# ---------------------------------------------------------------------------------------------
# command line


def _run(argv, capsys):
    from cspflow.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_list_templates_names_every_matching_aflow_type(capsys):
    code, out, _ = _run(["generate", "MgAl2O4", "--max-atoms", "14", "--list-templates",
                         "--json"], capsys)  # fmt: skip
    assert code == 0
    info = json.loads(out)
    assert info["stoichiometry"] == "AB2C4"
    expected = {t.id for t in aflow_templates() if t.id in {r["id"] for r in info["templates"]}}
    assert {r["id"] for r in info["templates"] if r["origin"] == "aflow"} == expected
    spinel = next(r for r in info["templates"] if r["id"] == SPINEL)
    assert spinel["name"] == "Spinel" and spinel["spacegroup"] == 227 and spinel["nsites"] == 14
    code, out, _ = _run(["generate", "SrTiO3", "--max-atoms", "10", "--list-templates"], capsys)
    assert code == 0 and "Perovskite" in out and "templates of ABC3 fit 10 atoms" in out


def test_generate_with_template_source_writes_recorded_candidates(tmp_path, capsys):
    out = tmp_path / "gen"
    code, stdout, _ = _run(["generate", "SrTiO3", "--max-atoms", "5", "--n", "4", "--sources",
                            "template", "--out", str(out), "--json"], capsys)  # fmt: skip
    assert code == 0
    summary = json.loads(stdout)
    rows = summary["candidates"]
    assert summary["by_source"] == {"template": len(rows)} and len(rows) >= 2
    assert rows[0]["params"]["template"] == PEROVSKITE and rows[0]["spacegroup"] == 221
    assert len(list(out.glob("*.cif"))) == len(rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["KAlSi3O8", "--max-atoms", "26"], "no template of stoichiometry ABC3D8"),
        (["SrXxO3", "--max-atoms", "10"], "unknown element 'Xx'"),
        (["SrTiO3", "--ranking", "best"], "--ranking 'best' is unknown"),
    ],
)
def test_template_bad_input_one_line_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, _, err = _run(["generate", *args, "--sources", "template", "--out", str(out)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0] and not out.exists()
    code, _, err = _run(["generate", *args, "--list-templates"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_leave_out_reference_needs_the_template_source():
    from cspflow.bench.options import BenchOptions, check_options
    from cspflow.errors import CspflowError

    with pytest.raises(CspflowError, match="needs the template source"):
        check_options(BenchOptions(leave_out_reference=True))
    with pytest.raises(CspflowError, match="drop prototype"):
        check_options(BenchOptions(leave_out_reference=True,
                                   sources={"template": 1, "prototype": 1}))  # fmt: skip


def test_spec_fields_reach_the_source_and_bad_values_are_refused():
    from pydantic import ValidationError

    from cspflow.schemas.generate import GenerateSettings
    from cspflow.schemas.template import TemplateSettings

    # every spec field is a keyword of the source (the generate job passes them all)
    src = Template(**TemplateSettings(ranking="random", per_iteration=4).model_dump())
    assert src.ranking == "random" and src.per_iteration == 4
    with pytest.raises(ValidationError, match="ranking"):
        GenerateSettings(template={"ranking": "best"})
    with pytest.raises(ValidationError, match="unknown source"):
        GenerateSettings(sources={"templates": 1.0})


def test_per_iteration_count_sets_the_template_share():
    from cspflow.generate.templates import template_counts

    w = template_counts({"random_symmetric": 0.8, "template": 0.2}, 20, 5)
    assert w == pytest.approx({"random_symmetric": 0.75, "template": 0.25})
    assert template_counts({"random_symmetric": 1.0}, 20, 5) == {"random_symmetric": 1.0}
