"""Convex hull from stored candidates: one fidelity per hull, versions, e_above_hull, plots."""

from __future__ import annotations

import pytest

from cspflow.hull import HullEntry, compute_hull, latest_hull, plot_hull, update_hull


def cand(cid, comp, e_mlip=None, e_dft=None, dft_status="converged", status="dft_done", dup=None):
    from pymatgen.core import Composition

    c = Composition(comp)
    return {
        "candidate_id": cid,
        "composition": {str(k): float(v) for k, v in c.items()},
        "formula": c.reduced_formula,
        "chemsys": "-".join(sorted(str(e) for e in c.elements)),
        "status": status,
        "energy_per_atom": {"mlip": e_mlip, "dft": e_dft},
        "relaxed": {"dft": {"status": dft_status}} if e_dft is not None else {},
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
    from cspflow.hull import load_reference_entries

    assert load_reference_entries(refs, db) == 2
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
