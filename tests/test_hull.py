"""Convex hull from stored candidates: one fidelity per hull, versions, e_above_hull, plots."""

from __future__ import annotations

import pytest

from cspflow.hull import HullEntry, compute_hull, latest_hull, plot_hull, update_hull

PBE = {"key": "gpaw:PBE:fast:00000000", "level": "dft", "engine": "gpaw", "functional": "PBE"}
CHGNET = {"key": "mlip:chgnet-0.3.0", "level": "mlip", "model_id": "chgnet-0.3.0"}


def _relaxed(e_mlip, e_dft, dft_status, fidelity=PBE):
    out = {}
    if e_mlip is not None:
        out["mlip"] = {"energy_per_atom": e_mlip, "fidelity": CHGNET}
    if e_dft is not None:
        run = {"status": dft_status, "energy_per_atom": e_dft, "fidelity": fidelity}
        out["dft"] = run
        out["dft_by_fidelity"] = [run]
    return out


def cand(cid, comp, e_mlip=None, e_dft=None, dft_status="converged", status="dft_done", dup=None,
         fidelity=PBE):  # fmt: skip
    from pymatgen.core import Composition

    c = Composition(comp)
    return {
        "candidate_id": cid,
        "composition": {str(k): float(v) for k, v in c.items()},
        "formula": c.reduced_formula,
        "chemsys": "-".join(sorted(str(e) for e in c.elements)),
        "status": status,
        "energy_per_atom": {"mlip": e_mlip, "dft": e_dft},
        "relaxed": _relaxed(e_mlip, e_dft, dft_status, fidelity or PBE),
        "duplicate_of": dup,
        "fingerprint_hash": cid,
        "bucket": cid,
    }


def test_binary_hull_pure():
    entries = [
        HullEntry("na", "Na", {"Na": 2}, -1.3),
        HullEntry("cl", "Cl2", {"Cl": 4}, -1.8),
        HullEntry("rs", "NaCl", {"Na": 4, "Cl": 4}, -3.4),
        HullEntry("cscl", "NaCl", {"Na": 1, "Cl": 1}, -3.3),
    ]
    r = compute_hull(entries, "Cl-Na")
    assert r.complete and r.stable == ["cl", "na", "rs"]
    assert r.e_above_hull["rs"] == 0 and r.e_above_hull["cscl"] == pytest.approx(0.1)
    assert r.formation_energy_per_atom["rs"] == pytest.approx(-3.4 - (-1.3 - 1.8) / 2)


def test_missing_elements_rank_per_composition():
    r = compute_hull([HullEntry("a", "NaCl", {"Na": 1, "Cl": 1}, -3.3),
                      HullEntry("b", "NaCl", {"Na": 2, "Cl": 2}, -3.25)], "Cl-Na")  # fmt: skip
    assert not r.complete and r.missing_elements == ["Cl", "Na"]
    assert r.e_above_hull == {"a": 0.0, "b": pytest.approx(0.05)}


