"""MACE training: the ``mace_run_train`` command line, :func:`train_mace`, foundation checks.

No torch or MACE import here: training runs ``python -m mace.cli.run_train`` in a subprocess
(from scratch, naive or multi-head fine-tuning of a foundation model); a foundation model is
loaded through :mod:`cspflow.mlip` only to check it. The settings are
:class:`cspflow.schemas.learn.TrainSettings`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cspflow.errors import CspflowError
from cspflow.learn.dataset import write_extxyz
from cspflow.models import fetch_model
from cspflow.schemas.learn import TrainSettings

if TYPE_CHECKING:
    from ase import Atoms
    from pymongo.database import Database

__all__ = ["TrainSettings", "check_foundation", "train_mace"]


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
