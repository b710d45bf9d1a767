"""Fidelity keys and hashes, the per-fidelity current model, and the fidelity errors of the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _key(**dft) -> str:
    from cspflow.schemas.dft import DftSpec

    return DftSpec.model_validate(dft).fidelity().key


def test_dft_key_names_engine_functional_preset_and_hashes_energy_settings():
    pbe = _key(engine="gpaw")
    assert pbe.startswith("gpaw:PBE:fast:") and len(pbe.split(":")[-1]) == 8
    # stable: the same spec gives the same key, whatever the key order of the overrides
    assert _key(engine="gpaw", gpaw={"ecut": 400, "xc": "PBE"}) == _key(
        engine="gpaw", gpaw={"xc": "PBE", "ecut": 400}
    )
    # what changes the energy changes the key ...
    changed = [
        _key(engine="gpaw", gpaw={"xc": "LDA"}),
        _key(engine="gpaw", gpaw={"ecut": 400}),
        _key(engine="gpaw", kpoint_density=3.0),
        _key(engine="gpaw", gpaw={"occupations": {"name": "fermi-dirac", "width": 0.1}}),
        _key(engine="gpaw", gpaw={"spinpol": True}),
        _key(engine="gpaw", preset="accurate"),
        _key(engine="gpaw", dispersion="d3bj"),
    ]
    assert len({pbe, *changed}) == len(changed) + 1
    assert changed[0].startswith("gpaw:LDA:fast:") and changed[-1].endswith("+d3bj")
    # ... what only steers the optimiser does not
    assert _key(engine="gpaw", fmax=0.01, steps=5, relax="positions") == pbe
    assert _key(engine="gpaw", preset="fast") == pbe  # the default preset named or not


def test_vasp_and_cp2k_keys():
    mp = _key(engine="vasp")
    assert mp.startswith("vasp:PBE:mp:")
    assert _key(engine="vasp", incar={"NCORE": 4, "EDIFFG": -0.01}) == mp  # run controls
    assert _key(engine="vasp", incar={"LDAUU": {"O": {"Fe": 5.3}}}) != mp  # U values
    assert _key(engine="vasp", incar={"METAGGA": "r2scan"}).startswith("vasp:R2SCAN:mp:")
    assert _key(engine="vasp", incar={"GGA": "PS"}).startswith("vasp:PBEsol:mp:")
    assert _key(engine="vasp", correction="mp2020").endswith("+mp2020")
    assert _key(engine="cp2k").startswith("cp2k:PBE:fast:")
    assert _key(engine="cp2k", cp2k={"cutoff": 400}) != _key(engine="cp2k")
    from cspflow.schemas.dft import DftSpec

    assert DftSpec(engine="none").fidelity() is None


def test_mlip_and_unknown_keys_never_meet_known_ones():
    from cspflow.schemas.fidelity import mlip_fidelity, unknown_fidelity

    assert mlip_fidelity("chgnet-0.3.0").key == "mlip:chgnet-0.3.0"
    assert mlip_fidelity("chgnet-0.3.0", "d3bj").key == "mlip:chgnet-0.3.0+d3bj"
    old = unknown_fidelity("dft", "gpaw", "fast")
    assert old.key == "unknown:dft:gpaw:fast" and not old.known
    assert old.key != _key(engine="gpaw")


def test_correction_is_for_vasp_only():
    from pydantic import ValidationError

    from cspflow.schemas.campaign import parse_spec
    from cspflow.schemas.dft import DftSpec

    with pytest.raises(ValidationError, match="dft.correction mp2020 is for VASP energies"):
        DftSpec(engine="gpaw", correction="mp2020")
    assert DftSpec(engine="vasp", correction="mp2020").correction == "mp2020"
    from cspflow.errors import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec({"name": "x", "compositions": ["Si"],
                    "dft": {"engine": "cp2k", "correction": "mp2020"}})  # fmt: skip
    assert err.value.problems == [
        "dft: dft.correction mp2020 is for VASP energies (MP-compatible inputs); dft.engine "
        "cp2k has no correction scheme: remove dft.correction"
    ]


def _model(db, model_id: str, key: str, created: int) -> None:
    import datetime

    db.models.insert_one({
        "model_id": model_id, "chemsys": "Si", "promoted": True, "fidelity_key": key,
        "created_at": datetime.datetime(2026, 1, created),
    })  # fmt: skip


def test_current_model_is_per_fidelity(db):
    from cspflow.models import current_model, current_model_spec

    pbe, lda = _key(engine="gpaw"), _key(engine="gpaw", gpaw={"xc": "LDA"})
    _model(db, "mace-pbe", pbe, 1)
    _model(db, "mace-lda", lda, 2)  # newer, but trained on LDA labels
    assert current_model(db, "Si", pbe)["model_id"] == "mace-pbe"
    assert current_model(db, "Si", lda)["model_id"] == "mace-lda"
    assert current_model_spec(db, "Si", "chgnet", fidelity=_key(engine="cp2k")) == "chgnet"
    assert current_model_spec(db, "Si", "chgnet", fidelity=pbe) == "registry:mace-pbe"


def test_campaign_prerelax_model_is_the_current_model_of_its_fidelity(db):
    from cspflow.campaign.loop import prerelax_model
    from cspflow.schemas.campaign import parse_spec

    lda = _key(engine="gpaw", gpaw={"xc": "LDA"})
    _model(db, "mace-lda", lda, 2)
    spec = {"name": "x", "compositions": ["Si"], "learn": {"enabled": True}}
    assert prerelax_model(parse_spec(spec)) == "chgnet"
    spec["dft"] = {"engine": "gpaw", "gpaw": {"xc": "LDA"}}
    assert prerelax_model(parse_spec(spec)) == "registry:mace-lda"


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "cspflow.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_fidelity_errors_are_one_line_and_store_nothing(db, settings, tmp_path):
    from monty.serialization import dumpfn
    from pymatgen.entries.computed_entries import ComputedEntry

    from cspflow.testing.cli import cli_env

    env = cli_env(settings)
    # references that are MP VASP data, for a GPAW campaign
    refs = tmp_path / "mp.json"
    dumpfn([ComputedEntry("Si2", -10.8, entry_id="mp-149", parameters={"run_type": "GGA"})],
           refs)  # fmt: skip
    spec = tmp_path / "si.yaml"
    spec.write_text(f"name: si\ncompositions: [Si]\nreferences: {refs}\n")
    out = _cli(env, "campaign", "submit", str(spec))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: reference entry mp-149 (Si)")
    assert "Materials Project VASP data" in out.stderr
    # a correction for a non-VASP engine
    spec.write_text("name: si\ncompositions: [Si]\ndft: {engine: gpaw, correction: mp2020}\n")
    out = _cli(env, "campaign", "submit", str(spec))
    assert out.returncode == 2 and out.stderr.startswith("error:"), out.stderr
    assert "dft.correction mp2020 is for VASP energies" in out.stderr
    assert "dft.engine gpaw" in out.stderr
    assert db.campaigns.count_documents({}) == 0
    assert db.hull_references.count_documents({}) == 0
    assert db.fireworks.count_documents({}) == 0
    # --fidelity naming a fidelity without a hull
    import datetime

    db.campaigns.insert_one({"name": "si", "chemsys": "Si", "spec": {"dft": {"engine": "gpaw"}}})
    for key in (_key(engine="gpaw"), _key(engine="gpaw", gpaw={"xc": "LDA"})):
        db.hull.insert_one({"chemsys": "Si", "version": 1, "level": "dft", "fidelity_key": key,
                            "complete": True, "stable": [], "stable_formulas": [], "entries": [],
                            "created_at": datetime.datetime.now()})  # fmt: skip
    out = _cli(env, "results", "hull", "si", "--fidelity", "gpaw:XC:none:0", "--json")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stdout == ""
    assert out.stderr.startswith("error: no Si hull at fidelity 'gpaw:XC:none:0'")
    assert _key(engine="gpaw", gpaw={"xc": "LDA"}) in out.stderr
    # without --fidelity: the campaign's own
    out = _cli(env, "results", "hull", "si", "--json")
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout)["fidelity_key"] == _key(engine="gpaw")
