"""D3(BJ) on MLIP energies: the torch path against the dftd3 reference, CHGNet + D3, the stage."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from cspflow.mlip_d3 import D3Correction


def csi_cscl(a: float = 4.567) -> Atoms:
    return Atoms("CsI", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * a,
                 pbc=True)  # fmt: skip


def csi_rocksalt(a: float = 7.6) -> Atoms:
    cell = [[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]
    return Atoms("CsI", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=cell, pbc=True)


def distorted() -> list[Atoms]:
    """Both polymorphs with forces and anisotropic stress: rattled atoms, sheared cells."""
    out = []
    for atoms in (csi_cscl().repeat((2, 1, 1)), csi_rocksalt()):
        atoms.rattle(0.2, seed=3)
        atoms.set_cell(atoms.cell.array @ np.array([[1.02, 0.03, 0], [0, 0.99, 0.01], [0, 0, 1]]),
                       scale_atoms=True)  # fmt: skip
        out.append(atoms)
    return out


def reference(atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """simple-dftd3 (the ``dftd3`` package), PBE D3(BJ)."""
    from dftd3.ase import DFTD3

    work = atoms.copy()
    work.calc = DFTD3(method="pbe", damping="d3bj")
    return work.get_potential_energy(), work.get_forces(), work.get_stress()


def test_torch_d3_matches_the_dftd3_package_batched_with_forces_and_stress():
    structures = distorted()
    got = D3Correction("d3bj").evaluate(structures)  # both structures in one batch
    for atoms, (energy, forces, stress) in zip(structures, got, strict=True):
        e_ref, f_ref, s_ref = reference(atoms)
        assert energy == pytest.approx(e_ref, abs=1e-4)
        assert energy < -0.3 * len(atoms) / 2  # CsI: about -0.2 eV per atom of dispersion
        np.testing.assert_allclose(forces, f_ref, atol=1e-4)
        assert np.abs(f_ref).max() > 5e-4  # the rattle made forces worth comparing
        np.testing.assert_allclose(stress, s_ref, atol=1e-5)
        assert np.abs(s_ref[3:]).max() > 1e-5  # and shear stress


def test_torch_d3_forces_and_stress_are_derivatives_of_its_energy():
    d3 = D3Correction("d3bj")
    atoms = distorted()[1]
    _, forces, stress = d3.evaluate([atoms])[0]

    def energy(a: Atoms) -> float:
        return d3.evaluate([a])[0][0]

    h = 1e-4
    for i, k in [(0, 0), (1, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        assert forces[i, k] == pytest.approx(-(energy(plus) - energy(minus)) / (2 * h), abs=1e-5)
    # stress: dE/d(strain) / V, for a diagonal and a shear strain (Voigt xx and yz)
    for voigt, (r, c) in [(0, (0, 0)), (3, (1, 2))]:
        eps = np.zeros((3, 3))
        eps[r, c] = eps[c, r] = h if r == c else h / 2
        plus, minus = atoms.copy(), atoms.copy()
        plus.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        minus.set_cell(atoms.cell.array @ (np.eye(3) - eps), scale_atoms=True)
        fd = (energy(plus) - energy(minus)) / (2 * h) / atoms.get_volume()
        # pairs crossing the hard 60-bohr cutoff as the cell strains make the finite difference
        # differ from the analytic stress by a few 0.1 % (the dftd3 package's stress too)
        assert stress[voigt] == pytest.approx(fd, rel=0.01)
        assert abs(fd) > 5e-6


@pytest.fixture(scope="module")
def chgnet_pair():
    from cspflow.mlip import load_model

    return load_model("chgnet", device="cpu"), load_model("chgnet", device="cpu", dispersion="d3bj")


def test_chgnet_plus_d3_is_chgnet_plus_the_reference_d3_batched_and_one_by_one(chgnet_pair):
    bare, with_d3 = chgnet_pair
    assert with_d3.model_id == bare.model_id == "chgnet-0.3.0"
    assert (bare.dispersion, with_d3.dispersion) == (None, "d3bj")
    structures = distorted()
    plain = bare.evaluate(structures)
    for batched in (True, False):
        for atoms, p, d in zip(structures, plain, with_d3.evaluate(structures, batched=batched),
                               strict=True):  # fmt: skip
            e_ref, f_ref, s_ref = reference(atoms)
            assert d.energy - p.energy == pytest.approx(e_ref, abs=2e-4)
            np.testing.assert_allclose(d.forces - p.forces, f_ref, atol=2e-4)
            np.testing.assert_allclose(d.stress - p.stress, s_ref, atol=2e-5)


def test_prerelax_with_d3_stores_it_and_contracts_csi(db, chgnet_pair):
    from cspflow.prerelax.stage import prerelax_candidates
    from cspflow.store import candidates
    from cspflow.testing import insert_candidate

    start = AseAtomsAdaptor.get_structure(csi_cscl(4.75))
    plain_id = insert_candidate(db, start, status="generated")
    d3_id = insert_candidate(db, start, status="generated", campaign="d3")
    bare, with_d3 = chgnet_pair
    common = {"fmax": 0.02, "max_steps": 200, "dedup": False, "db": db}
    prerelax_candidates([plain_id], loaded=bare, **common)
    summary = prerelax_candidates([d3_id], loaded=with_d3, dispersion="d3bj", **common)
    assert summary.dispersion == "d3bj" and summary.relaxed == [d3_id]
    docs = candidates.get_many(db, [plain_id, d3_id], {"relaxed": 1, "energy_per_atom": 1})
    plain, d3 = (docs[i]["relaxed"]["mlip"] for i in (plain_id, d3_id))
    assert plain.get("dispersion") is None and d3["dispersion"] == "d3bj"
    assert plain["key"] != d3["key"]  # the same structure and model, another energy
    a_plain, a_d3 = (r["structure"]["lattice"]["a"] for r in (plain, d3))
    # dispersion pulls the ions together: CHGNet alone overestimates a (4.68 A), +D3 is near
    # experiment (4.567 A)
    assert a_d3 < a_plain - 0.05
    assert a_d3 == pytest.approx(4.567, abs=0.05)
    relaxed = AseAtomsAdaptor.get_atoms(Structure.from_dict(d3["structure"]))
    e = with_d3.evaluate([relaxed])[0].energy / len(relaxed)
    assert docs[d3_id]["energy_per_atom"]["mlip"] == pytest.approx(e, abs=1e-5)
    # a run that passes a model loaded without the dispersion it asks for is refused
    with pytest.raises(ValueError, match="dispersion"):
        prerelax_candidates([d3_id], loaded=bare, dispersion="d3bj", **common)


def test_prerelax_settings_and_unknown_names():
    from pydantic import ValidationError

    from cspflow.schemas.prerelax import PrerelaxSettings

    assert PrerelaxSettings().dispersion is None
    assert PrerelaxSettings(dispersion="D3(BJ)").dispersion == "d3bj"
    with pytest.raises(ValidationError, match="unknown dispersion 'd4'; choose d3bj"):
        PrerelaxSettings(dispersion="d4")


@pytest.mark.gpu
def test_torch_d3_on_cuda_matches_the_cpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    structures = distorted()
    cpu = D3Correction("d3bj", device="cpu").evaluate(structures)
    gpu = D3Correction("d3bj", device="cuda").evaluate(structures)
    for (e0, f0, s0), (e1, f1, s1) in zip(cpu, gpu, strict=True):
        assert e1 == pytest.approx(e0, abs=1e-6)
        np.testing.assert_allclose(f1, f0, atol=1e-6)
        np.testing.assert_allclose(s1, s0, atol=1e-8)
