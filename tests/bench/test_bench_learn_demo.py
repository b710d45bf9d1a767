"""``bench/learn_demo.py``: the re-screen that asks where each model ranks the DFT ground state."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cspflow.testing import insert_candidate

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "learn_demo.py"


def _script():
    spec = importlib.util.spec_from_file_location("learn_demo_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _si(kind: str, a: float):
    from pymatgen.core import Lattice, Structure

    if kind == "diamond":
        return Structure(Lattice.cubic(a), ["Si"] * 8, [
            [0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
            [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])  # fmt: skip
    if kind == "sc":
        return Structure(Lattice.cubic(a), ["Si"], [[0, 0, 0]])
    return Structure(Lattice.cubic(a), ["Si"] * 4, [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])  # fmt: skip


def _labelled(db, kind: str, a: float, dft: float | None) -> str:
    cid = insert_candidate(db, _si(kind, a), status="dft_done" if dft else "prerelaxed",
                           campaign="si-demo")  # fmt: skip
    if dft is not None:
        db.candidates.update_one({"candidate_id": cid}, {"$set": {
            "energy_per_atom.dft": dft, "relaxed.dft": {"structure": _si(kind, a * 1.01).as_dict()}}})  # fmt: skip
    return cid


def test_ground_state_is_the_lowest_dft_structure_ranked_by_each_model(db, capsys, monkeypatch):
    """DFT (here: recorded labels) says simple cubic is lowest; CHGNet relaxes the three
    starts and puts diamond first, simple cubic second, so the DFT ground state is CHGNet's
    rank 2, above its rank 1 by CHGNet's diamond-sc gap."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run as a script (learn_case)
    demo = _script()
    db.campaigns.insert_one({"name": "si-demo", "state": "completed"})
    _labelled(db, "diamond", 5.47, -5.30)
    sc = _labelled(db, "sc", 2.55, -5.40)
    _labelled(db, "fcc", 3.85, None)
    table = demo.rescreen(db, "si-demo")
    assert table["ground_state"]["candidate_id"] == sc and table["candidates"] == 3
    m = table["models"]["chgnet"]
    assert list(table["models"]) == ["chgnet"]  # no learning round registered a model
    assert m["relaxed"] == 3 and m["ground_state_rank"] == 2
    assert m["rank1_spacegroup"] == 227 and not m["rank1_is_ground_state"]
    assert 100 < m["ground_state_above_rank1_mev_per_atom"] < 600  # sc above diamond in CHGNet
    assert "| chgnet | 2 | 227 |" in demo.render(table)


def test_bad_campaign_is_one_line_and_exit_2(db, settings, capsys, monkeypatch):
    demo = _script()
    monkeypatch.setattr("cspflow.store.get_database", lambda *a, **k: db)
    assert demo.main(["nope"]) == 2
    assert capsys.readouterr().err == "error: no campaign named 'nope' in this database\n"
    db.campaigns.insert_one({"name": "empty", "state": "completed"})
    _labelled(db, "sc", 2.55, None)  # a candidate without DFT
    db.candidates.update_many({}, {"$set": {"campaign": "empty"}})
    assert demo.main(["empty"]) == 2
    err = capsys.readouterr().err
    assert err == "error: campaign 'empty' has no converged DFT result to compare with\n"
    with pytest.raises(SystemExit):
        demo.main(["--help"])
