"""The committee a learning round trained ranks the selection's uncertain picks.

Three tiny MACE models of Na-Cl (seeds 7, 8, 9; trained here on CHGNet-labelled rattled
rocksalt frames, the recipe of tests/learn/test_learn_multihead.py) are registered as one
round's committee; the selection evaluates them on the candidates' relaxed structures, and the
test computes the same spread independently with mace's own ASE calculator.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from cspflow.schemas.learn import TrainingSetDoc

TRAIN = {"min_frames": 8, "ionic_steps": -1, "epochs": 8, "seed": 7}


def _register(db, path, *, promoted=False, committee=(), committee_of=None, fidelity=None):
    from cspflow.models import register_model

    record = register_model(
        db, path,
        {"chemsys": "Cl-Na", "elements": ["Cl", "Na"],
         "training_set": TrainingSetDoc(chemsys="Cl-Na").model_dump(), "promoted": promoted,
         "committee_of": committee_of, "fidelity": fidelity},
    )  # fmt: skip
    if committee:
        db["models"].update_one({"model_id": record.model_id},
                                {"$set": {"committee": list(committee)}})  # fmt: skip
    return record.model_id


def _round(db, files, promoted, fidelity=None):
    """Register ``files`` as one round's committee (the first the primary); return the ids."""
    primary = _register(db, files[0], promoted=promoted, fidelity=fidelity)
    members = [_register(db, f, committee_of=primary, fidelity=fidelity) for f in files[1:]]
    if members:
        db["models"].update_one({"model_id": primary}, {"$set": {"committee": members}})
    return [primary, *members]


def test_learned_committee_is_the_current_models_else_the_newest_rounds(db, tmp_path):
    from cspflow.models import learned_committee

    files = []
    for k in range(6):
        f = tmp_path / f"m{k}.model"
        f.write_bytes(f"model {k}".encode())  # the lookup never loads a file
        files.append(f)
    pbe = {"key": "gpaw:PBE:fast:none", "level": "dft", "engine": "gpaw", "functional": "PBE"}
    assert learned_committee(db, "Cl-Na") == []
    first = _round(db, files[0:3], promoted=False, fidelity=pbe)
    assert learned_committee(db, "Cl-Na", "gpaw:PBE:fast:none") == [f"registry:{m}" for m in first]
    assert learned_committee(db, "Cl-Na", "gpaw:LDA:fast:none") == []
    # a promoted round without a committee: the newest committee still ranks
    _round(db, files[3:4], promoted=True, fidelity=pbe)
    assert learned_committee(db, "Cl-Na", "gpaw:PBE:fast:none") == [f"registry:{m}" for m in first]
    # a promoted round with one: its committee (the models that rank now)
    second = _round(db, files[4:6], promoted=True, fidelity=pbe)
    assert learned_committee(db, "Cl-Na", "gpaw:PBE:fast:none") == [f"registry:{m}" for m in second]


def test_a_learning_campaign_hands_select_where_its_committee_is():
    from cspflow.campaign.loop import iteration_flow
    from cspflow.schemas.campaign import parse_spec

    base = {"name": "lc", "compositions": ["Si"], "max_atoms": 2, "dft": {"engine": "gpaw"},
            "learn": {"enabled": True, "committee": 3}, "select": {"uncertain_k": 1}}  # fmt: skip

    def learned(spec: dict):
        flow = iteration_flow(parse_spec(spec), 0)
        (job,) = [j for j in flow.jobs if j.name.startswith("select")]
        return job.function_kwargs["learned"]

    got = learned(base)
    assert got["chemsys"] == "Si" and got["fidelity"].startswith("gpaw:PBE")
    assert learned({**base, "prerelax": {"committee": ["chgnet"]}}) is None  # explicit override
    assert learned({**base, "select": {"uncertain_k": 0}}) is None


def _nacl_frames(chgnet, n: int, seed: int):
    from cspflow.testing.frames import labelled_bulk

    return labelled_bulk(chgnet, "NaCl", "rocksalt", 5.64, n, seed=seed, rattle_seed=seed * 100,
                         id_prefix="n")  # fmt: skip