def test_update_hull_never_mixes_levels_and_versions(db, tmp_path):
    db.candidates.insert_many([
        cand("si-d", "Si2", e_mlip=-5.40, e_dft=-5.42),
        cand("si-b", "Si8", e_mlip=-5.30, e_dft=None, status="prerelaxed"),
        cand("si-u", "Si4", e_mlip=-5.45, e_dft=-5.50, dft_status="unconverged"),
        cand("si-f", "Si2", e_mlip=-9.0, status="failed"),
    ])  # fmt: skip
    doc = update_hull(db, "Si", campaign="c", iteration=0)
    # a converged DFT entry exists -> DFT-only hull; unconverged DFT and MLIP energies are left out
    assert doc["level"] == "dft" and doc["version"] == 1
    assert [e["entry_id"] for e in doc["entries"]] == ["si-d"]
    assert db.candidates.find_one({"candidate_id": "si-d"})["e_above_hull"] == 0.0
    assert "e_above_hull" not in db.candidates.find_one({"candidate_id": "si-b"})

    db.candidates.insert_one(cand("si-h", "Si2", e_mlip=-5.2, e_dft=-5.47))
    doc2 = update_hull(db, "Si", campaign="c", iteration=1)
    assert doc2["version"] == 2
    assert doc2["added_to_stable"] == ["si-h"] and doc2["removed_from_stable"] == ["si-d"]
    assert db.candidates.find_one({"candidate_id": "si-d"})["e_above_hull"] == pytest.approx(0.05)
    assert latest_hull(db, "Si")["version"] == 2
    # the same iteration's hull job rerun (its worker died after storing): no new version
    assert update_hull(db, "Si", campaign="c", iteration=1)["version"] == 2
    # new data in the same iteration, or another iteration: a new version
    db.candidates.insert_one(cand("si-k", "Si2", e_mlip=-5.1, e_dft=-5.30))
    assert update_hull(db, "Si", campaign="c", iteration=1)["version"] == 3
    assert update_hull(db, "Si", campaign="c", iteration=2)["version"] == 4
    assert db.hull.count_documents({"chemsys": "Si"}) == 4
    png = plot_hull(doc2, tmp_path / "si.png")
    assert png.stat().st_size > 5000


def test_mlip_hull_when_no_dft_and_binary_plot(db, tmp_path):
    db.candidates.insert_many([
        cand("na", "Na2", e_mlip=-1.3, status="prerelaxed"),
        cand("cl", "Cl4", e_mlip=-1.8, status="prerelaxed"),
        cand("rs", "Na4Cl4", e_mlip=-3.4, status="prerelaxed"),
        cand("dup", "Na4Cl4", e_mlip=-3.4, status="prerelaxed", dup="rs"),
    ])  # fmt: skip
    doc = update_hull(db, "Cl-Na")
    assert doc["level"] == "mlip" and doc["complete"]
    assert doc["stable_formulas"] == ["Cl2", "Na", "NaCl"]
    assert "dup" not in {e["entry_id"] for e in doc["entries"]}
    assert plot_hull(doc, tmp_path / "nacl.png").stat().st_size > 5000


def test_no_entries_gives_none(db):
    assert update_hull(db, "Mg-O") is None


def test_reference_entries_complete_a_dft_hull(db, tmp_path):
    from monty.serialization import dumpfn
    from pymatgen.entries.computed_entries import ComputedEntry

    refs = tmp_path / "refs.json"
    dumpfn(
        [ComputedEntry("Na2", -2.6, entry_id="na-bcc"), ComputedEntry("Cl4", -7.2, entry_id="cl2")],
        refs,
    )
    from cspflow.references import load_reference_entries

    assert load_reference_entries(refs, db, fidelity=PBE) == 2
    db.candidates.insert_many([cand("rs", "Na4Cl4", e_mlip=-3.3, e_dft=-3.4),
                               cand("cs", "NaCl", e_mlip=-3.3, e_dft=-3.3)])  # fmt: skip
    doc = update_hull(db, "Cl-Na")
    assert doc["level"] == "dft" and doc["complete"]
    assert doc["stable"] == ["ref-cl2", "ref-na-bcc", "rs"]
    assert db.candidates.find_one({"candidate_id": "cs"})["e_above_hull"] == pytest.approx(0.1)


def test_unreadable_reference_file_stores_nothing(db, tmp_path):
    from cspflow.campaign.state import register_campaign
    from cspflow.errors import CspflowError
    from cspflow.schemas.campaign import parse_spec

    bad = tmp_path / "refs.json"
    bad.write_text("{not json")
    spec = parse_spec({"name": "r", "compositions": ["NaCl"], "references": str(bad)})
    with pytest.raises(CspflowError, match="cannot read reference entries"):
        register_campaign(db, spec)
    assert db.campaigns.count_documents({}) == 0


LDA = {"key": "gpaw:LDA:fast:11111111", "level": "dft", "engine": "gpaw", "functional": "LDA"}


