"""VASP path end to end with a test VASP executable (tests/dft/fake_vasp.py) through custodian.

No POTCARs exist here, so the stage writes POTCAR.spec (``potcar_spec``). The fake executable
counts its invocations, which proves that a rerun returns the stored result without VASP.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from jobflow import run_locally
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp import Incar, Kpoints

from cspflow.dft.stage import DftStageMaker
from cspflow.schemas.dft import DftSpec
from cspflow.store import get_jobstore
from cspflow.testing import insert_candidate

FAKE_VASP = Path(__file__).with_name("fake_vasp.py")


def _cu(a: float = 3.62, shift: float = 0.01) -> Structure:
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Cu"], [[0, 0, 0]])
    s.translate_sites([0], [shift, 0, 0])
    return s


def _add(db, structure: Structure, mlip_structure: Structure | None = None) -> str:
    return insert_candidate(db, structure, mlip_energy=-3.0, mlip_structure=mlip_structure)


@pytest.fixture
def vasp_env(settings, monkeypatch, tmp_path):
    """Settings with the fake VASP as vasp_cmd and an invocation counter."""
    from cspflow.settings import get_settings

    counter = tmp_path / "vasp-calls.txt"
    monkeypatch.setenv("CSPFLOW_VASP_CMD", f"{sys.executable} {FAKE_VASP}")
    monkeypatch.setenv("FAKE_VASP_COUNTER", str(counter))
    get_settings.cache_clear()
    return get_settings(), counter


def _calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _run(settings, ids, spec, root):
    stage = DftStageMaker(settings=DftSpec(engine="vasp", potcar_spec=True, **spec))
    flow_job = stage.make(ids, campaign="test")
    store = get_jobstore(settings)
    responses = run_locally(flow_job, store=store, create_folders=True, root_dir=root)
    return responses, store


def _f(run_dir: Path, name: str) -> Path:
    """A file of a finished atomate2 run (atomate2 gzips them at the end)."""
    plain = run_dir / name
    return plain if plain.exists() else run_dir / f"{name}.gz"


def _text(path: Path) -> str:
    from monty.io import zopen

    with zopen(path, "rt") as fh:
        return fh.read()


def _run_dir(root: Path, element: str = "Cu") -> Path:
    """The job directory where the fake VASP ran for ``element``."""
    dirs = [p.parent for p in root.rglob("POTCAR.spec*") if _text(p).startswith(element)]
    assert dirs, f"no VASP run directory for {element} under {root}"
    return dirs[-1]


def test_dft_vasp_mp_preset_inputs_correction_and_result(db, vasp_env, tmp_path, monkeypatch):
    settings, counter = vasp_env
    monkeypatch.setenv("FAKE_VASP_FAIL", "subspace")
    start, mlip = _cu(3.70), _cu(3.62)
    cid = _add(db, start, mlip_structure=mlip)
    _run(settings, [cid], {}, tmp_path / "run1")

    run_dir = _run_dir(tmp_path / "run1")
    # Inputs are pymatgen's MPRelaxSet for the MLIP-relaxed structure (the DFT input).
    from pymatgen.io.vasp.sets import MPRelaxSet

    ref = MPRelaxSet(mlip, force_gamma=True, auto_metal_kpoints=True, inherit_incar=False)
    written = Incar.from_file(_f(run_dir, "INCAR.orig"))
    assert dict(written) == dict(ref.incar)
    assert written["ENCUT"] == 520 and written["ISIF"] == 3 and written["LREAL"] == "Auto"
    kpts = Kpoints.from_file(_f(run_dir, "KPOINTS"))
    assert kpts.style.name == "Gamma"
    assert list(kpts.kpts[0]) == list(ref.kpoints.kpts[0])
    assert _text(_f(run_dir, "POTCAR.spec")).split() == ["Cu_pv"]
    assert not list(run_dir.glob("POTCAR")) and not list(run_dir.glob("POTCAR.gz"))
    from pymatgen.io.vasp import Poscar

    poscar = Poscar.from_str(_text(_f(run_dir, "POSCAR.orig"))).structure
    assert poscar.volume == pytest.approx(mlip.volume, rel=1e-6)  # the MLIP structure went in

    # First attempt failed with a known VASP error; custodian fixed INCAR; the rerun completed.
    log = json.loads(_text(_f(run_dir, "custodian.json")))
    corrections = [c for run in log for c in run["corrections"]]
    assert corrections[0]["errors"] == ["subspacematrix"]
    assert corrections[0]["actions"] == [{"dict": "INCAR", "action": {"_set": {"LREAL": False}}}]
    assert Incar.from_file(_f(run_dir, "INCAR"))["LREAL"] is False
    assert _calls(counter) == 2

    cand = db["candidates"].find_one({"candidate_id": cid})
    dft = cand["relaxed"]["dft"]
    assert cand["status"] == "dft_done"
    assert dft["status"] == "converged" and dft["engine"] == "vasp" and dft["preset"] == "mp"
    assert cand["energy_per_atom"]["dft"] == pytest.approx(dft["energy_per_atom"])
    assert dft["energy"] == pytest.approx(dft["energy_per_atom"] * dft["nsites"])
    # The TaskDoc is in the JobStore under task_uuid, with the same energy.
    store = get_jobstore(settings)
    store.connect()
    task = store.query_one({"uuid": dft["task_uuid"]}, load=True)
    assert task["output"]["output"]["energy"] == pytest.approx(dft["energy"])
    assert dft["wall_time_s"] is not None and dft["wall_time_s"] >= 0
    # Every job of the stage is routed to the cpu workers through its metadata.
    docs = list(store.query({}, properties=["name", "metadata"]))
    assert docs and all(d["metadata"].get("stage") == "dft" for d in docs), docs
    from cspflow.jobs import category_for

    assert category_for("dft") == "cpu"


def test_dft_vasp_rerun_returns_stored_result_without_running_vasp(db, vasp_env, tmp_path):
    settings, counter = vasp_env
    cid = _add(db, _cu())
    _run(settings, [cid], {}, tmp_path / "run1")
    assert _calls(counter) == 1
    first = db["candidates"].find_one({"candidate_id": cid})["relaxed"]["dft"]

    responses, _ = _run(settings, [cid], {}, tmp_path / "run2")
    assert _calls(counter) == 1  # VASP did not run again
    outputs = [r[1].output for r in responses.values() if r.get(1) is not None]
    reused = [o for o in outputs if getattr(o, "reused", False)]
    assert len(reused) == 1 and reused[0].energy == pytest.approx(first["energy"])
    assert not list((tmp_path / "run2").rglob("INCAR"))
    print(f"\nDFT job run twice on one candidate: VASP ran {_calls(counter)} time(s), "
          f"{len(reused)} stored result reused, 0 recomputed")  # fmt: skip

    # Different settings are different work: the hash changes and VASP runs.
    _run(settings, [cid], {"incar": {"EDIFF": 1e-5}}, tmp_path / "run3")
    assert _calls(counter) == 2
    assert Incar.from_file(_f(_run_dir(tmp_path / "run3"), "INCAR"))["EDIFF"] == 1e-5
    # EDIFF changes the energy: another fidelity, stored beside the first result (which stays
    # the candidate's primary ``relaxed.dft``)
    doc = db["candidates"].find_one({"candidate_id": cid})
    runs = doc["relaxed"]["dft_by_fidelity"]
    assert len(runs) == 2 and runs[0]["fidelity"]["key"] == first["fidelity"]["key"]
    second = runs[1]
    assert second["settings_hash"] != first["settings_hash"]
    assert second["fidelity"]["key"] != first["fidelity"]["key"]
    assert doc["relaxed"]["dft"]["settings_hash"] == first["settings_hash"]


def test_dft_vasp_fuse2_preset_inputs(db, vasp_env, tmp_path):
    settings, counter = vasp_env
    cid = _add(db, _cu())
    _run(settings, [cid], {"preset": "fuse2", "enmax": {"Cu": 295.446}}, tmp_path)
    run_dir = _run_dir(tmp_path)
    incar = Incar.from_file(_f(run_dir, "INCAR"))
    assert incar["ENCUT"] == math.ceil(1.3 * 295.446)
    assert incar["NSW"] == 220 and incar["EDIFFG"] == -0.03
    assert incar["KSPACING"] == 0.3 and incar["KGAMMA"] is True
    assert not _f(run_dir, "KPOINTS").exists()  # KSPACING replaces the KPOINTS file
    cand = db["candidates"].find_one({"candidate_id": cid})
    assert cand["relaxed"]["dft"]["preset"] == "fuse2" and cand["status"] == "dft_done"


def test_dft_vasp_bad_inputs_fail_one_candidate_and_the_rest_go_on(
    db, vasp_env, tmp_path, monkeypatch
):
    settings, counter = vasp_env
    monkeypatch.setenv("FAKE_VASP_CRASH_ELEMENT", "Al")
    good = _add(db, _cu())
    no_potcar = _add(db, Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]]))
    crashes = _add(db, Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.05), ["Al"], [[0, 0, 0]]))
    _run(settings, [no_potcar, crashes, good], {}, tmp_path)

    bad = db["candidates"].find_one({"candidate_id": no_potcar})
    assert bad["status"] == "failed"
    assert "no entry for Po" in bad["relaxed"]["dft"]["reason"]
    assert "Po" in bad["failure_reason"] and "dft" not in bad["energy_per_atom"]
    crashed = db["candidates"].find_one({"candidate_id": crashes})
    assert crashed["status"] == "failed" and crashed["relaxed"]["dft"]["status"] == "failed"
    assert "dft" not in crashed["energy_per_atom"]
    ok = db["candidates"].find_one({"candidate_id": good})
    assert ok["status"] == "dft_done" and ok["relaxed"]["dft"]["status"] == "converged"


def test_dft_vasp_without_command_is_one_clear_line(db, settings, tmp_path):
    assert settings.vasp_cmd is None
    cid = _add(db, _cu())
    _run(settings, [cid], {}, tmp_path)
    cand = db["candidates"].find_one({"candidate_id": cid})
    reason = cand["relaxed"]["dft"]["reason"]
    assert cand["status"] == "failed" and "\n" not in reason
    assert "no VASP command is configured" in reason and "CSPFLOW_VASP_CMD" in reason
    assert not list(tmp_path.rglob("INCAR"))


def test_dft_engine_none_keeps_the_mlip_energy(db, settings, tmp_path):
    cid = _add(db, _cu())
    stage = DftStageMaker(settings=DftSpec(engine="none"))
    run_locally(stage.make([cid]), store=get_jobstore(settings), root_dir=tmp_path)
    cand = db["candidates"].find_one({"candidate_id": cid})
    assert cand["status"] == "selected" and "dft" not in cand.get("relaxed", {})
    from cspflow.dft.stage import final_energy_per_atom

    assert final_energy_per_atom(cand, "none") == -3.0


def test_dft_vasp_task_doc_gives_final_frame_and_ionic_steps(db, vasp_env, tmp_path):
    """The learn stage's labelled frames come out of the stored VASP TaskDoc (dft.taskdoc)."""
    import numpy as np

    from cspflow.dft.taskdoc import final_frame, ionic_steps

    settings, _ = vasp_env
    cid = _add(db, _cu(shift=0.03))
    _run(settings, [cid], {}, tmp_path)
    dft = db["candidates"].find_one({"candidate_id": cid})["relaxed"]["dft"]
    store = get_jobstore(settings)
    store.connect()
    task = store.query_one({"uuid": dft["task_uuid"]}, load=True)["output"]
    last = final_frame(task)
    assert last["energy"] == pytest.approx(dft["energy"]) and last["structure"]
    assert np.shape(last["forces"]) == (4, 3) and last["stress"].shape == (6,)
    steps = ionic_steps(task)
    assert len(steps) > 1 and steps[-1]["energy"] == pytest.approx(dft["energy"])
    assert all(s["structure"] and np.shape(s["forces"]) == (4, 3) for s in steps)
    assert all(s["stress"].shape == (6,) for s in steps)
