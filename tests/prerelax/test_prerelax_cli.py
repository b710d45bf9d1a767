"""``cspflow relax IN --model SPEC --out DIR``: files in, relaxed CIFs and summary.json out."""

from __future__ import annotations

import json

import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write
from pymatgen.core import Structure

from cspflow.cli.main import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.slow
def test_relax_directory_writes_cifs_and_json(tmp_path, capsys, settings):
    inp = tmp_path / "in"
    inp.mkdir()
    write(inp / "si.cif", bulk("Si", "diamond", 5.3))
    write(inp / "POSCAR", bulk("NaCl", "rocksalt", 5.8), format="vasp")
    lone = Atoms("Si", positions=[[0, 0, 0]], cell=[9, 9, 9], pbc=True)
    write(inp / "frames.extxyz", [bulk("Si", "diamond", 5.5), lone])
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        ["relax", str(inp), "--model", "chgnet", "--fmax", "0.05", "--out", str(out), "--json"],
        capsys,
    )
    assert code == 0
    summary = json.loads(stdout)  # stdout holds only the JSON (model banners go to stderr)
    assert summary == json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["structures"]}
    assert set(rows) == {"si", "POSCAR", "frames_0", "frames_1"}
    assert summary["n_relaxed"] == 3 and summary["n_failed"] == 1
    assert rows["frames_1"]["failure_reason"].startswith("isolated atom")
    relaxed = Structure.from_file(rows["si"]["cif"])
    assert abs(relaxed.lattice.a * 2**0.5 - 5.43) < 0.1
    assert rows["POSCAR"]["spacegroup"] == "Fm-3m"
    assert sorted(p.name for p in out.glob("*.cif")) == ["POSCAR.cif", "frames_0.cif", "si.cif"]


def test_relax_user_errors_are_one_line(tmp_path, capsys, settings):
    write(tmp_path / "si.cif", bulk("Si", "diamond", 5.43))
    code, _, err = run_cli(
        ["relax", str(tmp_path / "si.cif"), "--model", "mace:/no/such.model", "--out", "o"],
        capsys,
    )
    assert code == 2 and err.strip().count("\n") == 0
    assert "MACE model file /no/such.model not found" in err
    code, _, err = run_cli(
        ["relax", str(tmp_path / "si.cif"), "--model", "m3gnet", "--out", "o"], capsys
    )
    assert code == 2 and "unknown model spec 'm3gnet'" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["relax", str(empty), "--out", "o"], capsys)
    assert code == 2 and "no CIF, POSCAR or extxyz files" in err
