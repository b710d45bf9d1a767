"""CHGNet fine-tuning with CHGNet's own trainer (used by :mod:`cspflow.learn.train`).

Beside :mod:`cspflow.mlip` and :mod:`cspflow.mlip_d3`, the one module that imports torch and
chgnet. :func:`finetune_chgnet` starts from CHGNet 0.3.0's universal weights (they ship in the
chgnet wheel) or from a fine-tuned CHGNet file, and trains on labelled ASE frames (``REF_*``
keys) with ``chgnet.trainer.Trainer``: energies per atom, forces, and stresses when every frame
has one; magnetic moments are not trained.

Before training, the labels' offset from the starting model is moved into CHGNet's composition
model (``AtomRef``, a linear energy per element fraction): a least-squares fit of the per-atom
residual (DFT minus model) on the element fractions of the training frames is added to its
weights. A code or functional offset (GPAW's reference atoms, MP2020-corrected VASP energies)
then costs the network nothing, and training spends its steps on the structure-dependent part.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["CHGNET_VERSION", "finetune_chgnet", "load_chgnet"]

CHGNET_VERSION = "0.3.0"
_MAX_Z = 94


def load_chgnet(path: Path | None = None) -> Any:
    """CHGNet's universal weights (``path`` None) or a CHGNet file, on the CPU.

    Raises
    ------
    ValueError
        A file that is not a saved CHGNet (no ``model`` entry with ``model_args``).
    """
    import torch
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(None):
        if path is None:
            return CHGNet.load(model_name=CHGNET_VERSION, use_device="cpu", verbose=False)
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model_args" not in (state.get("model") or {}):
            raise ValueError("not a saved CHGNet (no model weights and arguments)")
        return CHGNet.from_dict(state["model"])


def _fractions(atoms: Atoms) -> np.ndarray:
    row = np.bincount(np.asarray(atoms.numbers) - 1, minlength=_MAX_Z).astype(float)
    return row / len(atoms)


def _shift_composition_model(model: Any, frames: list[Atoms]) -> dict[str, float]:
    """Fit the per-atom offset of the labels from ``model`` per element fraction and add it to
    the composition model's weights; return the shift per element (eV/atom)."""
    import torch
    from ase.data import chemical_symbols
    from pymatgen.io.ase import AseAtomsAdaptor

    structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
    preds = model.predict_structure(structures, task="e", batch_size=16)
    preds = [preds] if isinstance(preds, dict) else preds
    residual = np.array(
        [a.info["REF_energy"] / len(a) - float(p["e"]) for a, p in zip(frames, preds, strict=True)]
    )
    x = np.stack([_fractions(a) for a in frames])
    present = np.flatnonzero(x.any(axis=0))
    # minimum-norm: with one stoichiometry only the sum per formula unit is determined
    w, *_ = np.linalg.lstsq(x[:, present], residual, rcond=None)
    with torch.no_grad():
        weight = model.composition_model.fc.weight
        for z0, dw in zip(present, w, strict=True):
            weight[0, z0] += float(dw)
    return {
        chemical_symbols[z0 + 1]: round(float(dw), 6) for z0, dw in zip(present, w, strict=True)
    }


def _freeze(model: Any) -> int:
    """Freeze what CHGNet's fine-tuning example freezes (embeddings, basis expansions, the
    first three atom convolutions, the bond and angle layers): the last atom convolution and
    the readout MLP train. Returns the number of trainable parameters left."""
    import torch.nn as nn

    for part in (model.atom_embedding, model.bond_embedding, model.angle_embedding,
                 model.bond_basis_expansion, model.angle_basis_expansion,
                 model.atom_conv_layers[:3], model.bond_conv_layers, model.angle_layers):  # fmt: skip
        if isinstance(part, nn.Module):
            for p in part.parameters():
                p.requires_grad = False
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _dataset(frames: list[Atoms], with_stress: bool) -> Any:
    from ase.stress import voigt_6_to_full_3x3_stress
    from ase.units import GPa
    from chgnet.data.dataset import StructureData
    from pymatgen.io.ase import AseAtomsAdaptor

    stresses = None
    if with_stress:
        # StructureData takes VASP's convention (kbar, compressive positive) and multiplies by
        # -0.1 into CHGNet's GPa: ASE's stress (eV/A^3) is -10 / GPa times that
        stresses = [
            (-10.0 / GPa * voigt_6_to_full_3x3_stress(np.asarray(a.info["REF_stress"]))).tolist()
            for a in frames
        ]
    return StructureData(
        structures=[AseAtomsAdaptor.get_structure(a) for a in frames],
        energies=[a.info["REF_energy"] / len(a) for a in frames],
        forces=[np.asarray(a.arrays["REF_forces"]).tolist() for a in frames],
        stresses=stresses,
        structure_ids=[a.info.get("frame_id", str(i)) for i, a in enumerate(frames)],
        shuffle=False,
    )


