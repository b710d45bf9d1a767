"""``cspflow dft relax``: CIFs + summary.json, --json, and the one-line error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from cspflow.cli.main import main

FAKE_VASP = Path(__file__).with_name("fake_vasp.py")


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_dft_cli_vasp_relax_writes_cif_and_summary(settings, tmp_path, monkeypatch, capsys):
    from cspflow.settings import get_settings

    monkeypatch.setenv("CSPFLOW_VASP_CMD", f"{sys.executable} {FAKE_VASP}")
    get_settings.cache_clear()
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.62), ["Cu"], [[0, 0, 0]])
    cu.translate_sites([0], [0.01, 0, 0])
    cu.to(filename=str(tmp_path / "cu.cif"))
    out = tmp_path / "out"
    code = _cli(
        ["dft", "relax", str(tmp_path / "cu.cif"), "--engine", "vasp", "--potcar-spec",
         "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert printed == json.loads(json.dumps(summary))
    row = summary["results"][0]
    assert summary["engine"] == "vasp" and summary["preset"] == "mp"
    # the mp preset's MP2020 correction: an element gets none, and says so
    assert summary["correction"] == "mp2020"
    assert row["correction"]["status"] == "applied" and row["correction"]["adjustments"] == []
    assert row["correction"]["corrected_energy_per_atom"] == pytest.approx(row["energy_per_atom"])
    assert row["status"] == "converged" and row["energy_per_atom"] < 0
    assert row["wall_time_s"] > 0
    relaxed = Structure.from_file(row["cif"])
    assert relaxed.composition.reduced_formula == "Cu" and len(relaxed) == 4


def test_dft_cli_vasp_without_command_is_one_line(settings, tmp_path, capsys):
    Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]).to(filename=str(tmp_path / "cu.cif"))
    code = _cli(["dft", "relax", str(tmp_path / "cu.cif"), "--engine", "vasp", "--out",
                 str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "CSPFLOW_VASP_CMD" in err


def test_dft_cli_accepts_a_directory_of_structure_files(settings, tmp_path, capsys):
    """``cspflow dft relax DIR`` reads every structure file in DIR, like ``cspflow relax``."""
    from cspflow.chem import read_named_structures

    inp = tmp_path / "in"
    inp.mkdir()
    Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]).to(filename=str(inp / "cu.cif"))
    Structure(Lattice.cubic(2.9), ["Fe"], [[0, 0, 0]]).to(filename=str(inp / "fe.cif"))
    named = read_named_structures([inp])
    assert [(n, s.composition.reduced_formula) for n, s in named] == [("cu", "Cu"), ("fe", "Fe")]
    # No VASP command: the run stops after reading both files, before any DFT.
    code = _cli(["dft", "relax", str(inp), "--engine", "vasp", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not found" not in err
    assert err.startswith("error: ") and "\n" not in err and "CSPFLOW_VASP_CMD" in err
