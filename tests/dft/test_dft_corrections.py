"""MP2020 corrections of VASP results (cspflow.dft.corrections) and the corrected hull.

The VASP runs use the test VASP executable (tests/dft/fake_vasp.py) with the MP preset and
POTCAR.spec, so emmet's TaskDoc carries the run type, U values and POTCAR titles that pymatgen's
``MaterialsProject2020Compatibility`` checks. The reference is pymatgen itself: the same
candidate entries (from the stored TaskDocs through emmet) and the same Materials Project
entries pymatgen ships, processed by ``MaterialsProject2020Compatibility().process_entries``
and put in a ``PhaseDiagram``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from jobflow import run_locally
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry

from cspflow.dft.corrections import MP_OFFLINE, correct_entry, import_references
from cspflow.dft.stage import DftStageMaker
from cspflow.hull import update_hull
from cspflow.schemas.dft import DftSpec
from cspflow.store import get_jobstore
from cspflow.testing import insert_candidate

FAKE_VASP = Path(__file__).with_name("fake_vasp.py")
OXIDE = "MP2020 anion correction (oxide)"


def _fid(**spec) -> dict:
    """The fidelity of the VASP spec ``_run`` uses (what a campaign with it stores energies at)."""
    return DftSpec(engine="vasp", potcar_spec=True, **spec).fidelity().model_dump()


MP = _fid()  # vasp:PBE:mp:...+mp2020
RAW = _fid(correction=None)  # the same calculation without the scheme


@pytest.fixture
def vasp_env(settings, monkeypatch):
    """Settings with the fake VASP as vasp_cmd; energies shifted near MP's for Mg-Al-O."""
    from cspflow.settings import get_settings

    monkeypatch.setenv("CSPFLOW_VASP_CMD", f"{sys.executable} {FAKE_VASP}")
    monkeypatch.setenv("FAKE_VASP_OFFSET", "-6.45")
    get_settings.cache_clear()
    return get_settings()


def _rocksalt(a: float = 4.21) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def _zincblende(a: float = 4.55) -> Structure:
    return Structure.from_spacegroup(
        "F-43m", Lattice.cubic(a), ["Mg", "O"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    ).get_primitive_structure()


def _spinel(a: float = 8.08) -> Structure:
    conv = Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(a), ["Mg", "Al", "O"], [[0, 0, 0], [0.625] * 3, [0.3874] * 3]
    )
    return conv.get_primitive_structure()


def _run(settings, ids, root, **spec):
    stage = DftStageMaker(settings=DftSpec(engine="vasp", potcar_spec=True, **spec))
    run_locally(stage.make(ids, campaign="test"), store=get_jobstore(settings),
                create_folders=True, root_dir=root)  # fmt: skip


def _task_docs(settings, db, ids):
    store = get_jobstore(settings)
    store.connect()
    out = {}
    for cid in ids:
        dft = db.candidates.find_one({"candidate_id": cid})["relaxed"]["dft"]
        out[cid] = store.query_one({"uuid": dft["task_uuid"]}, load=True)["output"]
    return out


