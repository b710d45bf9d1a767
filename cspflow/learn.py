"""Active learning: training sets from the campaign's DFT data, MACE training, the model registry.

Layers, top down:

- :class:`LearnMaker` makes the learn job (``metadata={"stage": "learn"}``, routed to gpu
  workers). The job runs :func:`learn` and returns a :class:`~cspflow.schemas.learn.LearnSummary`;
  too little data is not a failure of the campaign: the summary says so and the current model
  stays.
- :func:`learn` = :func:`build_training_set` -> :func:`train_mace` (from scratch or naive
  fine-tuning of a MACE file; optionally a committee of seeds) -> :func:`evaluate` (new and
  current model on the held-out split) -> :func:`register_model` with the promotion decision.
- The registry: ``models`` collection + GridFS bucket ``models`` (``file_id``), the layout
  :func:`cspflow.mlip.fetch_registry_model` reads, so ``registry:ID`` works in prerelax.

Training data are the converged DFT results on ``candidates.relaxed.dft`` of a chemical system
(its subsystems included): the final frame of each relaxation and a sample of its ionic steps,
read from the engine's task document in the JobStore (``task_uuid``). The held-out split is
fixed by a hash of the candidate id, so every frame of one relaxation is on the same side and a
candidate never changes side between rounds: metrics of successive models are comparable.

No torch or MACE import here: training runs ``mace_run_train`` in a subprocess, and models are
loaded and evaluated through :mod:`cspflow.mlip`.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jobflow import Job, Maker, job

from cspflow.errors import CspflowError
from cspflow.schemas.learn import LearnSummary, ModelDoc, ModelMetrics, TrainingSetDoc

if TYPE_CHECKING:
    from ase import Atoms
    from jobflow import JobStore
    from pymongo.database import Database

__all__ = [
    "MODEL_BUCKET",
    "TrainSettings",
    "TrainingSet",
    "subsystems",
    "collect_frames",
    "split_frames",
    "build_training_set",
    "fit_e0s",
    "write_extxyz",
    "check_foundation",
    "train_mace",
    "evaluate",
    "promotion",
    "register_model",
    "current_model",
    "current_model_spec",
    "get_model",
    "list_models",
    "lineage",
    "fetch_model",
    "export_model",
    "learn",
    "learn_job",
    "LearnMaker",
]

#: GridFS bucket of model files (``cspflow.mlip.fetch_registry_model`` reads this bucket).
MODEL_BUCKET = "models"
STAGE = "learn"
# ASE stress (eV/A^3, tension positive) from the kbar 3x3 tensors of emmet/atomate2 task docs
# (atomate2's ASE docs and VASP both store -10/GPa times ASE's stress).
_KBAR_TO_ASE = -0.1


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- training sets


@dataclass
class TrainSettings:
    """Scientific settings of a learning round (stored with the model).

    Parameters
    ----------
    min_frames
        Fewest frames (train + test) worth training on; fewer raise "too little data".
    test_fraction
        Share of candidates held out (chosen by a hash of the candidate id).
    ionic_steps
        Ionic steps sampled per relaxation besides its final frame (evenly spaced; the final
        step is the final frame); 0 keeps final frames only, -1 keeps every step.
    max_force
        Frames with a force above this (eV/A) are left out: huge forces wreck a small model.
    max_energy_above_final
        Ionic steps more than this (eV/atom) above their relaxation's final frame are left out.
        A relaxation started from a collapsed cell begins tens of eV/atom up (seen: +35 eV/atom
        for a Si2 cell whose forces vanish by symmetry, so the force filter keeps it); such
        frames teach a small model nothing about the structures it ranks and, held out, swamp
        the energy MAE that decides promotion.
    epochs, hidden_irreps, max_L, r_max, num_interactions, correlation, batch_size, lr
        ``mace_run_train`` hyperparameters (the defaults give a tiny model that trains on CPU).
    energy_weight, forces_weight, stress_weight
        Loss weights (``--loss=stress``: energies, forces and stresses).
    seed
        Random seed of the first model; committee members use seed + 1, seed + 2, ...
    committee
        Number of models trained (different seeds); the first is the registered primary.
    foundation_model
        MACE model file (``PATH``, ``mace:PATH`` or ``registry:ID``) to fine-tune naively;
        ``current`` fine-tunes the current registry model; None trains from scratch.
    finetune
        ``naive`` (the foundation's weights trained on the new data only) or ``multihead``
        (mace's multi-head fine-tuning: a replay head keeps the foundation's data in the loss,
        so the model does not forget what it knew; mace's own learning rate 1e-4 and EMA apply).
    replay_file
        extxyz replay data for ``multihead`` (``REF_*`` keys), e.g. the MP subset a foundation
        model was trained on. None: with a registry foundation, the frames its training set
        came from (rebuilt from the database); with a foundation file, an error.
    device
        Training device (None: the ``device`` setting, cuda when available).
    threads
        ``OMP_NUM_THREADS`` of the training process (0: inherit). A tiny model gains nothing
        from threads, and spin-waiting OpenMP threads on a shared node made an epoch 30x
        slower (measured: 3 s against 0.1 s for 20 Si2 frames on 2 loaded cores).
    """

    min_frames: int = 20
    test_fraction: float = 0.2
    ionic_steps: int = 3
    max_force: float = 10.0
    max_energy_above_final: float = 1.0
    epochs: int = 60
    hidden_irreps: str = "32x0e"
    max_L: int = 0
    r_max: float = 4.5
    num_interactions: int = 2
    correlation: int = 2
    batch_size: int = 5
    lr: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 10.0
    seed: int = 1
    committee: int = 1
    foundation_model: str | None = None
    finetune: str = "naive"
    replay_file: str | None = None
    device: str | None = None
    threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (stored with the model)."""
        from dataclasses import asdict

        return asdict(self)


@dataclass
class TrainingSet:
    """Labelled frames (ASE Atoms with ``REF_*`` keys) split into train and test."""

    train: list[Atoms]
    test: list[Atoms]
    doc: TrainingSetDoc


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


def _ase_stress(kbar: Any) -> np.ndarray | None:
    """Voigt stress in eV/A^3 (ASE convention) from a kbar 3x3 tensor, or None."""
    from ase.stress import full_3x3_to_voigt_6_stress
    from ase.units import GPa

    if kbar is None:
        return None
    arr = np.asarray(kbar, dtype=float)
    if arr.shape == (3, 3):
        return full_3x3_to_voigt_6_stress(arr) * _KBAR_TO_ASE * GPa
    if arr.shape == (6,):
        return arr * _KBAR_TO_ASE * GPa
    return None


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


def _ionic_steps(output: dict, data: dict) -> list[dict]:
    """(structure, energy, forces, stress) dicts of every ionic step in a task document."""
    steps: list[dict] = []
    raw = output.get("ionic_steps")
    if isinstance(raw, list) and raw:  # atomate2 ASE task doc
        for s in raw:
            steps.append(
                {
                    "structure": s.get("mol_or_struct") or s.get("structure"),
                    "energy": s.get("energy"),
                    "forces": s.get("forces"),
                    "stress": _ase_stress(s.get("stress")),
                }
            )
        return steps
    calcs = data.get("calcs_reversed") or []
    if calcs:  # emmet VASP TaskDoc: ionic steps of the last calculation
        for s in ((calcs[0].get("output") or {}).get("ionic_steps")) or []:
            energy = s.get("e_0_energy", s.get("e_fr_energy"))
            steps.append(
                {
                    "structure": s.get("structure"),
                    "energy": energy,
                    "forces": s.get("forces"),
                    "stress": _ase_stress(s.get("stress")),
                }
            )
    return steps


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
        ``frame_id`` and ``candidate_id``; and counts of what was left out, per reason.
    """
    # duplicates count too: a candidate marked duplicate after its DFT relaxation (it relaxed
    # into another one's minimum) still has its own trajectory, real labelled data
    query: dict[str, Any] = {
        "chemsys": {"$in": subsystems(chemsys)},
        "relaxed.dft.status": "converged",
    }
    if campaign is not None:
        query["campaign"] = campaign
    if max_iteration is not None:
        query["iteration"] = {"$lte": max_iteration}
    frames: list[Atoms] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for cand in (
        db["candidates"].find(query, {"candidate_id": 1, "relaxed.dft": 1}).sort("candidate_id", 1)
    ):
        cid = cand["candidate_id"]
        dft = cand["relaxed"]["dft"]
        output = _task_output(store, dft.get("task_uuid"))
        if output is None:
            skip("no task document (forces unknown)")
            continue
        data_out = output.get("output") or {}
        key = f"{cid}/{dft.get('settings_hash', '')}"
        structure = dft.get("structure") or data_out.get("structure")
        if structure is None or dft.get("energy") is None or data_out.get("forces") is None:
            skip("no final structure, energy or forces")
            continue
        candidate_frames = [
            _frame(
                structure,
                dft["energy"],
                data_out["forces"],
                _ase_stress(data_out.get("stress")),
                f"{key}/final",
                cid,
                "final",
            )
        ]
        steps = _ionic_steps(data_out, output)
        for i in _sample(len(steps) - 1, ionic_steps):  # the last step is the final frame
            s = steps[i]
            if s["structure"] is None or s["energy"] is None or s["forces"] is None:
                skip("ionic step without structure, energy or forces")
                continue
            candidate_frames.append(
                _frame(
                    s["structure"],
                    s["energy"],
                    s["forces"],
                    s["stress"],
                    f"{key}/step{i}",
                    cid,
                    "ionic",
                )
            )
        final = candidate_frames[0].info["REF_energy"] / len(candidate_frames[0])
        for atoms in candidate_frames:
            fmax = float(np.linalg.norm(atoms.arrays["REF_forces"], axis=1).max())
            if not np.isfinite(fmax) or fmax > max_force:
                skip(f"force above {max_force:g} eV/A")
                continue
            if atoms.info["REF_energy"] / len(atoms) - final > max_energy_above_final:
                skip(f"more than {max_energy_above_final:g} eV/atom above the final frame")
                continue
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
) -> TrainingSet:
    """Collect, filter and split the frames of ``chemsys``.

    Raises
    ------
    CspflowError
        "too little data: N frames, need at least M" when fewer than ``min_frames`` frames
        (or no training frame) remain.
    """
    s = settings or TrainSettings()
    frames, skipped = collect_frames(
        db, chemsys, store=store, campaign=campaign, max_iteration=max_iteration,
        ionic_steps=s.ionic_steps, max_force=s.max_force,
        max_energy_above_final=s.max_energy_above_final,
    )  # fmt: skip
    if len(frames) < s.min_frames:
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
    elements = sorted({sym for a in frames for sym in a.get_chemical_symbols()})
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
    )
    return TrainingSet(train=train, test=test, doc=doc)


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


# --------------------------------------------------------------------------- training


def _resolve_model_file(spec: str, db: Database | None) -> Path:
    """A local file for a model given as ``PATH``, ``mace:PATH`` or ``registry:ID``."""
    if spec.startswith("registry:"):
        return fetch_model(spec.split(":", 1)[1], db=db)
    path = Path(spec.split(":", 1)[1] if spec.startswith("mace:") else spec).expanduser()
    if not path.is_file():
        raise CspflowError(
            f"foundation model file {path} not found; give an existing MACE .model file"
        )
    return path.resolve()


def check_foundation(spec: str, db: Database | None = None) -> tuple[Path, frozenset[int] | None]:
    """Check that ``spec`` names a loadable MACE model; return its file and elements.

    Raises
    ------
    CspflowError
        One line when the file is missing or is not a MACE model.
    """
    from cspflow.mlip import load_model

    path = _resolve_model_file(spec, db)
    try:
        model = load_model(f"mace:{path}", device="cpu")
    except CspflowError as exc:
        raise CspflowError(f"foundation model: {exc}") from None
    return path, model.elements


def _mace_args(
    train_xyz: Path, name: str, e0s: dict[str, float], s: TrainSettings, seed: int, device: str,
    foundation: Path | None,
    n_train: int = 100,
    replay_xyz: Path | None = None,
) -> list[str]:  # fmt: skip
    from ase.data import atomic_numbers

    e0_arg = "{" + ", ".join(f"{atomic_numbers[el]}: {e!r}" for el, e in sorted(e0s.items())) + "}"
    args = [
        f"--name={name}",
        f"--train_file={train_xyz}",
        # mace's own validation split picks the best checkpoint; at least one frame of it
        f"--valid_fraction={max(0.1, 1.5 / max(1, n_train)):.3f}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--stress_key=REF_stress",
        f"--E0s={e0_arg}",
        "--loss=stress",
        f"--energy_weight={s.energy_weight}",
        f"--forces_weight={s.forces_weight}",
        f"--stress_weight={s.stress_weight}",
        f"--batch_size={s.batch_size}",
        f"--valid_batch_size={s.batch_size}",
        f"--max_num_epochs={s.epochs}",
        f"--lr={s.lr}",
        f"--device={device}",
        "--default_dtype=float64",
        f"--seed={seed}",
        "--eval_interval=1",  # the best checkpoint by validation loss is the model
        "--save_cpu",
    ]
    if foundation is not None and replay_xyz is not None:
        # multi-head fine-tuning: a "pt_head" trained on the replay data alongside ours
        # ("Default", the head cspflow evaluates); mace sets lr 1e-4 and EMA for this mode
        args += [f"--foundation_model={foundation}", "--multiheads_finetuning=True",
                 f"--pt_train_file={replay_xyz}"]  # fmt: skip
    elif foundation is not None:
        # naive fine-tuning: the foundation's architecture and weights, new data only
        args += [f"--foundation_model={foundation}", "--multiheads_finetuning=False"]
    else:
        args += [
            "--model=MACE",
            f"--num_interactions={s.num_interactions}",
            f"--hidden_irreps={s.hidden_irreps}",
            f"--max_L={s.max_L}",
            f"--r_max={s.r_max}",
            f"--correlation={s.correlation}",
        ]
    return args


def train_mace(
    train: list[Atoms],
    work_dir: Path,
    *,
    e0s: dict[str, float],
    settings: TrainSettings | None = None,
    seed: int | None = None,
    foundation: Path | None = None,
    name: str = "model",
    replay: list[Atoms] | None = None,
) -> Path:
    """Train one MACE model with ``mace_run_train`` (subprocess) and return its file.

    Parameters
    ----------
    train
        Training frames (``REF_*`` keys); mace holds out 10 % of them for validation.
    work_dir
        Run directory (inputs, logs, checkpoints, the model).
    e0s
        Reference energy per element (eV), passed as ``--E0s``.
    settings
        Hyperparameters.
    seed
        Overrides ``settings.seed``.
    foundation
        A MACE model file to fine-tune (its architecture is kept): naively, or multi-head
        when ``replay`` is given.
    replay
        Replay frames (``REF_*`` keys) for multi-head fine-tuning.

    Raises
    ------
    CspflowError
        When ``mace_run_train`` fails (its last error line is quoted).
    """
    from cspflow.mlip import resolve_device

    s = settings or TrainSettings()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    train_xyz = write_extxyz(train, work_dir / "train.xyz")
    replay_xyz = write_extxyz(replay, work_dir / "replay.xyz") if replay else None
    device = resolve_device(s.device)
    args = _mace_args(
        train_xyz, name, e0s, s, s.seed if seed is None else seed, device, foundation, len(train),
        replay_xyz,
    )  # fmt: skip
    cmd = [sys.executable, "-m", "mace.cli.run_train", *args]
    (work_dir / "mace_run_train.cmd").write_text(shlex.join(cmd) + "\n")
    env = dict(os.environ)
    if s.threads > 0:
        env["OMP_NUM_THREADS"] = str(s.threads)
    with open(work_dir / "mace_run_train.log", "w") as log:
        proc = subprocess.run(
            cmd, cwd=work_dir, stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        )
    model = work_dir / f"{name}.model"
    if proc.returncode != 0 or not model.is_file():
        lines = (work_dir / "mace_run_train.log").read_text(errors="replace").strip().splitlines()
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        raise CspflowError(
            f"mace_run_train failed (exit {proc.returncode}): {last.strip()[:300]}; "
            f"see {work_dir / 'mace_run_train.log'}"
        )
    return model


# --------------------------------------------------------------------------- evaluation


def evaluate(model_spec: str, frames: list[Atoms], db: Database | None = None) -> ModelMetrics:
    """Energy MAE (meV/atom) and force MAE (meV/A) of a model on labelled frames.

    A model that cannot run on the frames (an element it does not cover, a missing file)
    gets no figures and a note, never an exception: the new model is then compared with
    nothing.
    """
    from cspflow.mlip import load_model

    if not frames:
        return ModelMetrics(model=model_spec, n_frames=0, note="no held-out frames")
    try:
        model = load_model(model_spec, db=db)
        model.check_elements({int(z) for a in frames for z in a.numbers})
        evals = model.evaluate(frames)
    except CspflowError as exc:
        return ModelMetrics(model=model_spec, n_frames=len(frames), note=str(exc))
    e_err = [
        abs(ev.energy - a.info["REF_energy"]) / len(a) for a, ev in zip(frames, evals, strict=True)
    ]
    f_err = np.concatenate(
        [
            np.abs(ev.forces - a.arrays["REF_forces"]).ravel()
            for a, ev in zip(frames, evals, strict=True)
        ]
    )
    return ModelMetrics(
        model=model_spec,
        energy_mae_mev_per_atom=round(1000 * float(np.mean(e_err)), 3),
        force_mae_mev_per_a=round(1000 * float(np.mean(f_err)), 3),
        n_frames=len(frames),
    )


# differences within these (or 1 % of the current figure) are ties: frames whose forces vanish
# by symmetry give force MAE 0 for every model, and a tie must not block a better energy
TIE_ENERGY_MEV = 0.1
TIE_FORCE_MEV = 0.5


def _compare(d: float, current: float, tie: float) -> int:
    """-1 better, 0 tie, 1 worse."""
    if abs(d) <= max(tie, 0.01 * abs(current)):
        return 0
    return -1 if d < 0 else 1


def promotion(new: ModelMetrics, current: ModelMetrics | None) -> tuple[bool, str]:
    """Whether the new model replaces the current one, and why (or why not).

    The new model must beat the current one on the held-out split: lower energy or force MAE
    and worse on neither (a difference within :data:`TIE_ENERGY_MEV` / :data:`TIE_FORCE_MEV` or
    1 % is a tie); a current model without figures (none, or it cannot run on these elements)
    is beaten by any new model with figures.
    """
    if new.energy_mae_mev_per_atom is None or new.force_mae_mev_per_a is None:
        return False, f"new model has no held-out figures ({new.note})"
    if current is None:
        return True, "no current model for this system"
    if current.energy_mae_mev_per_atom is None or current.force_mae_mev_per_a is None:
        return True, f"current model {current.model} has no held-out figures ({current.note})"
    de = new.energy_mae_mev_per_atom - current.energy_mae_mev_per_atom
    df = new.force_mae_mev_per_a - current.force_mae_mev_per_a
    figures = (
        f"energy MAE {new.energy_mae_mev_per_atom:.1f} vs {current.energy_mae_mev_per_atom:.1f} "
        f"meV/atom, force MAE {new.force_mae_mev_per_a:.1f} vs {current.force_mae_mev_per_a:.1f} "
        f"meV/A on {new.n_frames} held-out frames"
    )
    verdict = {
        "energy": _compare(de, current.energy_mae_mev_per_atom, TIE_ENERGY_MEV),
        "force": _compare(df, current.force_mae_mev_per_a, TIE_FORCE_MEV),
    }
    worse = [n for n, v in verdict.items() if v > 0]
    if not worse and any(v < 0 for v in verdict.values()):
        ties = [n for n, v in verdict.items() if v == 0]
        tie_note = f" ({' and '.join(ties)} MAE tied)" if ties else ""
        return True, f"beats {current.model}{tie_note}: {figures}"
    if not worse:
        return False, f"ties with {current.model} on energy and force MAE: {figures}"
    return False, f"does not beat {current.model} on {' and '.join(worse)} MAE: {figures}"


# --------------------------------------------------------------------------- registry


def register_model(db: Database, path: Path, doc: dict[str, Any]) -> ModelDoc:
    """Store a model file in GridFS and its record in ``models``; return the record.

    The id is ``mace-<sha256[:12]>`` of the file (what ``mace:PATH`` reports as model id as
    well); registering the same file again returns the stored record.
    """
    import gridfs

    path = Path(path)
    sha = _sha256(path)
    model_id = doc.get("model_id") or f"mace-{sha[:12]}"
    existing = db["models"].find_one({"model_id": model_id}, {"_id": 0})
    if existing is not None:
        return ModelDoc.model_validate(existing)
    bucket = gridfs.GridFSBucket(db, bucket_name=MODEL_BUCKET)
    filename = f"{model_id}.model"
    with open(path, "rb") as fh:
        file_id = bucket.upload_from_stream(filename, fh, metadata={"model_id": model_id})
    record = ModelDoc.model_validate(
        {
            **doc,
            "model_id": model_id,
            "file_id": file_id,
            "filename": filename,
            "sha256": sha,
            "created_at": doc.get("created_at") or _now(),
        }  # fmt: skip
    )
    db["models"].insert_one(record.model_dump())
    return record


def current_model(db: Database, chemsys: str) -> dict | None:
    """The promoted registry model of ``chemsys`` registered last, or None."""
    return db["models"].find_one(
        {"chemsys": chemsys, "promoted": True}, {"_id": 0}, sort=[("created_at", -1)]
    )


def current_model_spec(db: Database, chemsys: str, default: str | None = None) -> str | None:
    """``registry:ID`` of the current model of ``chemsys``, else ``default``."""
    doc = current_model(db, chemsys)
    return f"registry:{doc['model_id']}" if doc else default


def get_model(db: Database, model_id: str) -> dict:
    """The registry record of ``model_id`` (a unique prefix is enough).

    Raises
    ------
    CspflowError
        When no model, or more than one, matches.
    """
    import re

    doc = db["models"].find_one({"model_id": model_id}, {"_id": 0})
    if doc is not None:
        return doc
    matches = list(
        db["models"].find({"model_id": {"$regex": f"^{re.escape(model_id)}"}}, {"_id": 0}).limit(3)
    )
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CspflowError(f"model id {model_id!r} is ambiguous; give more characters")
    raise CspflowError(
        f"no model {model_id!r} in the model registry; list them with `cspflow model list`"
    )


def list_models(
    db: Database, chemsys: str | None = None, campaign: str | None = None
) -> list[dict]:
    """Registry records, newest first (without file ids)."""
    query: dict[str, Any] = {}
    if chemsys:
        query["chemsys"] = chemsys
    if campaign:
        query["campaign"] = campaign
    return list(db["models"].find(query, {"_id": 0, "file_id": 0}).sort("created_at", -1))


def lineage(db: Database, model_id: str, limit: int = 50) -> list[str]:
    """``model_id`` and its ancestors (``parent`` links), newest first.

    The chain ends at a model without parent or at a parent outside the registry (a spec such
    as ``chgnet``), which is listed last.
    """
    chain = [model_id]
    doc = db["models"].find_one({"model_id": model_id}, {"parent": 1})
    while doc and doc.get("parent") and len(chain) < limit:
        chain.append(doc["parent"])
        doc = db["models"].find_one({"model_id": doc["parent"]}, {"parent": 1})
    return chain


def fetch_model(model_id: str, db: Database | None = None, cache_dir: Path | None = None) -> Path:
    """A local path to registry model ``model_id`` (copied from GridFS once, then cached).

    The same cache ``registry:ID`` uses (:func:`cspflow.mlip.fetch_registry_model`).
    """
    from cspflow.mlip import fetch_registry_model

    return fetch_registry_model(model_id, db=db, cache_dir=cache_dir)


def export_model(db: Database, model_id: str, dest: Path) -> Path:
    """Copy a registry model file to ``dest`` (a file path or an existing directory)."""
    doc = get_model(db, model_id)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{doc['model_id']}.model"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fetch_model(doc["model_id"], db=db), dest)
    return dest


# --------------------------------------------------------------------------- one round


def learn(
    db: Database,
    chemsys: str,
    *,
    settings: TrainSettings | None = None,
    store: JobStore | None = None,
    work_dir: Path,
    current: str | None = None,
    baseline: str | None = None,
    campaign: str | None = None,
    iteration: int | None = None,
    data_campaign: str | None = None,
    max_iteration: int | None = None,
) -> LearnSummary:
    """One learning round: build the set, train, evaluate before/after, register, promote.

    Parameters
    ----------
    db, store
        The cspflow database and the JobStore with the DFT task documents.
    chemsys
        Chemical system, e.g. ``"Si"`` or ``"Mg-O"``.
    settings
        :class:`TrainSettings`.
    work_dir
        Where training runs (one subdirectory per committee member).
    current
        The model to beat (a spec). Default: the promoted registry model of ``chemsys``, if any.
        Its figures are the "before" of this round; the new model's ``parent`` is it.
    baseline
        The model to beat when ``current`` is None and the registry has no current model for
        ``chemsys`` (a campaign passes its prerelax model, e.g. ``chgnet``).
    campaign, iteration
        Recorded with the model.
    data_campaign, max_iteration
        Restrict the training data to one campaign / up to one iteration.

    Raises
    ------
    CspflowError
        Too little data, a foundation file that is not a MACE model, mace_run_train failing:
        nothing is registered and the current model stays.
    """
    s = settings or TrainSettings()
    current_spec = current or current_model_spec(db, chemsys, default=baseline)
    foundation: Path | None = None
    foundation_label: str | None = None
    if s.foundation_model:
        label = current_spec if s.foundation_model == "current" else s.foundation_model
        if label is None or label == "chgnet":
            raise CspflowError(
                "learn.foundation_model is 'current' but the current model is not a MACE model; "
                "give a MACE file or train from scratch"
            )
        foundation, known = check_foundation(label, db)
        foundation_label = label
        if s.finetune == "multihead" and known is not None and len(known) < 2:
            # mace-torch 0.3.16 indexes the foundation's E0s as a vector for the replay head;
            # a one-element model's squeezes to a scalar (IndexError: invalid index of a 0-dim
            # tensor) after minutes of data loading
            raise CspflowError(
                f"multihead fine-tuning needs a foundation model with two or more elements "
                f"({label} knows one: mace-torch fails on it); use finetune: naive"
            )
    if s.finetune not in ("naive", "multihead"):
        raise CspflowError(f"unknown finetune mode {s.finetune!r}; use naive or multihead")
    tset = build_training_set(
        db, chemsys, store=store, settings=s, campaign=data_campaign, max_iteration=max_iteration
    )
    parent = (current_spec or "").removeprefix("registry:") or None
    reused = _stored_round(db, chemsys, tset.doc.set_hash, s, parent)
    if reused is not None:  # a rerun of a finished round: no retraining
        return _summary(reused, current_spec)
    e0s = fit_e0s(tset.train)
    replay = (
        replay_frames(db, s, foundation_label, tset)
        if foundation is not None and s.finetune == "multihead"
        else None
    )
    work_dir = Path(work_dir)
    t0 = time.time()
    files = [
        train_mace(
            tset.train,
            work_dir / f"seed{s.seed + k}",
            e0s=e0s,
            settings=s,
            seed=s.seed + k,
            foundation=foundation,
            replay=replay,
        )  # fmt: skip
        for k in range(max(1, s.committee))
    ]
    train_time = round(time.time() - t0, 1)
    # metrics name the model by its registry id (what register_model will call it)
    new = evaluate(f"mace:{files[0]}", tset.test, db)
    new = new.model_copy(update={"model": f"registry:mace-{_sha256(files[0])[:12]}"})
    before = evaluate(current_spec, tset.test, db) if current_spec else None
    promoted, reason = promotion(new, before)
    base = {
        "chemsys": chemsys,
        "elements": tset.doc.elements,
        "parent": parent,
        "foundation_model": foundation_label,
        "training_set": tset.doc.model_dump(),
        "e0s": e0s,
        "train_settings": s.as_dict(),
        "campaign": campaign,
        "iteration": iteration,
        "train_time_s": train_time,
    }
    record = register_model(
        db, files[0],
        {**base, "metrics": {"new": new.model_dump(), "current": before and before.model_dump()},
         "promoted": promoted, "promotion_reason": reason},
    )  # fmt: skip
    members = []
    for k, path in enumerate(files[1:], start=1):
        member = register_model(
            db, path,
            {**base, "train_settings": {**s.as_dict(), "seed": s.seed + k},
             "metrics": {"new": evaluate(f"mace:{path}", tset.test, db).model_copy(
                 update={"model": f"registry:mace-{_sha256(path)[:12]}"}).model_dump()},
             "committee_of": record.model_id, "promoted": False,
             "promotion_reason": f"committee member of {record.model_id}"},
        )  # fmt: skip
        members.append(member.model_id)
    if members:
        db["models"].update_one({"model_id": record.model_id}, {"$set": {"committee": members}})
    (work_dir / "summary.json").write_text(
        json.dumps({"model_id": record.model_id, "reason": reason})
    )
    return _summary(get_model(db, record.model_id), current_spec)


def replay_frames(
    db: Database, s: TrainSettings, foundation: str | None, tset: TrainingSet
) -> list[Atoms]:
    """Replay data of a multi-head fine-tuning: the replay file, or the foundation's own data.

    A registry foundation was trained on frames of candidates listed in its record; those
    frames (train side) are rebuilt from this round's set. A foundation file from elsewhere
    needs ``replay_file`` (e.g. the Materials Project subset its authors publish).
    """
    if s.replay_file:
        from ase.io import read

        path = Path(s.replay_file).expanduser()
        try:
            frames = read(path, index=":")
        except Exception as exc:
            raise CspflowError(
                f"cannot read replay file {path}: {exc}; give an extxyz file with REF_energy, "
                "REF_forces and REF_stress"
            ) from None
        return list(frames)
    if foundation and foundation.startswith("registry:"):
        record = get_model(db, foundation.split(":", 1)[1])
        ids = set((record.get("training_set") or {}).get("candidate_ids") or [])
        frames = [a for a in tset.train if a.info.get("candidate_id") in ids]
        if frames:
            return frames
    raise CspflowError(
        f"multihead fine-tuning of {foundation} needs replay data: set learn.replay_file to an "
        "extxyz of the foundation's training data, or use finetune: naive"
    )


def _stored_round(
    db: Database, chemsys: str, set_hash: str, s: TrainSettings, parent: str | None
) -> dict | None:
    """The primary model of an earlier round with the same data, settings and parent."""
    return db["models"].find_one(
        {"chemsys": chemsys, "training_set.set_hash": set_hash, "train_settings": s.as_dict(),
         "parent": parent, "committee_of": None},
        {"_id": 0},
    )  # fmt: skip


def _summary(doc: dict, current_spec: str | None) -> LearnSummary:
    metrics = doc.get("metrics") or {}
    return LearnSummary(
        chemsys=doc["chemsys"],
        trained=True,
        model_id=doc["model_id"],
        promoted=bool(doc.get("promoted")),
        reason=doc.get("promotion_reason", ""),
        current_model=f"registry:{doc['model_id']}" if doc.get("promoted") else current_spec,
        n_frames=(doc.get("training_set") or {}).get("n_frames", 0),
        metrics={k: (ModelMetrics(**v) if v else None) for k, v in metrics.items()},
    )


@job
def learn_job(
    chemsys: str,
    settings: dict[str, Any],
    campaign: str | None = None,
    iteration: int | None = None,
    current: str | None = None,
    data_campaign: str | None = None,
    after: Any = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Run :func:`learn` against the configured database (``after`` only orders the job).

    A user-fixable problem (too little data, a bad foundation file) does not fail the
    campaign: the summary has ``trained=False`` and the reason, and the current model stays.
    """
    from cspflow.settings import get_settings
    from cspflow.store import get_database, get_jobstore

    cs = get_settings()
    db = get_database(cs)
    store = get_jobstore(cs)
    store.connect()
    tag = f"{campaign or 'adhoc'}-it{iteration if iteration is not None else 'x'}"
    work_dir = Path.cwd() / f"learn-{chemsys}-{tag}"
    try:
        summary = learn(
            db, chemsys, settings=TrainSettings(**settings), store=store, work_dir=work_dir,
            current=current, baseline=baseline, campaign=campaign, iteration=iteration,
            data_campaign=data_campaign,
        )  # fmt: skip
    except CspflowError as exc:
        summary = LearnSummary(
            chemsys=chemsys, trained=False, reason=str(exc),
            current_model=current or current_model_spec(db, chemsys, default=baseline),
        )  # fmt: skip
    finally:
        store.close()
    return summary.model_dump(mode="json")


@dataclass
class LearnMaker(Maker):
    """Make the learn job of a chemical system (gpu category through ``stage: learn``).

    Parameters
    ----------
    name
        Job name.
    settings
        :class:`TrainSettings` fields (min_frames, epochs, foundation_model, committee, ...).
    """

    name: str = "learn"
    settings: dict[str, Any] = field(default_factory=dict)

    def make(
        self,
        chemsys: str,
        campaign: str | None = None,
        iteration: int | None = None,
        current: str | None = None,
        data_campaign: str | None = None,
        after: Any = None,
        baseline: str | None = None,
    ) -> Job:
        """Return the job.

        ``current`` is the model to beat (default: the registry's current model of
        ``chemsys``, else ``baseline``); ``after`` only orders the job after its inputs.
        """
        settings = TrainSettings(**self.settings).as_dict()  # validates the field names
        j = learn_job(
            chemsys, settings, campaign, iteration, current, data_campaign, after, baseline
        )
        j.name = self.name
        meta: dict[str, Any] = {"stage": STAGE, "chemsys": chemsys}
        if campaign is not None:
            meta["campaign"] = campaign
        if iteration is not None:
            meta["iteration"] = iteration
        j.update_metadata(meta)
        return j