def test_two_fidelities_give_two_hulls_each_from_its_own_entries(db):
    from cspflow.errors import CspflowError

    pbe = cand("si-pbe", "Si2", e_mlip=-5.4, e_dft=-5.42)
    both = cand("si-both", "Si2", e_mlip=-5.3, e_dft=-5.40)
    lda_run = {"status": "converged", "energy_per_atom": -5.95, "fidelity": LDA}
    both["relaxed"]["dft_by_fidelity"].append(lda_run)
    lda = cand("si-lda", "Si8", e_mlip=-5.2, e_dft=-5.90, fidelity=None)
    lda["relaxed"] = _relaxed(-5.2, -5.90, "converged", fidelity=LDA)
    # a failure at LDA of a PBE-converged candidate leaves it on the PBE hull
    pbe["relaxed"]["dft_by_fidelity"].append({"status": "failed", "fidelity": LDA})
    db.candidates.insert_many([pbe, both, lda])
    # no campaign names the fidelity and the system has two: a one-line error naming both
    with pytest.raises(CspflowError, match="2 fidelities .*gpaw:LDA:fast:11111111"):
        update_hull(db, "Si")
    h_pbe = update_hull(db, "Si", fidelity=PBE)
    h_lda = update_hull(db, "Si", fidelity=LDA)
    assert h_pbe["fidelity_key"] == PBE["key"] and h_lda["fidelity_key"] == LDA["key"]
    assert {e["entry_id"]: e["energy_per_atom"] for e in h_pbe["entries"]} == {
        "si-pbe": -5.42, "si-both": -5.40}  # fmt: skip
    assert {e["entry_id"]: e["energy_per_atom"] for e in h_lda["entries"]} == {
        "si-both": -5.95, "si-lda": -5.90}  # fmt: skip
    assert h_pbe["stable"] == ["si-pbe"] and h_lda["stable"] == ["si-both"]
    # versions count per fidelity, and each latest hull is found by its key
    assert h_pbe["version"] == 1 and h_lda["version"] == 1
    assert update_hull(db, "Si", fidelity=PBE, campaign="x", iteration=1)["version"] == 2
    assert latest_hull(db, "Si", LDA["key"])["version"] == 1
    assert h_lda["complete"] and h_lda["incomplete_reason"] is None


def test_incomplete_hull_says_why_at_its_fidelity(db):
    db.candidates.insert_one(cand("nacl", "NaCl", e_mlip=-3.3, e_dft=-3.4))
    doc = update_hull(db, "Cl-Na", fidelity=PBE)
    assert not doc["complete"] and doc["missing_elements"] == ["Cl", "Na"]
    assert "Cl, Na at fidelity gpaw:PBE:fast:00000000" in doc["incomplete_reason"]


def test_references_of_another_fidelity_are_refused_and_nothing_is_stored(db, tmp_path):
    from monty.serialization import dumpfn
    from pymatgen.entries.computed_entries import ComputedEntry

    from cspflow.errors import CspflowError
    from cspflow.references import load_reference_entries

    ok = ComputedEntry("Na2", -2.6, entry_id="na")
    tagged = ComputedEntry("Cl2", -3.6, entry_id="cl", data={"fidelity_key": LDA["key"]})
    mp = ComputedEntry("Cl2", -3.6, entry_id="mp-22848", parameters={"run_type": "GGA"})
    for bad, why in ((tagged, "it is at fidelity gpaw:LDA"), (mp, "Materials Project VASP")):
        path = tmp_path / f"{bad.entry_id}.json"
        dumpfn([ok, bad], path)
        with pytest.raises(CspflowError, match=why) as err:
            load_reference_entries(path, db, fidelity=PBE)
        assert "\n" not in str(err.value)
        assert db.hull_references.count_documents({}) == 0
    path = tmp_path / "ok.json"
    dumpfn([ok, ComputedEntry("Cl2", -3.6, entry_id="cl", data={"fidelity_key": PBE["key"]})],
           path)  # fmt: skip
    assert load_reference_entries(path, db, fidelity=PBE) == 2
    assert set(db.hull_references.distinct("fidelity_key")) == {PBE["key"]}