def test_mp2020_corrected_hull_equals_pymatgen_on_the_same_entries(db, vasp_env, tmp_path):
    """Must show: cspflow's corrected e_above_hull for VASP (MP preset) oxide results equals
    pymatgen's MaterialsProject2020Compatibility + PhaseDiagram on the same entries."""
    from emmet.core.tasks import TaskDoc
    from monty.serialization import loadfn
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    settings = vasp_env
    assert DftSpec(engine="vasp").correction == "mp2020"  # the MP preset's default
    ids = [insert_candidate(db, s, mlip_energy=-6.0) for s in (_rocksalt(), _zincblende(),
                                                              _spinel())]  # fmt: skip
    _run(settings, ids, tmp_path)
    # the references at the campaign's fidelity, the hull at it (as a campaign's hull job)
    assert MP["correction"] == "mp2020" and MP["key"].endswith("+mp2020")
    stored, refused = import_references(MP_OFFLINE, db, "Al-Mg-O", "mp2020", fidelity=MP)
    assert stored == 6 and refused == []  # Mg, Al, O2, MgO, Al2O3, MgAl2O4
    doc = update_hull(db, "Al-Mg-O", campaign="test", iteration=0, fidelity=MP)
    assert doc["correction"] == "mp2020" and doc["excluded"] == [] and doc["complete"]
    assert doc["fidelity_key"] == MP["key"]

    # pymatgen on its own: emmet's structure entries of the stored TaskDocs + the shipped entries
    tasks = _task_docs(settings, db, ids)
    cands = []
    for cid, task in tasks.items():
        entry = TaskDoc.model_validate(task).structure_entry
        entry.entry_id = cid
        cands.append(entry)
    import pymatgen.analysis.compatibility as pkg

    shipped = loadfn(str(Path(pkg.__file__).with_name("calc_compounds.json.gz")))
    refs = [e for e in shipped.values() if {str(x) for x in e.composition.elements} <= {
        "Mg", "Al", "O"}]  # fmt: skip
    processed = MaterialsProject2020Compatibility().process_entries(cands + refs)
    assert len(processed) == len(cands) + len(refs)  # nothing dropped on either side
    pd = PhaseDiagram(processed)
    expected = {str(e.entry_id): pd.get_e_above_hull(e) for e in processed}
    by_id = {e["entry_id"]: e for e in doc["entries"]}
    for cid in ids:
        cand = db.candidates.find_one({"candidate_id": cid})
        assert cand["e_above_hull"] == pytest.approx(expected[cid], abs=1e-6)
        assert by_id[cid]["e_above_hull"] == pytest.approx(expected[cid], abs=1e-6)
    for ref in refs:
        assert by_id[f"ref-{ref.entry_id}"]["e_above_hull"] == pytest.approx(
            expected[str(ref.entry_id)], abs=1e-6
        )
    # the stored result: uncorrected engine energy, the correction, the corrected energy
    mine = {str(e.entry_id): e for e in processed}
    for cid in ids:
        dft = db.candidates.find_one({"candidate_id": cid})["relaxed"]["dft"]
        corr = dft["correction"]
        assert corr["scheme"] == "mp2020" and corr["status"] == "applied"
        assert corr["uncorrected_energy_per_atom"] == pytest.approx(dft["energy_per_atom"])
        assert corr["corrected_energy_per_atom"] == pytest.approx(mine[cid].energy_per_atom)
        n_o = mine[cid].composition["O"] / mine[cid].composition.num_atoms
        assert corr["correction_per_atom"] == pytest.approx(-0.687 * n_o)  # MP2020 oxide, eV/O
        assert [a["name"] for a in corr["adjustments"]] == [OXIDE]
    # the same stable set: the rocksalt MgO candidate lies below MP's MgO and displaces it
    ours = {e.entry_id if e.entry_id in ids else f"ref-{e.entry_id}" for e in pd.stable_entries}
    assert set(doc["stable"]) == ours and ids[0] in ours and "ref-mp-1265" not in ours
    print("\nMg-Al-O corrected hull (fake VASP energies, MP references):")
    for e in sorted(doc["entries"], key=lambda x: (x["formula"], x["e_above_hull"])):
        raw = e["uncorrected_energy_per_atom"]
        print(f"  {e['entry_id']:14s} {e['formula']:8s} raw {raw:9.4f} corrected "
              f"{e['energy_per_atom']:9.4f} E_hull {e['e_above_hull'] * 1000:8.1f} meV/atom")  # fmt: skip


