"""The ``--finetune`` step of ``bench/learn_case.py``: learn from some types, judge on the rest.

CHGNet is fine-tuned (:func:`cspflow.learn.train.train_chgnet`, CHGNet's own trainer) on the
DFT frames of every structure type except the held-out ones, then CHGNet 0.3.0 ("before") and
the fine-tuned model ("after") are judged three ways:

- :func:`cspflow.learn.evaluate.evaluate` on the held-out types' frames (the learn stage's
  held-out figures: relative-energy MAE within the composition, rank correlation, force MAE on
  frames with forces);
- energies at every type's final DFT frame, relative to the lowest of the types (meV/atom), and
  the ranks; the error of each type's energy relative to DFT's ground-state type (model minus
  DFT), whose mean over the held-out types is the headline figure;
- a re-screen: every type's starting cell relaxed again with the model (the relax path of
  ``cspflow relax``) and ranked, as a campaign's re-screen would.

Only ``bench/learn_case.py`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def labelled(frames_by_type: dict[str, list[dict]]) -> dict[str, list[Any]]:
    """ASE frames with the learn stage's ``REF_*`` keys, one candidate per structure type."""
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    out: dict[str, list[Any]] = {}
    for label, frames in frames_by_type.items():
        out[label] = []
        for k, f in enumerate(frames):
            atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(f["structure"]))
            atoms.info = {"REF_energy": float(f["energy"]), "frame_id": f"{label}:{k}",
                          "candidate_id": label, "config_type": "Default"}  # fmt: skip
            atoms.arrays["REF_forces"] = np.asarray(f["forces"], dtype=float).reshape(-1, 3)
            if f.get("stress") is not None:
                atoms.info["REF_stress"] = np.asarray(f["stress"], dtype=float)
            out[label].append(atoms)
    return out


def judge(spec: str, frames: dict[str, list[Any]], holdout: list[str], starts: dict[str, Any],
          fmax: float) -> dict[str, Any]:  # fmt: skip
    """The three judgements of one model (see the module docstring)."""
    from learn_case import ranks, relative

    from cspflow.learn.evaluate import evaluate
    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    labels = list(frames)
    test = [a for t in holdout for a in frames[t]]
    metrics = evaluate(spec, test)
    model = load_model(spec, device="cpu")
    finals = [frames[t][-1] for t in labels]
    e_model = [ev.energy / len(a) for ev, a in zip(model.evaluate(finals), finals, strict=True)]
    e_dft = [a.info["REF_energy"] / len(a) for a in finals]
    rel_m, rel_d = relative(e_model), relative(e_dft)
    # each type's energy relative to DFT's lowest type, model minus DFT: what decides whether
    # the model puts a type above or below the DFT ground state (a model whose own lowest is a
    # held-out type would otherwise score that type as exact)
    gs = int(np.argmin(e_dft))
    err = [
        1000 * ((m - e_model[gs]) - (d - e_dft[gs])) for m, d in zip(e_model, e_dft, strict=True)
    ]
    outcomes = relax_structures([starts[t] for t in labels], model, fmax=fmax, max_steps=500)
    e_screen = [o.energy_per_atom if o.ok else float("inf") for o in outcomes]
    held = [i for i, t in enumerate(labels) if t in holdout]
    return {
        "model": spec,
        "heldout_metrics": metrics.model_dump(),
        "rel_meV": dict(zip(labels, rel_m, strict=True)),
        "rel_error_meV": dict(zip(labels, err, strict=True)),
        "rank_at_dft_geometry": dict(zip(labels, ranks(e_model), strict=True)),
        "rescreen_e_per_atom": dict(zip(labels, e_screen, strict=True)),
        "rescreen_rank": dict(zip(labels, ranks(e_screen), strict=True)),
        "rescreen_spacegroup": {t: o.spacegroup_number for t, o in zip(labels, outcomes, strict=True)},
        "heldout_rel_mae_meV": float(np.mean([abs(err[i]) for i in held])),
        "all_rel_mae_meV": float(np.mean(np.abs(err))),
        "dft_rel_meV": dict(zip(labels, rel_d, strict=True)),
    }  # fmt: skip


