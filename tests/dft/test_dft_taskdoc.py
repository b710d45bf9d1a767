"""The task-document reader (cspflow.dft.taskdoc): result fields, stress units."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cspflow.dft.taskdoc import result_from_task_doc


def _si() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def test_dft_result_from_task_doc_statuses():
    st = _si().as_dict()
    ok = {"state": "successful", "output": {"structure": st, "energy": -10.0}}
    r = result_from_task_doc(ok)
    assert r["status"] == "converged" and r["energy_per_atom"] == -5.0 and r["nsites"] == 2
    notconv = {**ok, "is_force_converged": False}
    assert result_from_task_doc(notconv, "cell")["status"] == "unconverged"
    assert result_from_task_doc(notconv, "static")["status"] == "converged"
    failed = {"state": "failed", "output": {"structure": st, "energy": None}}
    assert result_from_task_doc(failed)["status"] == "failed"
    assert result_from_task_doc(None)["status"] == "failed"


def test_stress_from_task_docs_is_ase_convention():
    from ase.units import GPa
    from atomate2.ase.schemas import convert_stress_from_voigt_to_symm

    from cspflow.dft.taskdoc import ase_stress as _ase_stress

    voigt = np.array([0.01, -0.02, 0.03, 0.001, -0.002, 0.003])  # eV/A^3, as ASE reports
    kbar = convert_stress_from_voigt_to_symm(voigt)  # what atomate2 stores
    assert _ase_stress(kbar) == pytest.approx(voigt)
    assert _ase_stress([[-10 / GPa * 0.01, 0, 0], [0, 0, 0], [0, 0, 0]])[0] == pytest.approx(0.01)
