"""The prerelax stage with a real MACE model file, trained here on CHGNet-labelled data.

MACE foundation weights cannot be downloaded, so the module trains a tiny MACE (32x0e, max_L 0,
r_max 4.5) with ``mace_run_train`` on strained and rattled Si, NaCl and SrTiO3 cells labelled by
CHGNet, once per session, and relaxes the three crystals with it through ``mace:PATH`` and
``registry:ID``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from ase.spacegroup import crystal
from pymatgen.io.ase import AseAtomsAdaptor

from cspflow.errors import CspflowError

pytestmark = pytest.mark.slow

EXPERIMENT = {"Si": 5.43, "NaCl": 5.64, "SrTiO3": 3.905}
PER_CELL = {"Si": 8, "NaCl": 4, "SrTiO3": 1}


def perovskite(a: float = 3.905):
    return crystal(
        ["Sr", "Ti", "O"],
        basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
        spacegroup=221,
        cellpar=[a, a, a, 90, 90, 90],
    )


def cubic_constant(structure) -> float:
    formula = structure.composition.reduced_formula
    z = structure.composition.get_reduced_composition_and_factor()[1]
    return (structure.volume / z * PER_CELL[formula]) ** (1 / 3)


def training_frames(chgnet, per_system: int = 30, seed: int = 0):
    """Strained (+-7 %) and rattled cells of the three crystals, labelled by CHGNet."""
    rng = np.random.default_rng(seed)
    protos = [
        bulk("Si", "diamond", 5.43, cubic=True),
        bulk("NaCl", "rocksalt", 5.64, cubic=True),
        perovskite().repeat((2, 1, 1)),
    ]
    frames = []
    for proto in protos:
        for k in range(per_system):
            atoms = proto.copy()
            strain = np.eye(3) * rng.uniform(0.93, 1.07) + rng.normal(0, 0.01, (3, 3))
            atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
            if k % 3:
                atoms.positions += rng.normal(0, 0.04, atoms.positions.shape)
            frames.append(atoms)
    for atoms, ev in zip(frames, chgnet.evaluate(frames), strict=True):
        atoms.info["REF_energy"] = ev.energy
        atoms.info["REF_stress"] = ev.stress
        atoms.arrays["REF_forces"] = ev.forces
    return frames


def train_tiny_mace(workdir: Path, frames, epochs: int = 40, seed: int = 1) -> Path:
    """Train a tiny MACE with mace_run_train; return the model file."""
    workdir.mkdir(parents=True, exist_ok=True)
    write(workdir / "train.xyz", frames)
    exe = Path(sys.executable).with_name("mace_run_train")
    args = [
        str(exe),
        "--name=tiny",
        "--train_file=train.xyz",
        "--valid_fraction=0.1",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--stress_key=REF_stress",
        "--model=MACE",
        "--num_interactions=2",
        "--hidden_irreps=32x0e",
        "--max_L=0",
        "--r_max=4.5",
        "--correlation=2",
        "--E0s=average",
        "--loss=stress",
        "--energy_weight=1",
        "--forces_weight=10",
        "--stress_weight=100",
        "--batch_size=5",
        f"--max_num_epochs={epochs}",
        "--lr=0.02",
        "--device=cpu",
        "--default_dtype=float64",
        f"--seed={seed}",
        "--eval_interval=5",  # the saved model is the best evaluated checkpoint
        "--save_cpu",
    ]
    # one thread: spin-waiting torch threads on a busy 2-core machine made training ~10x slower
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=900, env=env)
    model = workdir / "tiny.model"
    if proc.returncode != 0 or not model.is_file():
        raise RuntimeError(f"mace_run_train failed:\n{proc.stderr[-3000:]}")
    return model


@pytest.fixture(scope="module")
def chgnet():
    from cspflow.mlip import load_model

    return load_model("chgnet", device="cpu")


@pytest.fixture(scope="module")
def mace_file(tmp_path_factory, chgnet) -> Path:
    # PRERELAX_TEST_MACE_MODEL reuses a model trained by this recipe (local iteration only)
    reuse = os.environ.get("PRERELAX_TEST_MACE_MODEL")
    if reuse:
        return Path(reuse)
    frames = training_frames(chgnet)
    return train_tiny_mace(tmp_path_factory.mktemp("tiny-mace"), frames)


@pytest.fixture(scope="module")
def mace(mace_file):
    from cspflow.mlip import load_model

    return load_model(f"mace:{mace_file}", device="cpu")


def test_mace_relaxes_si_nacl_srtio3_sensibly(mace, chgnet):
    from cspflow.prerelax.relax import relax_structures

    starts = [bulk("Si", "diamond", 5.25), bulk("NaCl", "rocksalt", 5.85), perovskite(3.78)]
    outs = relax_structures(starts, mace, fmax=0.02, max_steps=250)
    ref = relax_structures(starts, chgnet, fmax=0.02, max_steps=250)
    for out, r in zip(outs, ref, strict=True):
        assert out.ok and out.converged, out.failure_reason
        formula = out.structure.composition.reduced_formula
        a = cubic_constant(out.structure)
        # trained on CHGNet labels: close to CHGNet's minimum, within a few % of experiment
        assert abs(a / cubic_constant(r.structure) - 1) < 0.04, (formula, a)
        assert abs(a / EXPERIMENT[formula] - 1) < 0.05, (formula, a)
        assert out.energy_per_atom == pytest.approx(r.energy_per_atom, abs=0.25)
    assert [o.spacegroup for o in outs] == ["Fd-3m", "Fm-3m", "Pm-3m"]
    assert mace.model_id.startswith("mace-") and mace.elements == frozenset({8, 11, 14, 17, 22, 38})


def test_mace_batched_evaluation_matches_calculator(mace):
    structs = [bulk("Si", "diamond", 5.3), perovskite(3.8), bulk("NaCl", "rocksalt", 5.5)]
    structs[0].rattle(0.05, seed=2)
    batched = mace.evaluate(structs, batched=True)
    single = mace.evaluate(structs, batched=False)
    for b, s in zip(batched, single, strict=True):
        assert b.energy == pytest.approx(s.energy, abs=1e-8)
        assert np.allclose(b.forces, s.forces, atol=1e-8)
        assert np.allclose(b.stress, s.stress, atol=1e-8)


def test_mace_model_lacking_an_element_is_one_line(mace):
    from cspflow.prerelax.relax import relax_structures

    with pytest.raises(CspflowError, match=r"does not cover Mg"):
        relax_structures([bulk("MgO", "rocksalt", 4.2)], mace)


def test_registry_model_loads_from_gridfs(db, mace_file, tmp_path, settings):
    import gridfs

    from cspflow.mlip import load_model
    from cspflow.models import fetch_registry_model

    bucket = gridfs.GridFSBucket(db, bucket_name="models")
    with open(mace_file, "rb") as fh:
        file_id = bucket.upload_from_stream("tiny.model", fh)
    db["models"].insert_one({"model_id": "tiny-1", "file_id": file_id, "filename": "tiny.model"})
    path = fetch_registry_model("tiny-1", db=db, cache_dir=tmp_path)
    assert path.read_bytes() == mace_file.read_bytes()
    model = load_model("registry:tiny-1", device="cpu", db=db)
    assert model.model_id == "tiny-1"
    ev = model.evaluate([bulk("Si", "diamond", 5.43)])[0]
    assert np.isfinite(ev.energy)
    with pytest.raises(CspflowError, match="no model 'nope' in the model registry"):
        load_model("registry:nope", device="cpu", db=db)


def test_committee_disagreement_is_stored_and_drives_selection(db, mace_file):
    from cspflow.prerelax.select import select_candidates
    from cspflow.prerelax.stage import prerelax_candidates

    structs = [
        bulk("Si", "diamond", 5.3),
        bulk("Si", "bcc", 3.1),
        bulk("Si", "sc", 2.6),
    ]
    docs = []
    for s in structs:
        st = AseAtomsAdaptor.get_structure(s)
        docs.append(
            {
                "candidate_id": f"Si-{uuid.uuid4().hex[:8]}",
                "campaign": "com",
                "iteration": 0,
                "formula": "Si",
                "chemsys": "Si",
                "nsites": len(st),
                "structure": st.as_dict(),
                "fingerprint_hash": uuid.uuid4().hex,
                "bucket": [],
                "status": "generated",
                "energy_per_atom": {"mlip": None, "dft": None},
            }
        )
    db["candidates"].insert_many([dict(d) for d in docs])
    ids = [d["candidate_id"] for d in docs]
    summary = prerelax_candidates(
        ids, db=db, model="chgnet", committee=[f"mace:{mace_file}"], max_steps=150, dedup=False
    )
    assert summary.relaxed
    for cid in summary.relaxed:
        com = db["candidates"].find_one({"candidate_id": cid})["relaxed"]["mlip"]["committee"]
        assert com["energy_std"] >= 0 and com["force_std"] >= 0
        assert com["model_ids"][0] == "chgnet-0.3.0" and com["model_ids"][1].startswith("mace-")
    sel = select_candidates("com", 0, db=db, top_k=1, energy_window=0.01, n_uncertain=1)
    assert len(sel.selected) == 2
    assert sorted(sel.reasons.values()) == ["lowest", "uncertain"]