def test_refused_vasp_result_is_reported_and_left_out_of_the_corrected_hull(db, vasp_env, tmp_path):
    """An r2SCAN run (not GGA/GGA+U) cannot take MP2020: stored with the reason, left out of
    its fidelity's hull, and listed by the hull output; the GGA result stays in its own hull
    (r2SCAN and PBE are two fidelities, never one hull)."""
    from cspflow.cli import render

    settings = vasp_env
    gga = insert_candidate(db, _rocksalt())
    scan = insert_candidate(db, _zincblende())
    _run(settings, [gga], tmp_path / "gga")
    _run(settings, [scan], tmp_path / "scan", incar={"METAGGA": "R2scan"}, correction="mp2020")
    dft = db.candidates.find_one({"candidate_id": scan})["relaxed"]["dft"]
    assert dft["status"] == "converged"  # the DFT run itself is fine
    assert dft["correction"]["status"] == "refused"
    assert "invalid run type r2SCAN" in dft["correction"]["reason"]
    assert dft["correction"]["corrected_energy_per_atom"] is None
    scan_fid = _fid(incar={"METAGGA": "R2scan"}, correction="mp2020")
    assert dft["fidelity"]["key"] == scan_fid["key"] != MP["key"]
    # the GGA campaign's hull: its result in, the r2SCAN one never mixed in
    import_references(MP_OFFLINE, db, "Mg-O", "mp2020", fidelity=MP)
    gga_doc = update_hull(db, "Mg-O", campaign="test", iteration=0, fidelity=MP)
    ids = {e["entry_id"] for e in gga_doc["entries"]}
    assert gga in ids and scan not in ids and gga_doc["excluded"] == []
    # the r2SCAN campaign's hull: the refused result left out and listed with the reason
    import_references(MP_OFFLINE, db, "Mg-O", "mp2020", fidelity=scan_fid)
    doc = update_hull(db, "Mg-O", campaign="test", iteration=0, fidelity=scan_fid)
    ids = {e["entry_id"] for e in doc["entries"]}
    assert scan not in ids and gga not in ids and doc["correction"] == "mp2020"
    assert doc["excluded"] == [{"entry_id": scan, "formula": "MgO", "source": "candidate",
                                "reason": dft["correction"]["reason"]}]  # fmt: skip
    assert "e_above_hull" not in db.candidates.find_one({"candidate_id": scan})
    caption = render.excluded_caption(doc)
    assert caption is not None and scan in caption and "r2SCAN" in caption
    assert render.hull_json("Mg-O", doc, doc["entries"], None)["excluded"] == doc["excluded"]


def _entry(formula: str, energy_pa: float, potcars: list[str], **params) -> ComputedEntry:
    from pymatgen.core import Composition

    comp = Composition(formula)
    parameters = {"run_type": "GGA", "hubbards": {}, "potcar_symbols": potcars, **params}
    return ComputedEntry(comp, energy_pa * comp.num_atoms, parameters=parameters,
                         entry_id=formula)  # fmt: skip


def test_correct_entry_applies_mp2020_and_refuses_what_it_cannot_process():
    ok = correct_entry(_entry("MgO", -5.984, ["PBE Mg_pv", "PBE O"]), "mp2020")
    assert ok.status == "applied" and ok.correction_per_atom == pytest.approx(-0.687 / 2)
    assert ok.corrected_energy_per_atom == pytest.approx(-5.984 - 0.3435)
    # GGA+U mixing: Fe2O3 with MP's U gets the oxide and the Fe mixing shifts
    fe = correct_entry(_entry("Fe2O3", -7.0, ["PBE Fe_pv", "PBE O"], run_type="GGA+U",
                              hubbards={"Fe": 5.3, "O": 0}), "mp2020")  # fmt: skip
    assert fe.status == "applied"
    assert {a["name"] for a in fe.adjustments} == {
        OXIDE, "MP2020 GGA/GGA+U mixing correction (Fe)"}  # fmt: skip
    cases = {
        "POTCAR": _entry("MgO", -5.9, ["PBE Mg", "PBE O"]),  # Mg instead of MP's Mg_pv
        "run type": _entry("MgO", -5.9, ["PBE Mg_pv", "PBE O"], run_type="r2SCAN"),
        "U value": _entry("Fe2O3", -7.0, ["PBE Fe_pv", "PBE O"]),  # Fe oxide without U
        "no POTCARs": ComputedEntry("MgO", -11.8, parameters={"run_type": "GGA"}),
    }
    for what, entry in cases.items():
        doc = correct_entry(entry, "mp2020")
        assert doc.status == "refused", what
        assert doc.reason and doc.reason.startswith("mp2020 cannot process") and "\n" not in (
            doc.reason), what  # fmt: skip
        assert doc.corrected_energy_per_atom is None and not doc.usable
    assert "Incompatible POTCAR" in correct_entry(cases["POTCAR"], "mp2020").reason
    assert "Invalid U value of 0.0 on Fe" in correct_entry(cases["U value"], "mp2020").reason


