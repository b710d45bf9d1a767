"""``cspflow.dft.run.relax_structures`` hands each task document to ``on_task_doc``: GPAW for real.

The ionic steps read from it (:func:`cspflow.dft.taskdoc.ionic_steps`) are the labelled frames
``bench/learn_case.py`` saves for learning.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure


@pytest.mark.gpaw
def test_gpaw_positions_relax_hands_its_ionic_steps_to_on_task_doc(tmp_path):
    from cspflow.dft.run import relax_structures
    from cspflow.dft.taskdoc import ionic_steps

    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    si = conv.get_primitive_structure()
    si.translate_sites([0], [0.03, 0.0, 0.0])  # off the symmetric site: non-zero forces
    docs: dict[str, dict] = {}
    spec = {"engine": "gpaw", "relax": "positions", "kpoint_density": 1.5, "gpaw": {"ecut": 200}}
    summary = relax_structures(
        [("Si2", si)], spec, tmp_path, on_task_doc=lambda name, doc: docs.update({name: doc})
    )
    row = summary["results"][0]
    assert row["status"] == "converged"
    assert list(docs) == ["Si2"]
    steps = ionic_steps(docs["Si2"])
    assert len(steps) >= 3  # displaced start, at least one step, the final configuration
    first, last = np.asarray(steps[0]["forces"]), np.asarray(steps[-1]["forces"])
    assert np.abs(first).max() > 0.2  # the displacement is felt
    assert np.abs(last).max() < 0.05  # the relaxation's threshold
    assert np.allclose(first.sum(axis=0), 0.0, atol=1e-3)
    assert steps[-1]["energy"] < steps[0]["energy"]
    assert steps[-1]["energy"] / 2 == pytest.approx(row["energy_per_atom"], abs=1e-6)
    assert all(s["stress"] is not None and len(s["stress"]) == 6 for s in steps)
    start = Structure.from_dict(steps[0]["structure"])
    assert np.allclose(start.lattice.matrix, si.lattice.matrix, atol=1e-6)
    shift = start.frac_coords - si.frac_coords  # the displaced start, up to lattice vectors
    assert np.allclose(shift - np.round(shift), 0.0, atol=1e-6)


@pytest.mark.gpaw
def test_a_structure_carrying_another_calculations_labels_still_runs(tmp_path):
    """A structure read back from an ionic step (or an extxyz with energies) carries
    ``properties``; they used to ride into the engine's atoms and fail the task document."""
    from cspflow.dft.run import relax_structures

    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    si = conv.get_primitive_structure()
    si.properties = {"energy": 100.0, "forces": np.zeros((2, 3)), "stress": np.zeros(6)}
    spec = {"engine": "gpaw", "relax": "positions", "kpoint_density": 1.0, "gpaw": {"ecut": 150}}
    row = relax_structures([("Si2", si)], spec, tmp_path)["results"][0]
    assert row["status"] == "converged", row.get("reason")
    assert -6.0 < row["energy_per_atom"] < -4.0  # GPAW's energy, not the stale label (+50)
    assert si.properties["energy"] == 100.0  # the caller's structure is not changed
