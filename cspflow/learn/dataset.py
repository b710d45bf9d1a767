"""Training data of the learn stage: labelled frames, the held-out split, the training set.

Frames are ASE ``Atoms`` with ``REF_*`` keys built from the converged DFT relaxations of a
chemical system (its subsystems included): the final frame of each relaxation and a sample of
its ionic steps, read from the engine's task document (emmet VASP TaskDoc or atomate2 ASE task
doc) in the JobStore by :mod:`cspflow.dft.taskdoc`. The held-out split is fixed by a hash of the
candidate id, so every frame of one relaxation is on the same side and a candidate never changes
side between rounds.
Also here: extxyz output for ``mace_run_train`` and the per-element E0 fit (replay frames of
multi-head fine-tuning: :mod:`cspflow.learn.replay`).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cspflow.dft import taskdoc
from cspflow.errors import CspflowError
from cspflow.schemas.learn import TrainingSetDoc, TrainSettings

if TYPE_CHECKING:
    from ase import Atoms
    from jobflow import JobStore
    from pymongo.database import Database

__all__ = [
    "TrainingSet",
    "subsystems",
    "collect_frames",
    "split_frames",
    "validation_split",
    "build_training_set",
    "lowest_frames",
    "fit_e0s",
    "write_extxyz",
]


@dataclass
class TrainingSet:
    """Labelled frames (ASE Atoms with ``REF_*`` keys) split into train and test."""

    train: list[Atoms]
    test: list[Atoms]
    doc: TrainingSetDoc
    #: per composition its lowest-energy (per atom) frame of train + test: held-out relative
    #: energies are measured from it (:func:`cspflow.learn.evaluate.metrics_from_predictions`)
    anchors: list[Atoms] = field(default_factory=list)


def subsystems(chemsys: str) -> list[str]:
    """Every non-empty subsystem of ``chemsys`` (``"Mg-O"`` -> ``["Mg", "O", "Mg-O"]``)."""
    elements = sorted({e for e in chemsys.split("-") if e})
    if not elements:
        raise CspflowError(f"empty chemical system {chemsys!r}; give elements like 'Mg-O'")
    return [
        "-".join(combo)
        for k in range(1, len(elements) + 1)
        for combo in itertools.combinations(elements, k)
    ]


def _frame(
    structure: dict,
    energy: float,
    forces: Any,
    stress: Any,
    frame_id: str,
    candidate_id: str,
    kind: str,
) -> Atoms:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(structure))
    atoms.info = {
        "REF_energy": float(energy),
        "frame_id": frame_id,
        "candidate_id": candidate_id,
        "frame_kind": kind,
        "config_type": "Default",
    }
    atoms.arrays["REF_forces"] = np.asarray(forces, dtype=float).reshape(len(atoms), 3)
    if stress is not None:
        atoms.info["REF_stress"] = np.asarray(stress, dtype=float)
    return atoms


def _same_configuration(a: Atoms, b: Atoms, tol: float = 1e-6) -> bool:
    """Same cell and the same atoms at the same fractional positions (periodic images too)."""
    if len(a) != len(b) or not np.allclose(a.cell.array, b.cell.array, atol=tol):
        return False
    if list(a.numbers) != list(b.numbers):
        return False
    d = a.get_scaled_positions(wrap=False) - b.get_scaled_positions(wrap=False)
    return bool(np.allclose(d - np.round(d), 0.0, atol=tol))


def _sample(n: int, k: int) -> list[int]:
    """Indices of ``k`` evenly spaced steps among the first ``n`` (all when k < 0)."""
    if n <= 0 or k == 0:
        return []
    if k < 0 or k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _task_output(store: JobStore | None, task_uuid: str | None) -> dict | None:
    if store is None or not task_uuid:
        return None
    doc = store.query_one({"uuid": task_uuid}, properties=["output"], sort={"index": -1}, load=True)
    out = (doc or {}).get("output")
    return out if isinstance(out, dict) else None


def collect_frames(
    db: Database,
    chemsys: str,
    *,
    store: JobStore | None = None,
    campaign: str | None = None,
    max_iteration: int | None = None,
    fidelity: str | None = None,
    ionic_steps: int = 3,
    max_force: float = 10.0,
    max_energy_above_final: float = 1.0,
) -> tuple[list[Atoms], dict[str, int]]:
    """Labelled frames from the converged DFT relaxations of ``chemsys`` and its subsystems.

    Parameters
    ----------
    db
        The cspflow database.
    chemsys
        Chemical system, e.g. ``"Mg-O"``.
    store
        The JobStore holding the engines' task documents (forces, stresses, ionic steps);
        a candidate whose task document is missing gives no frame (no forces).
    campaign
        Only this campaign's candidates (default: every campaign, DFT data are shared).
    max_iteration
        Only candidates of iterations up to this one.
    fidelity
        Only DFT results of this fidelity key (a training set never mixes fidelities).
    ionic_steps
        Ionic steps sampled per relaxation besides the final frame (-1: all).
    max_force
        Frames whose largest force exceeds this (eV/A) are left out.
    max_energy_above_final
        Ionic steps more than this (eV/atom) above their relaxation's final frame are left out.

    Returns
    -------
    frames, skipped
        ASE Atoms with ``REF_energy``, ``REF_forces``, ``REF_stress`` (when known),
        ``frame_id``, ``candidate_id`` and (with ``fidelity``) ``fidelity_key``; and counts of
        what was left out, per reason.
    """
    from cspflow.store import candidates

    frames: list[Atoms] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    # duplicates count too (see dft_labelled)
    for cand in candidates.dft_labelled(
        db, subsystems(chemsys), campaign, max_iteration, fidelity=fidelity
    ):
        cid = cand["candidate_id"]
        dft = cand["relaxed"]["dft"]
        output = _task_output(store, dft.get("task_uuid"))
        if output is None:
            skip("no task document (forces unknown)")
            continue
        last = taskdoc.final_frame(output)
        key = f"{cid}/{dft.get('settings_hash', '')}"
        structure = dft.get("structure") or last["structure"]
        if structure is None or dft.get("energy") is None or last["forces"] is None:
            skip("no final structure, energy or forces")
            continue
        candidate_frames = [
            _frame(
                structure,
                dft["energy"],
                last["forces"],
                last["stress"],
                f"{key}/final",
                cid,
                "final",
            )
        ]
        steps = taskdoc.ionic_steps(output)
        for i in _sample(len(steps) - 1, ionic_steps):  # the last step is the final frame
            s = steps[i]
            if s["structure"] is None or s["energy"] is None or s["forces"] is None:
                skip("ionic step without structure, energy or forces")
                continue
            step = _frame(s["structure"], s["energy"], s["forces"], s["stress"],
                          f"{key}/step{i}", cid, "ionic")  # fmt: skip
            if any(_same_configuration(step, kept) for kept in candidate_frames):
                # ASE's trajectory repeats the last configuration (and a one-step relaxation's
                # only step is its final frame): one configuration must not weigh twice
                skip("repeated configuration")
                continue
            candidate_frames.append(step)
        final = candidate_frames[0].info["REF_energy"] / len(candidate_frames[0])
        for atoms in candidate_frames:
            fmax = float(np.linalg.norm(atoms.arrays["REF_forces"], axis=1).max())
            if not np.isfinite(fmax) or fmax > max_force:
                skip(f"force above {max_force:g} eV/A")
                continue
            if atoms.info["REF_energy"] / len(atoms) - final > max_energy_above_final:
                skip(f"more than {max_energy_above_final:g} eV/atom above the final frame")
                continue
            if fidelity is not None:
                atoms.info["fidelity_key"] = fidelity  # the labels' level of theory
            frames.append(atoms)
    return frames, skipped


def _split_value(candidate_id: str) -> float:
    digest = hashlib.sha256(f"cspflow-split/{candidate_id}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


def split_frames(frames: list[Atoms], test_fraction: float) -> tuple[list[Atoms], list[Atoms]]:
    """Split by a hash of each frame's candidate id (stable across rounds).

    A candidate is held out when its hash value is below ``test_fraction``; when none is (small
    sets), the candidate with the lowest value is, which is also the first to be held out by
    the rule, so the split only grows as data come in.
    """
    ids = sorted({a.info["candidate_id"] for a in frames})
    if not ids:
        return [], []
    values = {cid: _split_value(cid) for cid in ids}
    test_ids = {cid for cid, v in values.items() if v < test_fraction}
    if not test_ids and test_fraction > 0:
        test_ids = {min(values, key=values.__getitem__)}
    if len(test_ids) == len(ids) and len(ids) > 1:  # keep something to train on
        test_ids.discard(max(test_ids, key=values.__getitem__))
    train = [a for a in frames if a.info["candidate_id"] not in test_ids]
    test = [a for a in frames if a.info["candidate_id"] in test_ids]
    return train, test


#: fewer training candidates than this: every one is fitted and the checkpoint is chosen on
#: the training frames (setting one aside would drop a whole structure type from a few)
MIN_VALIDATION_CANDIDATES = 10


def validation_split(
    frames: list[Atoms], fraction: float = 0.1, min_candidates: int = MIN_VALIDATION_CANDIDATES
) -> tuple[list[Atoms], list[Atoms]]:
    """Training frames split into fit and validation by candidate (checkpoint selection).

    The validation candidates are those with the highest split values (the last the held-out
    rule would ever take), a ``fraction`` of them and at least one. With fewer than
    ``min_candidates`` candidates nothing is set aside: fit and validation are every frame.
    Measured on HfO2 (PBE frames of baddeleyite and rutile, held-out anatase and fluorite
    types, CHGNet fine-tuned 30 epochs): setting one of the two aside gave a held-out
    relative-energy MAE of 16.6 meV/atom, fitting both 12.5 (CHGNet 16.0).
    """
    ids = sorted({a.info["candidate_id"] for a in frames}, key=_split_value)
    if len(ids) < max(2, min_candidates):
        return list(frames), list(frames)
    val_ids = set(ids[-max(1, int(round(fraction * len(ids)))) :])
    fit = [a for a in frames if a.info["candidate_id"] not in val_ids]
    return fit, [a for a in frames if a.info["candidate_id"] in val_ids]


def _frames_hash(frames: list[Atoms], labels: bool = True) -> str:
    digest = hashlib.sha256()
    for atoms in sorted(frames, key=lambda a: a.info["frame_id"]):
        digest.update(atoms.info["frame_id"].encode())
        if labels:
            digest.update(np.round(atoms.info["REF_energy"], 6).tobytes())
            digest.update(np.round(atoms.arrays["REF_forces"], 5).tobytes())
    return digest.hexdigest()[:16]


def build_training_set(
    db: Database,
    chemsys: str,
    *,
    store: JobStore | None = None,
    settings: TrainSettings | None = None,
    campaign: str | None = None,
    max_iteration: int | None = None,
    fidelity: dict | None = None,
) -> TrainingSet:
    """Collect, filter and split the frames of ``chemsys`` (of one fidelity: ``fidelity``, a
    Fidelity dict, when given).

    Raises
    ------
    CspflowError
        "too little data: N frames, need at least M" when fewer than ``min_frames`` frames
        (at least one), no training frame or no held-out frame remain.
    """
    s = settings or TrainSettings()
    frames, skipped = collect_frames(
        db, chemsys, store=store, campaign=campaign, max_iteration=max_iteration,
        fidelity=(fidelity or {}).get("key"), ionic_steps=s.ionic_steps, max_force=s.max_force,
        max_energy_above_final=s.max_energy_above_final,
    )  # fmt: skip
    if not frames or len(frames) < s.min_frames:
        raise CspflowError(
            f"too little data: {len(frames)} frames, need at least {s.min_frames} "
            f"(converged DFT relaxations of {chemsys}); the current model stays"
        )
    train, test = split_frames(frames, s.test_fraction)
    if not train:
        raise CspflowError(
            f"too little data: {len(frames)} frames, all held out; need at least "
            f"{s.min_frames} from more than one candidate; the current model stays"
        )
    if not test:
        raise CspflowError(
            f"too little data: {len(frames)} frames and none held out (test_fraction "
            f"{s.test_fraction:g}); a model cannot be judged without held-out frames, so nothing "
            "is trained; the current model stays"
        )
    elements = sorted({sym for a in frames for sym in a.get_chemical_symbols()})
    anchors = lowest_frames(frames)
    doc = TrainingSetDoc(
        chemsys=chemsys,
        candidate_ids=sorted({a.info["candidate_id"] for a in frames}),
        test_candidate_ids=sorted({a.info["candidate_id"] for a in test}),
        n_frames=len(frames),
        n_train=len(train),
        n_test=len(test),
        n_final=sum(a.info["frame_kind"] == "final" for a in frames),
        n_ionic=sum(a.info["frame_kind"] == "ionic" for a in frames),
        skipped=skipped,
        elements=elements,
        set_hash=_frames_hash(frames),
        test_hash=_frames_hash(test, labels=False),
        test_fraction=s.test_fraction,
        fidelity=fidelity,
        anchor_frame_ids=[a.info["frame_id"] for a in anchors],
    )
    return TrainingSet(train=train, test=test, doc=doc, anchors=anchors)


def lowest_frames(frames: list[Atoms]) -> list[Atoms]:
    """Per reduced formula, the frame with the lowest ``REF_energy`` per atom."""
    from cspflow.learn.evaluate import reduced_formula

    best: dict[str, Atoms] = {}
    for atoms in frames:
        formula = reduced_formula(atoms)
        e = atoms.info["REF_energy"] / len(atoms)
        if formula not in best or e < best[formula].info["REF_energy"] / len(best[formula]):
            best[formula] = atoms
    return [best[f] for f in sorted(best)]


def fit_e0s(frames: list[Atoms]) -> dict[str, float]:
    """Reference energy per element by least squares: E_frame ~ sum_el n_el * E0_el.

    With collinear compositions (a single stoichiometry) the system is underdetermined and
    the minimum-norm solution is returned: the split between elements is arbitrary, the sum
    per formula unit is right, which is all a model trained on those frames needs.
    """
    elements = sorted({sym for a in frames for sym in a.get_chemical_symbols()})
    counts = np.array(
        [[a.get_chemical_symbols().count(el) for el in elements] for a in frames], float
    )
    energies = np.array([a.info["REF_energy"] for a in frames], float)
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {el: float(e) for el, e in zip(elements, solution, strict=True)}


def write_extxyz(frames: list[Atoms], path: Path) -> Path:
    """Write frames as extxyz with their ``REF_*`` keys (what ``mace_run_train`` reads)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = None
        clean.append(a)
    write(path, clean, format="extxyz")
    return path