def test_refused_reference_is_stored_reported_and_never_mixed(db, tmp_path):
    """References go through the same scheme: one it refuses is listed by the hull, and a
    reference stored without the scheme never enters a corrected hull."""
    from monty.serialization import dumpfn

    from cspflow.errors import CspflowError
    from cspflow.references import load_reference_entries

    path = tmp_path / "refs.json"
    dumpfn([_entry("Mg", -1.6, ["PBE Mg_pv"]), _entry("O2", -4.95, ["PBE O"]),
            _entry("MgO", -5.98, ["PBE Mg", "PBE O"])], path)  # fmt: skip
    stored, refused = import_references(str(path), db, "Mg-O", "mp2020", fidelity=MP)
    assert stored == 3 and len(refused) == 1 and refused[0].startswith("MgO MgO: mp2020")
    # the candidate's result at the mp2020 fidelity, and the same calculation uncorrected
    db.candidates.insert_one(_candidate("c-rs", -6.40, raw=True))
    doc = update_hull(db, "Mg-O", fidelity=MP)
    assert doc["correction"] == "mp2020" and doc["fidelity_key"] == MP["key"]
    assert {e["entry_id"] for e in doc["entries"]} == {"c-rs", "ref-Mg", "ref-O2"}
    assert {e["entry_id"]: e["energy_per_atom"] for e in doc["entries"]}["c-rs"] == -6.40
    assert [(x["entry_id"], x["source"]) for x in doc["excluded"]] == [("ref-MgO", "reference")]
    assert "Incompatible POTCAR" in doc["excluded"][0]["reason"]
    # the same (uncorrected MP-type) file imported without the scheme at the mp2020 fidelity:
    # refused whole, one line, nothing written
    before = list(db.hull_references.find({}, {"_id": 0}))
    with pytest.raises(CspflowError, match="uncorrected and the campaign's energies carry mp2020"):
        load_reference_entries(path, db, fidelity=MP)
    assert list(db.hull_references.find({}, {"_id": 0})) == before
    # a user's file without run parameters is taken at the campaign's fidelity, but stored
    # without the scheme: every such reference is left out of the corrected hull, and said so
    plain_refs = tmp_path / "plain.json"
    dumpfn([ComputedEntry("Mg", -1.6, entry_id="Mg"), ComputedEntry("O2", -9.9, entry_id="O2"),
            ComputedEntry("MgO", -11.96, entry_id="MgO")], plain_refs)  # fmt: skip
    assert load_reference_entries(plain_refs, db, fidelity=MP) == 3
    doc = update_hull(db, "Mg-O", fidelity=MP)
    assert {e["entry_id"] for e in doc["entries"]} == {"c-rs"}
    assert {x["entry_id"] for x in doc["excluded"]} == {"ref-Mg", "ref-O2", "ref-MgO"}
    assert all("without the mp2020 scheme" in x["reason"] for x in doc["excluded"])
    # the uncorrected hull is the fidelity without the scheme: stored engine energies only,
    # none of the mp2020 fidelity's references
    plain = update_hull(db, "Mg-O", fidelity=RAW)
    assert plain["correction"] is None and plain["excluded"] == []
    assert plain["fidelity_key"] == RAW["key"] != MP["key"]
    assert {e["entry_id"]: e["energy_per_atom"] for e in plain["entries"]} == {"c-rs": -6.0}