def finetune_case(frames_by_type: dict[str, list[dict]], holdout: list[str], starts: dict[str, Any],
                  work_dir: Path, epochs: int, seed: int, fmax: float, lr: float | None = None,
                  freeze: bool = False) -> dict[str, Any]:  # fmt: skip
    """Fine-tune on all types but ``holdout``; CHGNet 0.3.0 and the result, judged."""
    import json
    import time

    from cspflow.learn.train import train_chgnet
    from cspflow.schemas.learn import TrainSettings

    frames = labelled(frames_by_type)
    train = [a for t, fr in frames.items() if t not in holdout for a in fr]
    settings = TrainSettings(model="chgnet", chgnet_epochs=epochs, seed=seed, device="cpu",
                             chgnet_freeze=freeze,
                             **({} if lr is None else {"chgnet_lr": lr}))  # fmt: skip
    path, saved = work_dir / "chgnet_finetuned.pth.tar", work_dir / "finetune_info.json"
    if path.is_file() and saved.is_file():  # trained before with these settings: reuse
        info = json.loads(saved.read_text())
        train_s = float(info["train_s"])
    else:
        t0 = time.monotonic()
        path, info = train_chgnet(train, work_dir, settings=settings)
        train_s = time.monotonic() - t0
        keep = {"energy_shift": info.get("energy_shift"), "best_epoch": info.get("best_epoch")}
        saved.write_text(json.dumps({**keep, "train_s": train_s}, default=str))
    before = judge("chgnet", frames, holdout, starts, fmax)
    after = judge(f"chgnet:{path}", frames, holdout, starts, fmax)
    return {
        "holdout": holdout,
        "train_frames": len(train),
        "heldout_frames": sum(len(frames[t]) for t in holdout),
        "epochs": epochs,
        "seed": seed,
        "lr": settings.chgnet_lr,
        "freeze": freeze,
        "train_s": round(train_s, 1),
        "model_file": str(path),
        "energy_shift": info.get("energy_shift"),
        "best_epoch": info.get("best_epoch"),
        "before": before,
        "after": after,
    }


def render(ft: dict[str, Any]) -> str:
    """The learning table (Markdown): per type, before -> after."""
    from learn_case import ranks

    b, a = ft["before"], ft["after"]
    lines = [
        f"Fine-tuned on {ft['train_frames']} frames of the other types ({ft['epochs']} epochs, "
        f"lr {ft['lr']:g}{', frozen' if ft['freeze'] else ''}, {ft['train_s']:.0f} s); held out: {', '.join(ft['holdout'])} "
        f"({ft['heldout_frames']} frames). Relative energies at the DFT geometries (meV/atom).",
        "| type | held out | DFT rel | CHGNet rel | fine-tuned rel | rank DFT / CHGNet / "
        "fine-tuned | re-screen rank CHGNet / fine-tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    dft_rank = ranks(list(b["dft_rel_meV"].values()))
    for i, t in enumerate(b["dft_rel_meV"]):
        lines.append(
            f"| {t} | {'yes' if t in ft['holdout'] else ''} | {b['dft_rel_meV'][t]:.1f} | "
            f"{b['rel_meV'][t]:.1f} | {a['rel_meV'][t]:.1f} | {dft_rank[i]} / "
            f"{b['rank_at_dft_geometry'][t]} / {a['rank_at_dft_geometry'][t]} | "
            f"{b['rescreen_rank'][t]} / {a['rescreen_rank'][t]} |"
        )
    hb, ha = b["heldout_metrics"], a["heldout_metrics"]
    lines.append(
        "error of the energy relative to DFT's ground-state type, mean |model - DFT| over the "
        f"held-out types: {b['heldout_rel_mae_meV']:.1f} -> "
        f"{a['heldout_rel_mae_meV']:.1f} meV/atom (all types {b['all_rel_mae_meV']:.1f} -> "
        f"{a['all_rel_mae_meV']:.1f}); learn.evaluate on the held-out frames: relative-energy "
        f"MAE {hb.get('relative_energy_mae_mev_per_atom')} -> "
        f"{ha.get('relative_energy_mae_mev_per_atom')} meV/atom, rank correlation "
        f"{hb.get('rank_correlation')} -> {ha.get('rank_correlation')}, force MAE "
        f"{hb.get('force_mae_moving_mev_per_a')} -> {ha.get('force_mae_moving_mev_per_a')} meV/A"
    )
    return "\n".join(lines)
