"""The bad-input matrix of docs/errors.md: one line naming the problem, non-zero exit, no data touched.

Every case runs the real CLI in a subprocess against a database that already holds a submitted
campaign; the database is hashed collection by collection before and after.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import bson
import pytest

SI_CIF = """data_Si
_cell_length_a 5.43
_cell_length_b 5.43
_cell_length_c 5.43
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Si1 Si 0 0 0
Si2 Si 0.25 0.25 0.25
"""
# a CIF block with no cell and no atoms: a molecule name and a stray loop
NOT_A_CRYSTAL = 'data_junk\n_chemical_name_common "not a crystal"\nloop_\n_foo\n1\n2\n'


def spec(name: str, extra: str = "", head: str = "compositions: [Si]\nmax_atoms: 2\n") -> str:
    return f"name: {name}\n{head}{extra}"


FILES = {
    "si.cif": SI_CIF,
    "junk.cif": NOT_A_CRYSTAL,
    "afile": "a file, not a directory\n",
    "malformed.yaml": "name: m\ncompositions: [MgO\nmax_atoms: 4\n",
    "unknown_key.yaml": spec(
        "uk", "dft: {engine: none}\ngenerate: {per_iteration: 4, colour: red}\n"
    ),
    "unknown_element.yaml": spec("ue", head="compositions: [MgXx]\nmax_atoms: 4\n"),
    "impossible.yaml": spec("im", head="compositions: [MgAl2O4]\nmax_atoms: 4\n"),
    "missing_model.yaml": spec(
        "keep", "dft: {engine: none}\nprerelax: {model: 'mace:/nonexistent/si.model'}\n"
    ),
    "wrong_model.yaml": spec("keep", "dft: {engine: none}\nprerelax: {model: 'mace:si.cif'}\n"),
    "vasp.yaml": spec("vasp", "dft: {engine: vasp}\n"),
    "cp2k.yaml": spec("cp2k", "dft: {engine: cp2k}\n"),
    "gpaw.yaml": spec("gpaw", "dft: {engine: gpaw}\n"),
    "ok.yaml": spec("ok", "dft: {engine: none}\n"),
    "chgnet_multihead.yaml": spec(
        "cm", "dft: {engine: gpaw}\nlearn: {enabled: true, model: chgnet, finetune: multihead}\n"
    ),
    "chgnet_mace_foundation.yaml": spec(
        "cf",
        "dft: {engine: gpaw}\nlearn: {enabled: true, model: chgnet, "
        "foundation_model: 'mace:si.cif'}\n",
    ),
    "missing_foundation.yaml": spec(
        "mf",
        "dft: {engine: gpaw}\nlearn: {enabled: true, model: chgnet, "
        "foundation_model: 'chgnet:/nonexistent/ft.pth.tar'}\n",
    ),
    "gpaw_mp2020.yaml": spec("gc", "dft: {engine: gpaw, correction: mp2020}\n"),
    "gpaw_mp_refs.yaml": spec("gr", "references: 'pymatgen:mp'\ndft: {engine: gpaw}\n"),
    "d4_prerelax.yaml": spec("d4p", "dft: {engine: none}\nprerelax: {dispersion: d4}\n"),
    "d4_dft.yaml": spec("d4d", "dft: {engine: gpaw, dispersion: d4}\n"),
    "d3_no_dft.yaml": spec("d3n", "dft: {engine: none, dispersion: d3bj}\n"),
    "mp_refs.json": '[{"@module": "pymatgen.entries.computed_entries", "@class": "ComputedEntry", '
    '"energy": -10.8, "correction": 0.0, "composition": {"Si": 2}, "entry_id": "mp-149", '
    '"parameters": {"run_type": "GGA"}}]',
    "mp_refs.yaml": spec("refs", "dft: {engine: gpaw}\nreferences: mp_refs.json\n"),
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# id, argv, extra environment ({"-": [names]} removes variables), substrings the line must hold
CASES = [
    ("malformed-yaml", ["campaign", "submit", "malformed.yaml"], {},
     ["malformed.yaml: malformed YAML at line 3, column 10", "fix the YAML syntax"]),
    ("unknown-spec-key", ["campaign", "submit", "unknown_key.yaml"], {},
     ["unknown_key.yaml: generate.colour: unknown key"]),
    ("unknown-element", ["campaign", "submit", "unknown_element.yaml"], {},
     ["'MgXx' has unknown element(s) ['Xx']"]),
    ("unknown-element-generate", ["generate", "MgXx", "-n", "2", "-o", "out"], {},
     ["unknown element 'Xx' in 'MgXx'", "use element symbols"]),
    ("impossible-stoichiometry", ["campaign", "submit", "impossible.yaml"], {},
     ["MgAl2O4 needs 7 atoms per formula unit but max_atoms is 4"]),
    ("impossible-stoichiometry-generate", ["generate", "MgAl2O4", "--max-atoms", "4", "-o", "out"], {},
     ["has 7 atoms, more than --max-atoms 4", "raise --max-atoms to at least 7"]),
    ("missing-model-file", ["campaign", "submit", "missing_model.yaml"], {},
     ["prerelax.model: MACE model file /nonexistent/si.model not found"]),
    ("missing-model-file-relax", ["relax", "si.cif", "-o", "out", "--model", "mace:/nonexistent/si.model"],
     {}, ["MACE model file /nonexistent/si.model not found", "mace:PATH"]),
    ("wrong-model-type", ["campaign", "submit", "wrong_model.yaml"], {},
     ["si.cif is not a loadable MACE model", "mace_run_train"]),
    ("wrong-model-type-relax", ["relax", "si.cif", "-o", "out", "--model", "mace:si.cif"], {},
     ["si.cif is not a loadable MACE model"]),
    ("unknown-model-relax", ["relax", "si.cif", "-o", "out", "--model", "schnet"], {},
     ["unknown model spec 'schnet'", "'chgnet', 'chgnet:PATH', 'mace:PATH' or 'registry:MODEL_ID'"]),
    ("missing-vasp", ["campaign", "run", "vasp.yaml"], {},
     ["no VASP command is configured", "CSPFLOW_VASP_CMD"]),
    ("missing-vasp-dft", ["dft", "relax", "si.cif", "--engine", "vasp", "--out", "out"], {},
     ["no VASP command is configured", "CSPFLOW_VASP_CMD"]),
    ("missing-cp2k", ["campaign", "run", "cp2k.yaml"], {"CSPFLOW_CP2K_CMD": "/nonexistent/cp2k.psmp"},
     ["CP2K executable '/nonexistent/cp2k.psmp' not found", "CSPFLOW_CP2K_CMD"]),
    ("missing-gpaw", ["campaign", "run", "gpaw.yaml"], {"CSPFLOW_GPAW_SETUP_PATH": "/nonexistent"},
     ["GPAW"]),
    ("missing-gpaw-dft", ["dft", "relax", "si.cif", "--out", "out"],
     {"CSPFLOW_GPAW_SETUP_PATH": "/nonexistent"}, ["GPAW"]),
    ("unwritable-data-dir", ["db", "start"], {"CSPFLOW_DATA_DIR": "afile/sub", "-": ["CSPFLOW_DB_URI"]},
     ["cannot write to the data directory", "set CSPFLOW_DATA_DIR to a writable directory"]),
    ("unwritable-data-dir-submit", ["campaign", "submit", "ok.yaml"],
     {"CSPFLOW_DATA_DIR": "afile/sub", "-": ["CSPFLOW_DB_URI"]},
     ["cannot write to the data directory", "CSPFLOW_DATA_DIR"]),
    ("unreachable-database", ["campaign", "status", "keep"],
     {"CSPFLOW_DB_URI": "mongodb://alice:s3cret-pw@127.0.0.1:{port}/?authSource=admin"},
     ["cannot reach the database at mongodb://alice:***@127.0.0.1", "CSPFLOW_DB_URI"]),
    ("learn-chgnet-multihead", ["campaign", "submit", "chgnet_multihead.yaml"], {},
     ["learn.model chgnet fine-tunes CHGNet naively", "multihead fine-tuning and replay_file are MACE's"]),
    ("learn-chgnet-mace-foundation", ["campaign", "submit", "chgnet_mace_foundation.yaml"], {},
     ["learn.foundation_model mace:si.cif is a MACE model but learn.model is chgnet"]),
    ("learn-missing-foundation", ["campaign", "submit", "missing_foundation.yaml"], {},
     ["learn.foundation_model: CHGNet model file /nonexistent/ft.pth.tar not found"]),
    ("correction-non-vasp", ["campaign", "submit", "gpaw_mp2020.yaml"], {},
     ["dft.correction mp2020 is for VASP energies", "remove dft.correction"]),
    ("mp-references-non-vasp", ["campaign", "submit", "gpaw_mp_refs.yaml"], {},
     ["references pymatgen:mp are Materials Project VASP energies", "dft.engine gpaw"]),
    ("reference-fidelity", ["campaign", "submit", "mp_refs.yaml"], {},
     ["reference entry mp-149 (Si) in mp_refs.json cannot be at the campaign's fidelity gpaw:PBE:fast:",
      "Materials Project VASP data (run_type GGA)"]),
    ("unknown-fidelity", ["results", "hull", "keep", "--fidelity", "gpaw:XC:none:0"], {},
     ["no Si hull at fidelity 'gpaw:XC:none:0'; fidelities with a hull: none"]),
    ("not-a-crystal", ["relax", "junk.cif", "-o", "out"], {},
     ["cannot read a structure from junk.cif", "give CIF, POSCAR or extxyz files"]),
    ("not-a-crystal-dft", ["dft", "relax", "junk.cif", "--out", "out"], {},
     ["cannot read a structure from junk.cif", "periodic crystals"]),
    ("unknown-dispersion-prerelax", ["campaign", "submit", "d4_prerelax.yaml"], {},
     ["d4_prerelax.yaml: prerelax.dispersion: unknown dispersion 'd4'", "choose d3bj"]),
    ("unknown-dispersion-dft", ["campaign", "submit", "d4_dft.yaml"], {},
     ["d4_dft.yaml: dft.dispersion: unknown dispersion 'd4'", "choose d3bj"]),
    ("dispersion-without-dft", ["campaign", "submit", "d3_no_dft.yaml"], {},
     ["dispersion needs a DFT engine", "prerelax.dispersion"]),
    ("unknown-dispersion-relax", ["relax", "si.cif", "-o", "out", "--dispersion", "d4"], {},
     ["--dispersion: unknown dispersion 'd4'", "choose d3bj"]),
    ("unknown-dispersion-dft-relax", ["dft", "relax", "si.cif", "--out", "out", "--dispersion",
                                      "d4"], {}, ["--dispersion: unknown dispersion 'd4'"]),
]  # fmt: skip


def db_digest(db) -> dict[str, str]:
    """One hash per collection over every document (sorted by _id)."""
    out = {}
    for name in sorted(db.list_collection_names()):
        h = hashlib.sha256()
        for doc in db[name].find({}).sort("_id", 1):
            h.update(bson.encode(doc))
        out[name] = h.hexdigest()
    return out


@pytest.fixture
def workdir(settings, db, tmp_path, monkeypatch):
    """Input files, and a database already holding a submitted campaign named ``keep``."""
    from cspflow.scheduler.local import submit_campaign
    from cspflow.schemas.campaign import parse_spec

    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    submit_campaign(parse_spec({"name": "keep", "compositions": ["Si"], "max_atoms": 2,
                                "dft": {"engine": "none"}}), settings)  # fmt: skip
    return tmp_path


@pytest.mark.parametrize("case,argv,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(workdir, db, case, argv, extra, expected):
    env = dict(os.environ)
    for key in extra.get("-", []):
        env.pop(key, None)
    env.update({k: v.format(port=closed_port()) for k, v in extra.items() if k != "-"})
    env.setdefault("CSPFLOW_DB_SERVER_SELECTION_TIMEOUT_MS", "1500")
    before = db_digest(db)
    files_before = sorted(p.name for p in workdir.iterdir())
    proc = subprocess.run([sys.executable, "-m", "cspflow.cli.main", *argv], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    after = db_digest(db)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    created = sorted(set(p.name for p in workdir.iterdir()) - set(files_before))
    print(f"\n{case}: exit {proc.returncode}; {lines[0] if lines else proc.stderr!r}; "
          f"collections changed {changed or 0}; files created {created or 0}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for text in expected:
        assert text in lines[0]
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    assert changed == [], changed
    assert created == [], created
    assert not (Path(workdir) / "afile").is_dir()
