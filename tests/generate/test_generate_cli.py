"""``cspflow generate``: files written, and one clear line for each user error."""

from __future__ import annotations

import json

import pytest
from pymatgen.core import Structure

from cspflow.cli.main import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["XyO", "--max-atoms", "8"], "unknown element 'Xy'"),
        (["MgAl2O4", "--max-atoms", "6"], "one formula unit of MgAl2O4 has 7 atoms"),
        (["MgO", "--max-atoms", "0"], "--max-atoms must be at least 1"),
        (["MgO", "--max-atoms", "-3"], "--max-atoms must be at least 1"),
        (["MgO", "--sources", "magic"], "unknown source 'magic'"),
        (["MgO", "--sources", "mutation"], "add --register"),
        (["MgO", "--spacegroup-prior", "icsd"], "unknown space-group prior 'icsd'"),
        (["MgO", "--wyckoff", "most"], "unknown wyckoff choice 'most'"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, stdout, err = _run(["generate", *args, "--out", str(out)], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


def test_unreadable_external_file(tmp_path, capsys):
    bad = tmp_path / "broken.cif"
    bad.write_text("this is not a CIF\n")
    out = tmp_path / "out"
    code, _, err = _run(["generate", "SrTiO3", "--external", str(bad), "--out", str(out)], capsys)
    assert code == 2 and "cannot read a structure from" in err and str(bad) in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, _, err = _run(["generate", "SrTiO3", "--external", str(tmp_path / "nope.cif"),
                         "--out", str(out)], capsys)  # fmt: skip
    assert code == 2 and "does not exist" in err and not out.exists()
    assert len(err.strip().splitlines()) == 1


def test_generate_writes_unique_cifs_and_summary(tmp_path, capsys):
    out = tmp_path / "gen"
    code, stdout, _ = _run(["generate", "SrTiO3", "--n", "6", "--max-atoms", "10", "--seed", "1",
                            "--out", str(out), "--json"], capsys)  # fmt: skip
    assert code == 0
    summary = json.loads(stdout)
    assert summary["n_new"] == 6 and summary["complete"]
    cifs = sorted(out.glob("*.cif"))
    assert len(cifs) == 6
    on_disk = json.loads((out / "summary.json").read_text())
    assert [c["file"] for c in on_disk["candidates"]] == [p.name for p in cifs]
    from cspflow.dedup.index import MemoryIndex

    index = MemoryIndex()
    for i, p in enumerate(cifs):
        s = Structure.from_file(p)
        assert s.composition.reduced_formula == "SrTiO3" and len(s) <= 10
        assert index.find(s) is None
        index.add(str(i), s)


def test_register_dedups_against_the_database_and_ingests_external(db, tmp_path, capsys):
    from cspflow.generate.sources import builtin_prototypes

    args = ["generate", "SrTiO3", "--n", "4", "--max-atoms", "10", "--seed", "5", "--register",
            "--campaign", "cli"]  # fmt: skip
    assert _run([*args, "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert _run([*args, "--out", str(tmp_path / "b")], capsys)[0] == 0
    # the same seed again: the first run's structures are now duplicates, so 4 new others
    assert db.candidates.count_documents({"campaign": "cli"}) == 8
    a = {p.name.split("-", 1)[1] for p in (tmp_path / "a").glob("*.cif")}
    b = {p.name.split("-", 1)[1] for p in (tmp_path / "b").glob("*.cif")}
    assert len(a) == len(b) == 4 and not a & b
    # external files: a structure already stored (here rotated) is a duplicate
    from pymatgen.core.operations import SymmOp

    from cspflow.dedup.index import register

    sto = builtin_prototypes()["perovskite"].copy()
    register(db, sto, source="test")
    ext = tmp_path / "ext"
    ext.mkdir()
    sto.apply_operation(SymmOp.from_axis_angle_and_translation([1, 1, 0], 25.0))
    sto.to(filename=str(ext / "sto.cif"))
    code, stdout, _ = _run(["generate", "SrTiO3", "--n", "1", "--max-atoms", "10", "--register",
                            "--sources", "external", "--external", str(ext),
                            "--out", str(tmp_path / "c"), "--json"], capsys)  # fmt: skip
    summary = json.loads(stdout)
    assert summary["n_new"] == 0 and summary["n_duplicates"] == 1 and not summary["complete"]
    assert not list((tmp_path / "c").glob("*.cif"))


def test_generate_with_the_aflow_prior_records_it(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(["generate", "AlN", "--max-atoms", "4", "-n", "4", "--sources",
                         "random_symmetric", "--spacegroup-prior", "aflow", "--wyckoff",
                         "fewest_sites", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    rows = json.loads((out / "summary.json").read_text())["candidates"]
    assert len(rows) == 4
    for row in rows:
        p = row["params"]
        assert p["spacegroup_prior"] == "aflow" and p["wyckoff_choice"] == "fewest_sites"
        assert 0 < p["spacegroup_probability"] < 1
