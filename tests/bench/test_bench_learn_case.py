"""``bench/learn_case.py``: the verdict table from cached results, and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "learn_case.py"


def _script():
    spec = importlib.util.spec_from_file_location("learn_case_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _structure(a: float) -> dict:
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(a), ["Ba", "Cl", "Cl"], [[0, 0, 0], [0.25] * 3, [0.75] * 3]
    ).as_dict()


def _cache(lc, work: Path, label: str, chgnet: float, dft: list[float] | None) -> None:
    """Cached CHGNet result and (optionally) a DFT run with frames of the given energies/atom."""
    row = {"type": label, "template": f"id-{label}", "nsites": 3, "spacegroup": 225, "steps": 5,
           "energy_per_atom": chgnet, "wall_s": 1.0, "status": "converged", "reason": None,
           "structure": _structure(6.0)}  # fmt: skip
    path = lc._cache(work, "BaCl2", label, "chgnet")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))
    if dft is None:
        return
    frames = [{"structure": _structure(6.0 + 0.01 * k), "energy": 3 * e,
               "forces": [[0.1 * k, 0, 0]] * 3, "stress": [0.001] * 6} for k, e in enumerate(dft)]  # fmt: skip
    frames.append(dict(frames[-1]))  # ASE repeats the last configuration: counted once
    dft_row = {"type": label, "mode": "cell", "settings": {"ecut": 300.0}, "status": "converged",
               "reason": None, "energy_per_atom": dft[-1], "spacegroup": 225, "wall_s": 10.0,
               "frames": frames}  # fmt: skip
    lc._cache(work, "BaCl2", label, "dft_cell").write_text(json.dumps(dft_row))


def test_table_ranks_relative_energies_and_verdict(tmp_path):
    lc = _script()
    # CHGNet: A lowest, B 15 meV above. DFT relaxed: B 20 meV below A -> ranks swap.
    # DFT at the CHGNet geometry (first frame): A -4.300, B -4.295 -> A still first there.
    _cache(lc, tmp_path, "A", -4.80, [-4.300, -4.310])
    _cache(lc, tmp_path, "B", -4.785, [-4.295, -4.330])
    _cache(lc, tmp_path, "C", -4.70, None)  # no DFT yet: listed, not ranked
    result = lc.table("BaCl2", ["A", "B", "C"], tmp_path)
    rows = {r["type"]: r for r in result["rows"]}
    assert result["compared"] == 2
    assert (rows["A"]["chgnet_rank"], rows["B"]["chgnet_rank"]) == (1, 2)
    assert (rows["A"]["dft_rank"], rows["B"]["dft_rank"]) == (2, 1)
    assert (rows["A"]["dft_sp_rank"], rows["B"]["dft_sp_rank"]) == (1, 2)
    assert rows["A"]["dft_rel_meV"] == pytest.approx(20.0)
    assert rows["B"]["chgnet_rel_meV"] == pytest.approx(15.0)
    assert rows["B"]["error_meV"] == pytest.approx(15.0)
    assert rows["A"]["error_meV"] == pytest.approx(-20.0)
    assert result["max_rel_error_meV"] == pytest.approx(20.0)
    assert (result["chgnet_first"], result["dft_first"], result["dft_sp_first"]) == ("A", "B", "A")
    assert result["qualifies"] is True
    assert rows["A"]["dft_frames"] == 2  # the repeated last frame is dropped
    assert rows["C"]["dft_rank"] is None and rows["C"]["dft_status"] == "not run"
    n = lc.write_extxyz("BaCl2", ["A", "B", "C"], tmp_path, lc.DEFAULT, tmp_path / "f.extxyz")
    assert n == 4
    from ase.io import read

    images = read(tmp_path / "f.extxyz", index=":")
    assert [a.info["structure_type"] for a in images] == ["A", "A", "B", "B"]
    assert images[3].get_potential_energy() == pytest.approx(3 * -4.330)
    assert images[1].get_forces()[0, 0] == pytest.approx(0.1)
    assert images[0].get_stress()[0] == pytest.approx(0.001)


def test_same_ranking_within_10_meV_does_not_qualify(tmp_path):
    lc = _script()
    _cache(lc, tmp_path, "A", -4.80, [-4.30])
    _cache(lc, tmp_path, "B", -4.79, [-4.295])  # CHGNet +10, DFT +5: error 5 meV/atom
    result = lc.table("BaCl2", ["A", "B"], tmp_path)
    assert result["max_rel_error_meV"] == pytest.approx(5.0)
    assert result["qualifies"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["BaCl2", "Cotunnite", "Nonsuch"], "error: no AB2 template named 'Nonsuch'; known: "),
        (["Xx2Q", "Fluorite"], "error: cannot read composition 'Xx2Q'"),
        (["BaCl2", "Fluorite", "--preset", "huge"], "error: unknown gpaw preset 'huge'"),
        (["BaCl2", "Fluorite", "--only", "Rutile"], "error: --only names a type not listed"),
        (["BaCl2", "Fluorite", "--ecut", "-5"], "error: --ecut must be positive, not -5"),
        (
            ["BaCl2", "Fluorite", "Rutile", "--finetune", "Pyrite"],
            "error: --finetune holds out a type not listed: Pyrite",
        ),
        (
            ["BaCl2", "Fluorite", "Rutile", "--finetune", "Fluorite", "Rutile"],
            "error: --finetune must leave at least one type to train on",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out), "--work",
                           str(work)], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert proc.stdout == ""
    assert not out.exists() and not work.exists()


def test_finetune_frames_carry_the_learn_stage_labels_one_candidate_per_type(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import _finetune
    finally:
        sys.path.remove(str(SCRIPT.parent))
    lc = _script()
    _cache(lc, tmp_path, "A", -4.80, [-4.300, -4.310])
    _cache(lc, tmp_path, "B", -4.785, [-4.295])
    frames = {lb: lc.distinct_frames(json.loads(lc._cache(tmp_path, "BaCl2", lb,
                                                          "dft_cell").read_text()))
              for lb in ("A", "B")}  # fmt: skip
    out = _finetune.labelled(frames)
    assert [len(out["A"]), len(out["B"])] == [2, 1]
    a1 = out["A"][1]
    assert a1.info["REF_energy"] == pytest.approx(3 * -4.310)
    assert a1.info["candidate_id"] == "A" and a1.info["frame_id"] == "A:1"
    assert a1.arrays["REF_forces"].shape == (3, 3) and a1.arrays["REF_forces"][0, 0] == 0.1
    assert list(a1.info["REF_stress"]) == [0.001] * 6