def _structures():
    """Relaxed-looking NaCl cells, from near the training data to far from it."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    cells = []
    for k, (a, rattle) in enumerate([(5.64, 0.0), (5.60, 0.05), (5.9, 0.15), (5.3, 0.25)]):
        atoms = bulk("NaCl", "rocksalt", a).repeat((1, 1, 2))
        if rattle:
            atoms.rattle(rattle, seed=11 + k)
        cells.append(atoms)
    cscl = bulk("NaCl", "cesiumchloride", 3.3)
    cscl.rattle(0.1, seed=5)
    cells.append(cscl)
    return [AseAtomsAdaptor.get_structure(a) for a in cells]


def _independent_force_spread(files, structures) -> list[float]:
    """DP-GEN's max force deviation, with mace's calculator and numpy only."""
    from mace.calculators import MACECalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    calcs = [MACECalculator(model_paths=str(f), device="cpu", default_dtype="float64")
             for f in files]  # fmt: skip
    out = []
    for s in structures:
        forces = []
        for calc in calcs:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            forces.append(atoms.get_forces())
        f = np.stack(forces)
        out.append(float(np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0)).max()))
    return out


@pytest.mark.slow
def test_uncertain_pick_is_the_largest_spread_of_the_learned_committee(db, tmp_path):
    from cspflow.learn.dataset import fit_e0s
    from cspflow.learn.train import train_mace
    from cspflow.mlip import load_model
    from cspflow.models import learned_committee
    from cspflow.prerelax.select import select_candidates
    from cspflow.schemas.learn import TrainSettings

    frames = _nacl_frames(load_model("chgnet", device="cpu"), 12, 1)
    s = TrainSettings(**TRAIN)
    files = [train_mace(frames, tmp_path / f"seed{s.seed + k}", e0s=fit_e0s(frames), settings=s,
                        seed=s.seed + k) for k in range(3)]  # fmt: skip
    ids = _round(db, files, promoted=True)
    structures = _structures()
    spread = _independent_force_spread(files, structures)
    cids = [f"NaCl-{k}-{uuid.uuid4().hex[:6]}" for k in range(len(structures))]
    # energies: the median-spread one is lowest; among the rest, the larger the spread the
    # higher the energy, so the uncertain pick is the highest-energy candidate of the rest
    order = np.argsort(spread)
    lowest = int(order[len(order) // 2])
    rest = [int(i) for i in order if i != lowest]
    energy = {lowest: -3.5}
    energy.update({i: -3.4 + 0.01 * rank for rank, i in enumerate(rest)})
    db["candidates"].insert_many([
        {"candidate_id": cid, "campaign": "lc", "iteration": 0, "formula": "NaCl",
         "chemsys": "Cl-Na", "nsites": len(st), "structure": st.as_dict(),
         "fingerprint_hash": uuid.uuid4().hex, "status": "prerelaxed",
         "energy_per_atom": {"mlip": energy[k], "dft": None},
         "relaxed": {"mlip": {"structure": st.as_dict(), "energy_per_atom": energy[k]}}}
        for k, (cid, st) in enumerate(zip(cids, structures, strict=True))
    ])  # fmt: skip
    committee = learned_committee(db, "Cl-Na")
    assert committee == [f"registry:{m}" for m in ids]
    summary = select_candidates("lc", 0, db=db, top_k=1, energy_window=1.0, n_uncertain=1,
                                committee=committee, device="cpu")  # fmt: skip
    expected = cids[rest[-1]]  # the largest spread apart from the lowest-energy pick
    print(
        f"force spread (eV/A) by candidate: {[round(x, 4) for x in spread]}; "
        f"lowest {cids[lowest]}, uncertain {expected}"
    )
    assert spread[rest[-1]] > spread[rest[-2]] + 1e-6  # a strict maximum: a real ranking
    assert summary.reasons == {cids[lowest]: "lowest", expected: "uncertain"}
    assert summary.spread[expected] == pytest.approx(spread[rest[-1]], rel=1e-6)
    assert summary.committee == ids and summary.committee_source == "learned"
    # without the committee (and nothing stored by prerelax) there is no uncertain pick
    plain = select_candidates("lc", 0, db=db, top_k=1, energy_window=1.0, n_uncertain=1)
    assert plain.selected == [cids[lowest]] and plain.committee == []