def _candidate(
    cid: str, corrected: float | None, reason: str | None = None, raw: bool = False
) -> dict:
    """A DFT-done MgO candidate as set_dft_result stores it: its VASP result (-6.0 eV/atom) at
    the mp2020 fidelity with this correction record; ``raw``: also the same calculation at the
    fidelity without the scheme (as a ``correction: null`` campaign stores it)."""
    correction = {"scheme": "mp2020", "status": "refused" if reason else "applied",
                  "reason": reason, "uncorrected_energy_per_atom": -6.0,
                  "correction_per_atom": None if corrected is None else corrected + 6.0,
                  "corrected_energy_per_atom": corrected, "adjustments": []}  # fmt: skip
    run = {"candidate_id": cid, "engine": "vasp", "status": "converged", "energy_per_atom": -6.0,
           "fidelity": MP, "correction": correction, "duplicate_of": None}  # fmt: skip
    runs = [run] + ([{**run, "fidelity": RAW, "correction": None}] if raw else [])
    return {
        "candidate_id": cid, "composition": {"Mg": 1.0, "O": 1.0}, "formula": "MgO",
        "chemsys": "Mg-O", "status": "dft_done", "fingerprint_hash": cid, "bucket": cid,
        "energy_per_atom": {"mlip": -6.1, "dft": -6.0}, "duplicate_of": None,
        "relaxed": {"dft": run, "dft_by_fidelity": runs},
    }  # fmt: skip


