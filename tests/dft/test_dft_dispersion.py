"""D3(BJ) on the DFT side: VASP IVDW=12, CP2K's DFTD3(BJ) section, GPAW + the dftd3 package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from jobflow import run_locally
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from cspflow.dft.presets import resolve_settings, settings_hash
from cspflow.dft.stage import DftStageMaker
from cspflow.schemas.dft import DftSpec
from cspflow.store import get_jobstore
from cspflow.testing import insert_candidate

FAKE_VASP = Path(__file__).with_name("fake_vasp.py")


def csi(a: float = 4.567) -> Structure:
    return Structure(Lattice.cubic(a), ["Cs", "I"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def dftd3_energy(structure: Structure, xc: str = "pbe") -> float:
    from dftd3.ase import DFTD3

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = DFTD3(method=xc, damping="d3bj")
    return atoms.get_potential_energy()


def test_spec_dispersion_enters_settings_and_hash_only_when_set():
    s = csi()
    plain = resolve_settings(DftSpec(engine="gpaw"))
    d3 = resolve_settings(DftSpec(engine="gpaw", dispersion="d3bj"))
    assert "dispersion" not in plain[1]  # stored hashes of runs without it stay valid
    assert d3[1]["dispersion"] == "d3bj"
    assert settings_hash(s, "gpaw", *plain) != settings_hash(s, "gpaw", *d3)
    assert DftSpec(engine="cp2k", dispersion="D3BJ").dispersion == "d3bj"
    with pytest.raises(ValidationError, match="unknown dispersion 'd3zero'; choose d3bj"):
        DftSpec(engine="vasp", dispersion="d3zero")
    with pytest.raises(ValidationError, match="dispersion needs a DFT engine"):
        DftSpec(engine="none", dispersion="d3bj")


def _incar(run_dir: Path) -> dict:
    from pymatgen.io.vasp import Incar

    name = next(p for p in run_dir.iterdir() if p.name.startswith("INCAR.orig"))
    return dict(Incar.from_file(name))


def test_vasp_inputs_carry_ivdw_12_and_the_result_records_d3(db, settings, tmp_path, monkeypatch):
    from cspflow.settings import get_settings

    monkeypatch.setenv("CSPFLOW_VASP_CMD", f"{sys.executable} {FAKE_VASP}")
    get_settings.cache_clear()
    cs = get_settings()
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.62), ["Cu"], [[0, 0, 0]])
    ids = {}
    for dispersion in (None, "d3bj"):
        cid = insert_candidate(db, cu, mlip_energy=-3.0, campaign=f"c-{dispersion}")
        stage = DftStageMaker(
            settings=DftSpec(
                engine="vasp", potcar_spec=True, relax="static", dispersion=dispersion
            )  # fmt: skip
        )
        root = tmp_path / str(dispersion)
        run_locally(stage.make([cid], campaign=f"c-{dispersion}"), store=get_jobstore(cs),
                    create_folders=True, root_dir=root)  # fmt: skip
        (run_dir,) = {p.parent for p in root.rglob("INCAR.orig*")}
        ids[dispersion] = (cid, _incar(run_dir))
    assert "IVDW" not in ids[None][1]
    assert ids["d3bj"][1]["IVDW"] == 12
    # everything else is the same MP input set
    rest = {k: v for k, v in ids["d3bj"][1].items() if k != "IVDW"}
    assert rest == ids[None][1]
    for dispersion, (cid, _) in ids.items():
        doc = db["candidates"].find_one({"candidate_id": cid})
        assert doc["relaxed"]["dft"]["status"] == "converged"
        assert doc["relaxed"]["dft"]["dispersion"] == dispersion


def test_vasp_explicit_ivdw_in_incar_overrides_the_dispersion_default():
    from cspflow.dft.vasp import build_input_set

    _, settings = resolve_settings(
        DftSpec(engine="vasp", dispersion="d3bj", incar={"IVDW": 11}, potcar_spec=True)
    )
    assert build_input_set(csi(), settings).user_incar_settings["IVDW"] == 11


@pytest.fixture(scope="module")
def cp2k_data(tmp_path_factory):
    from cspflow.dft.cp2k import CP2K_SHARE, ensure_cp2k_data

    if not CP2K_SHARE.is_dir():
        pytest.skip("Debian's cp2k data directory is not installed")
    return ensure_cp2k_data(tmp_path_factory.mktemp("cp2k"))


@pytest.mark.cp2k
def test_cp2k_input_has_the_dftd3_bj_pair_potential(cp2k_data):
    from cspflow.dft.cp2k import build_input_generator, cp2k_data_env
    from cspflow.dft.dispersion import CP2K_D3_PARAMETER_FILE

    si = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    texts = {}
    for dispersion in (None, "d3bj"):
        _, settings = resolve_settings(DftSpec(engine="cp2k", dispersion=dispersion))
        with cp2k_data_env(cp2k_data):
            inputs = build_input_generator(si, settings, cp2k_data).get_input_set(si)
        texts[dispersion] = inputs.cp2k_input
    assert "VDW_POTENTIAL" not in texts[None].get_str()
    pair = texts["d3bj"]["FORCE_EVAL"]["DFT"]["XC"]["VDW_POTENTIAL"]["PAIR_POTENTIAL"]
    assert pair["TYPE"].values == ("DFTD3(BJ)",)
    assert pair["REFERENCE_FUNCTIONAL"].values == ("PBE",)
    assert pair["PARAMETER_FILE_NAME"].values == (str(CP2K_D3_PARAMETER_FILE),)
    assert CP2K_D3_PARAMETER_FILE.is_file()


@pytest.mark.gpaw
def test_gpaw_plus_d3_single_point_is_gpaw_plus_the_dftd3_number(tmp_path):
    from cspflow.dft.run import relax_structures

    s = csi(4.6)
    rows = {}
    for dispersion in (None, "d3bj"):
        spec = {"engine": "gpaw", "relax": "static", "kpoint_density": 1.0,
                "gpaw": {"ecut": 200}, "dispersion": dispersion}  # fmt: skip
        summary = relax_structures([("CsI", s)], spec, tmp_path / str(dispersion))
        assert summary["dispersion"] == dispersion
        rows[dispersion] = summary["results"][0]
    plain, d3 = rows[None], rows["d3bj"]
    assert plain["status"] == d3["status"] == "converged"
    assert plain["settings_hash"] != d3["settings_hash"]
    d3_cell = (d3["energy_per_atom"] - plain["energy_per_atom"]) * len(s)
    assert d3_cell == pytest.approx(dftd3_energy(s), abs=1e-4)
    assert np.isclose(dftd3_energy(s), -0.47, atol=0.03)  # CsI: ~ -0.24 eV/atom of dispersion