def finetune_chgnet(
    train: list[Atoms],
    valid: list[Atoms],
    work_dir: Path,
    *,
    base: Path | None = None,
    device: str = "cpu",
    epochs: int = 20,
    lr: float = 3e-4,
    batch_size: int = 8,
    seed: int = 1,
    energy_weight: float = 1.0,
    forces_weight: float = 1.0,
    stress_weight: float = 0.1,
    threads: int = 1,
    freeze: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune CHGNet on labelled frames; return the model file and what was done.

    Parameters
    ----------
    train, valid
        Training and validation frames (``REF_energy`` eV, ``REF_forces`` eV/A, optional
        ``REF_stress`` ASE Voigt eV/A^3); the checkpoint with the lowest validation energy
        MAE is the model.
    work_dir
        Checkpoints, ``chgnet_train.log`` (the trainer's output) and the model file
        (``chgnet_finetuned.pth.tar``, loadable by ``CHGNet.from_file``).
    base
        A CHGNet file to start from; None: the universal 0.3.0 weights.
    device
        ``cpu`` or ``cuda``.
    epochs, lr, batch_size, seed
        Trainer settings (Adam, cosine learning-rate decay, MSE loss).
    energy_weight, forces_weight, stress_weight
        Loss weights; stresses are trained only when every training frame has one.
    threads
        torch threads while training (0: leave as is); restored afterwards.
    freeze
        Train only the last atom convolution and the readout (:func:`_freeze`).

    Returns
    -------
    path, info
        The model file; ``energy_shift`` (eV/atom per element moved into the composition
        model), ``targets``, ``best_epoch``, the validation MAEs per epoch.
    """
    import torch
    from chgnet.data.dataset import get_loader
    from chgnet.trainer import Trainer

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        with open(work_dir / "chgnet_train.log", "w") as log, contextlib.redirect_stdout(log):
            model = load_chgnet(base)
            shift = _shift_composition_model(model, train)
            trainable = _freeze(model) if freeze else sum(p.numel() for p in model.parameters())
            with_stress = all("REF_stress" in a.info for a in train + valid)
            targets: Literal["ef", "efs"] = "efs" if with_stress else "ef"
            pin = device.startswith("cuda")
            train_loader = get_loader(
                _dataset(train, with_stress), batch_size=batch_size, pin_memory=pin
            )
            val_loader = get_loader(
                _dataset(valid, with_stress), batch_size=batch_size, pin_memory=pin
            )
            trainer = Trainer(
                model=model, targets=targets, energy_loss_ratio=energy_weight,
                force_loss_ratio=forces_weight, stress_loss_ratio=stress_weight,
                optimizer="Adam", scheduler="CosLR", criterion="MSE", epochs=epochs,
                learning_rate=lr, print_freq=10**6, torch_seed=seed, data_seed=seed,
                use_device=device,
            )  # fmt: skip
            ckpt = work_dir / "checkpoints"
            trainer.train(train_loader, val_loader, save_dir=str(ckpt))
    finally:
        torch.set_num_threads(old_threads)
    history = trainer.training_history
    val_e = history["e"]["val"]
    best = sorted(ckpt.glob("bestE_*.pth.tar"))
    if not val_e or not best or not all(np.isfinite(val_e)):
        raise RuntimeError(f"CHGNet training gave no usable checkpoint; see {work_dir}")
    state = torch.load(best[-1], map_location="cpu", weights_only=False)
    path = work_dir / "chgnet_finetuned.pth.tar"
    torch.save({"model": state["model"]}, path)  # weights and arguments only: 4x smaller
    info = {
        "energy_shift": shift,
        "targets": targets,
        "best_epoch": int(np.argmin(val_e)),
        "val_energy_mae_ev_per_atom": [round(float(v), 6) for v in val_e],
        "n_train": len(train),
        "n_valid": len(valid),
        "trainable_parameters": int(trainable),
    }
    (work_dir / "chgnet_train.json").write_text(json.dumps(info, indent=1))
    return path, info