def test_stored_result_gets_the_correction_without_rerunning_vasp(db, vasp_env, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """A result recorded without a scheme (``correction: null``) is corrected from its stored
    TaskDoc when a spec with mp2020 reuses it: VASP does not run again. The two specs are two
    fidelities (``...`` and ``...+mp2020``): the corrected copy is stored at the mp2020 one and
    the uncorrected result stays as it was at its own."""
    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_VASP_COUNTER", str(counter))
    cid = insert_candidate(db, _rocksalt())
    _run(vasp_env, [cid], tmp_path / "plain", correction=None)
    first = db.candidates.find_one({"candidate_id": cid})["relaxed"]["dft"]
    assert first["correction"] is None and len(counter.read_text().splitlines()) == 1
    assert first["fidelity"]["key"] == RAW["key"]
    _run(vasp_env, [cid], tmp_path / "again")  # the mp preset's default: mp2020
    assert len(counter.read_text().splitlines()) == 1  # reused, not rerun
    from cspflow.store.candidates import dft_result_at

    cand = db.candidates.find_one({"candidate_id": cid})
    assert [r["fidelity"]["key"] for r in cand["relaxed"]["dft_by_fidelity"]] == [
        RAW["key"], MP["key"]]  # fmt: skip
    assert cand["relaxed"]["dft"]["correction"] is None  # the primary (first) result: as it was
    assert dft_result_at(cand, RAW["key"])["correction"] is None
    dft = dft_result_at(cand, MP["key"])
    assert dft["settings_hash"] == first["settings_hash"] and dft["energy"] == first["energy"]
    assert dft["task_uuid"] == first["task_uuid"]
    assert dft["correction"]["status"] == "applied"
    assert dft["correction"]["corrected_energy_per_atom"] == pytest.approx(
        first["energy_per_atom"] - 0.687 / 2
    )
    # the other way round: an mp2020 result serves a `correction: null` spec, uncorrected
    other = insert_candidate(db, _zincblende())
    _run(vasp_env, [other], tmp_path / "mp-first")
    _run(vasp_env, [other], tmp_path / "raw-second", correction=None)
    assert len(counter.read_text().splitlines()) == 2  # one VASP run for the new candidate
    cand = db.candidates.find_one({"candidate_id": other})
    done, raw = dft_result_at(cand, MP["key"]), dft_result_at(cand, RAW["key"])
    assert done["correction"]["status"] == "applied" and raw["correction"] is None
    assert raw["energy"] == done["energy"] and raw["task_uuid"] == done["task_uuid"]


def test_campaign_imports_mp_references_through_its_scheme_and_mlip_hulls_stay_raw(db):
    """`references: pymatgen:mp` with VASP: the shipped MP entries of the system, processed by
    mp2020 at registration. An MLIP hull is never corrected (CHGNet is trained on MP energies
    that already carry the corrections)."""
    from cspflow.campaign.state import register_campaign
    from cspflow.schemas.campaign import parse_spec

    spec = parse_spec({"name": "spinel", "compositions": ["MgAl2O4"], "max_atoms": 14,
                       "references": "pymatgen:mp", "dft": {"engine": "vasp"}})  # fmt: skip
    assert spec.dft.correction == "mp2020"
    register_campaign(db, spec)
    refs = {r["formula"]: r for r in db.hull_references.find({})}
    assert sorted(refs) == ["Al", "Al2O3", "Mg", "MgAl2O4", "MgO", "O2"]
    assert refs["MgO"]["energy_per_atom"] == pytest.approx(-5.98398714)  # as shipped: raw
    assert refs["MgO"]["correction"]["corrected_energy_per_atom"] == pytest.approx(-6.32748714)
    assert all(r["correction"]["status"] == "applied" for r in refs.values())
    assert {r["fidelity_key"] for r in refs.values()} == {spec.dft.fidelity().key}
    db.hull_references.delete_many({})  # (references alone make a DFT hull)
    from cspflow.schemas.prerelax import MlipRelaxDoc
    from cspflow.store.candidates import set_mlip_result

    cid = insert_candidate(db, _spinel(), campaign="spinel")
    set_mlip_result(db, cid, MlipRelaxDoc(structure=_spinel().as_dict(), energy_per_atom=-7.4,
                                          model_id="chgnet-0.3.0", key=cid))  # fmt: skip
    # as the campaign's hull job calls it: no DFT entry at its fidelity yet, its MLIP one
    doc = update_hull(db, "Al-Mg-O", campaign="spinel", iteration=0, correction="mp2020")
    assert doc["level"] == "mlip" and doc["correction"] is None and doc["excluded"] == []
    assert doc["fidelity_key"] == "mlip:chgnet-0.3.0"


def test_results_hull_names_the_scheme_and_lists_what_it_left_out(db, settings, capsys):
    """`cspflow results hull` (table and --json) of a corrected hull with one refused entry."""
    import json

    from cspflow.campaign.state import register_campaign
    from cspflow.cli.main import main
    from cspflow.schemas.campaign import parse_spec

    register_campaign(
        db,
        parse_spec(
            {
                "name": "mgo",
                "compositions": ["MgO"],
                "max_atoms": 2,
                "references": "pymatgen:mp",
                "dft": {"engine": "vasp"},
            }
        ),
    )
    db.candidates.insert_one(_candidate("c-ok", -6.35))
    db.candidates.insert_one(
        _candidate(
            "c-scan",
            None,
            "mp2020 cannot process this entry: Entry c-scan has invalid run type r2SCAN.",
        )
    )
    update_hull(db, "Mg-O", campaign="mgo", iteration=0, correction="mp2020")

    def cli(args):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert not exc.value.code
        return capsys.readouterr().out

    table = cli(["results", "hull", "mgo"])
    assert "mp2020-corrected" in table and "left out (1, never mixed in)" in table
    assert "c-scan MgO (candidate): mp2020 cannot process" in table.replace("\n", " ")
    data = json.loads(cli(["results", "hull", "mgo", "--json"]))
    assert data["correction"] == "mp2020"
    assert [x["entry_id"] for x in data["excluded"]] == ["c-scan"]
    energies = {e["entry_id"]: e["energy_per_atom"] for e in data["entries"]}
    assert energies["c-ok"] == -6.35 and "c-scan" not in energies
    assert energies["ref-mp-1265"] == pytest.approx(-6.32748714)  # MP's MgO, corrected
