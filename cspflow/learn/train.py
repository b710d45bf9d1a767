"""Training: MACE (``mace_run_train``, :func:`train_mace`), CHGNet fine-tuning
(:func:`train_chgnet`), and the foundation-model checks of both.

No torch, MACE or CHGNet import here: MACE training runs ``python -m mace.cli.run_train`` in a
subprocess (from scratch, naive or multi-head fine-tuning of a foundation model); CHGNet
fine-tuning runs CHGNet's own trainer through :mod:`cspflow.mlip_chgnet`; a foundation model is
loaded through :mod:`cspflow.mlip` only to check it. The settings are
:class:`cspflow.schemas.learn.TrainSettings`.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cspflow.errors import CspflowError
from cspflow.learn.dataset import validation_split, write_extxyz
from cspflow.models import fetch_model, registry_kind
from cspflow.schemas.learn import TrainSettings

if TYPE_CHECKING:
    from ase import Atoms
    from pymongo.database import Database

__all__ = [
    "TrainSettings",
    "check_coverage",
    "check_foundation",
    "resolve_foundation",
    "train_chgnet",
    "train_mace",
]


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


def _family_of(spec: str, db: Database | None) -> str | None:
    """``chgnet`` or ``mace`` where the spec itself says so (None: a bare path)."""
    if spec == "chgnet" or spec.startswith("chgnet:"):
        return "chgnet"
    if spec.startswith("mace:"):
        return "mace"
    if spec.startswith("registry:"):
        return registry_kind(spec.split(":", 1)[1], db=db)
    return None


def resolve_foundation(
    s: TrainSettings, current: str | None, db: Database | None = None
) -> tuple[Path | None, str | None, frozenset[int] | None]:
    """The model a round starts from: its file, its label and the elements it knows.

    ``(None, None, None)``: MACE from scratch; ``(None, "chgnet", None)``: CHGNet's universal
    weights. ``foundation_model: current`` means the current model (``current``).

    Raises
    ------
    CspflowError
        One line, before any work: a foundation of the other architecture than ``s.model``, a
        missing file or one that does not load, an unknown fine-tuning mode, multihead
        fine-tuning of CHGNet or of a one-element MACE model.
    """
    if s.finetune not in ("naive", "multihead"):
        raise CspflowError(f"unknown finetune mode {s.finetune!r}; use naive or multihead")
    label = current if s.foundation_model == "current" else s.foundation_model
    if s.model == "chgnet":
        if s.finetune == "multihead":
            raise CspflowError(
                "learn.model chgnet fine-tunes CHGNet naively; multihead fine-tuning is MACE's"
            )
        if label is None or label == "chgnet":
            return None, "chgnet", None
        family = _family_of(label, db)
        if family == "mace":
            raise CspflowError(
                f"foundation model {label} is a MACE model but learn.model is chgnet; give a "
                "CHGNet model (chgnet, chgnet:PATH, a CHGNet registry:ID) or set learn.model: mace"
            )
        if label.startswith("registry:"):
            path = fetch_model(label.split(":", 1)[1], db=db)
        else:
            path = Path(label.removeprefix("chgnet:")).expanduser()
        from cspflow.mlip import load_model

        try:
            load_model(f"chgnet:{path}", device="cpu")
        except CspflowError as exc:
            raise CspflowError(f"foundation model: {exc}") from None
        return path.resolve(), label, None
    if s.foundation_model is None:
        return None, None, None
    if label is None:
        raise CspflowError(
            "learn.foundation_model is 'current' but there is no current model for this system; "
            "give a MACE file or train from scratch"
        )
    if label == "chgnet" or _family_of(label, db) == "chgnet":
        raise CspflowError(
            f"learn.foundation_model {label} is a CHGNet model but learn.model is mace; give a "
            "MACE file, train from scratch, or set learn.model: chgnet"
        )
    path, known = check_foundation(label, db)
    if s.finetune == "multihead" and known is not None and len(known) < 2:
        # mace-torch 0.3.16 indexes the foundation's E0s as a vector for the replay head;
        # a one-element model's squeezes to a scalar (IndexError: invalid index of a 0-dim
        # tensor) after minutes of data loading
        raise CspflowError(
            f"multihead fine-tuning needs a foundation model with two or more elements "
            f"({label} knows one: mace-torch fails on it); use finetune: naive"
        )
    return path, label, known


def check_coverage(label: str | None, known: frozenset[int] | None, elements: list[str]) -> None:
    """Refuse a foundation model that does not know every element of the training frames.

    Raises
    ------
    CspflowError
        One line naming the missing elements.
    """
    from ase.data import atomic_numbers, chemical_symbols

    if known is None:
        return
    missing = sorted(el for el in elements if atomic_numbers[el] not in known)
    if missing:
        knows = ", ".join(chemical_symbols[z] for z in sorted(known))
        raise CspflowError(
            f"foundation model {label} knows {knows} but the training frames also have "
            f"{', '.join(missing)}; fine-tune a model that covers them or train from scratch"
        )


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
    # mace's own validation split picks the best checkpoint; at least one frame of it
    valid_fraction = max(0.1, 1.5 / max(1, n_train))
    # mace drops the last incomplete training batch: a batch larger than what is left after
    # the validation split leaves no batch at all (torch.cat of an empty list, after data loading)
    batch = max(1, min(s.batch_size, n_train - math.ceil(valid_fraction * n_train)))
    args = [
        f"--name={name}",
        f"--train_file={train_xyz}",
        f"--valid_fraction={valid_fraction:.3f}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--stress_key=REF_stress",
        f"--E0s={e0_arg}",
        "--loss=stress",
        f"--energy_weight={s.energy_weight}",
        f"--forces_weight={s.forces_weight}",
        f"--stress_weight={s.stress_weight}",
        f"--batch_size={batch}",
        f"--valid_batch_size={batch}",
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


def train_chgnet(
    train: list[Atoms],
    work_dir: Path,
    *,
    settings: TrainSettings | None = None,
    seed: int | None = None,
    foundation: Path | None = None,
) -> tuple[Path, dict]:
    """Fine-tune CHGNet (universal weights, or ``foundation``) on ``train``; return its file
    and what :func:`~cspflow.mlip_chgnet.finetune_chgnet` reports (``energy_shift``, ...).

    A tenth of the training candidates (at least one; none below ten candidates, when every
    frame is fitted and validates: :func:`~cspflow.learn.dataset.validation_split`) validate,
    for checkpoint selection; the held-out split is never seen. See :func:`cspflow.mlip_chgnet.finetune_chgnet`.

    Raises
    ------
    CspflowError
        When training gives no usable checkpoint (NaN losses, ...).
    """
    from cspflow.mlip import resolve_device
    from cspflow.mlip_chgnet import finetune_chgnet

    s = settings or TrainSettings()
    if not train:
        raise CspflowError("too little data: no training frames; the current model stays")
    fit, valid = validation_split(train)
    try:
        return finetune_chgnet(
            fit, valid, Path(work_dir), base=foundation, device=resolve_device(s.device),
            epochs=s.chgnet_epochs, lr=s.chgnet_lr, batch_size=s.batch_size,
            seed=s.seed if seed is None else seed, energy_weight=s.energy_weight,
            forces_weight=s.chgnet_forces_weight, stress_weight=s.chgnet_stress_weight,
            threads=s.threads, freeze=s.chgnet_freeze,
        )  # fmt: skip
    except RuntimeError as exc:
        raise CspflowError(
            f"CHGNet fine-tuning failed: {(str(exc).splitlines() or [''])[0]}"
        ) from None
