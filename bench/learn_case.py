"""Active-learning case: does CHGNet rank a composition's structure types like PBE does?

For one composition and a list of structure types (template ids or names of
:mod:`cspflow.generate.templates`, e.g. ``Cotunnite Fluorite Pyrite``), builds each type with the
composition's elements (DLS volume), relaxes it with CHGNet through the relax path of
``cspflow relax`` (:func:`cspflow.prerelax.relax.relax_structures`), then runs GPAW PBE on the
CHGNet geometry through the DFT path of ``cspflow dft relax``
(:func:`cspflow.dft.run.relax_structures`, ``fast`` preset by default): a cell relaxation
(``--dft cell``) or, where that is too slow, a single point at the CHGNet geometry
(``--dft static``, labelled as such everywhere). Prints per type: CHGNet and DFT energy per
atom, each relative to that method's lowest, both ranks, and the number of DFT ionic frames.
The frames (energy, forces, stress; the labels a learning round trains on) go to
``bench/results/learn_case_<formula>.extxyz``, the table to ``...json`` beside it (with the
level appended to the name when it is not the default). ``--geometry dft --dft static
--ecut E --kpoint-density K`` re-evaluates the PBE-relaxed cells at higher settings: a
convergence check of the relative energies.

Each (type, level) result is cached under ``--work`` (default ``$TMPDIR/cspflow-learn-case``),
so types can be run one at a time (``--only``) and the table assembled by a last call that runs
nothing new.

    OMP_NUM_THREADS=1 nice -n 5 python bench/learn_case.py BaCl2 Cotunnite Fluorite Pyrite \\
        --dft cell [--json]

``--finetune HOLDOUT ...`` then fine-tunes CHGNet on the other types' DFT frames (the learn
stage's :func:`cspflow.learn.train.train_chgnet`) and prints the learning table: held-out
figures, relative energies and ranks at the DFT geometries and a re-screen, CHGNet 0.3.0 before
and the fine-tuned model after (``bench/_finetune.py``).

Errors a user can cause print one line ``error: ...`` on stderr and exit 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Level:
    """One DFT measurement: GPAW mode, preset, overrides, and the geometry it starts from.

    ``geometry`` is ``chgnet`` (the CHGNet-relaxed cell) or ``dft`` (the last frame of the
    default run, ``fast`` cell relax: a convergence check of its energies at higher settings).
    """

    mode: str = "cell"
    preset: str = "fast"
    ecut: float | None = None
    kpoint_density: float | None = None
    geometry: str = "chgnet"

    @property
    def tag(self) -> str:
        """Cache and file name part: ``dft_cell`` for the default, details appended."""
        parts = [f"dft_{self.mode}"]
        if self.preset != "fast":
            parts.append(self.preset)
        if self.ecut is not None:
            parts.append(f"ecut{self.ecut:g}")
        if self.kpoint_density is not None:
            parts.append(f"k{self.kpoint_density:g}")
        if self.geometry != "chgnet":
            parts.append(f"at-{self.geometry}")
        return "_".join(parts)

    def describe(self) -> str:
        """Words for the table title."""
        what = {"cell": "cell relax", "positions": "positions relax", "static": "single point"}
        extra = [f"{self.preset} preset"]
        if self.ecut is not None:
            extra.append(f"ecut {self.ecut:g} eV")
        if self.kpoint_density is not None:
            extra.append(f"k-point density {self.kpoint_density:g}/A^-1")
        start = "CHGNet" if self.geometry == "chgnet" else "fast-preset PBE relaxed"
        return f"GPAW PBE {what[self.mode]} ({', '.join(extra)}) from the {start} geometry"


DEFAULT = Level()


class CaseError(Exception):
    """A user error: printed as one line, exit status 2."""


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[learn_case {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def resolve_types(formula: str, names: list[str]) -> list[tuple[str, Any]]:
    """``(label, TemplateType)`` for every name: a template id, name or built-in name."""
    from cspflow.generate.templates import library_templates, stoichiometry

    templates = library_templates(stoichiometry(formula))
    out = []
    for name in names:
        key = name.lower()
        hits = [t for t in templates if key in (t.id.lower(), t.name.lower(),
                                                str(t.tags.get("builtin", "")).lower())]  # fmt: skip
        if not hits:
            known = sorted({t.name for t in templates})
            raise CaseError(f"no {stoichiometry(formula)} template named {name!r}; "
                            f"known: {', '.join(known)}")  # fmt: skip
        out.append((name, hits[0]))
    return out


def build(formula: str, template: Any) -> Any:
    """The template with ``formula``'s elements (matched by atom count), DLS volume."""
    from pymatgen.core import Composition

    from cspflow.generate.templates import place

    def by_amount(comp: Composition) -> list[str]:
        return [el.symbol for el, _ in sorted(comp.reduced_composition.items(),
                                               key=lambda kv: (kv[1], kv[0].symbol))]  # fmt: skip

    mapping = dict(zip(by_amount(template.structure.composition),
                       by_amount(Composition(formula)), strict=True))  # fmt: skip
    return place(template.structure, mapping, "dls")


def _cache(work: Path, formula: str, label: str, level: str) -> Path:
    return work / formula / label.replace(" ", "_").replace("/", "_") / f"{level}.json"


def run_chgnet(formula: str, types: list[tuple[str, Any]], work: Path, fmax: float) -> None:
    """CHGNet-relax every type not cached yet (the relax path of ``cspflow relax``)."""
    todo = [(label, t) for label, t in types
            if not _cache(work, formula, label, "chgnet").exists()]  # fmt: skip
    if not todo:
        return
    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    model = load_model("chgnet", device="cpu")
    for label, t in todo:
        start = build(formula, t)
        t0 = time.monotonic()
        (o,) = relax_structures([start], model, fmax=fmax, max_steps=500)
        if not o.ok or o.structure is None:
            log(f"chgnet {label}: {o.failure_reason}")
        row = {
            "type": label, "template": t.id, "start": start.as_dict(), "status": o.status,
            "reason": o.failure_reason, "steps": o.steps, "energy_per_atom": o.energy_per_atom,
            "spacegroup": o.spacegroup_number, "nsites": len(start),
            "structure": o.structure.as_dict() if o.structure is not None else None,
            "wall_s": round(time.monotonic() - t0, 2),
        }  # fmt: skip
        path = _cache(work, formula, label, "chgnet")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, default=str))
        log(f"chgnet {label}: {o.energy_per_atom:.4f} eV/atom, {o.steps} steps, "
            f"sg {o.spacegroup_number}, {row['wall_s']} s")  # fmt: skip


def run_dft(formula: str, label: str, work: Path, level: Level) -> dict[str, Any]:
    """GPAW on one type (the DFT path of ``cspflow dft relax``), from ``level.geometry``."""
    from pymatgen.core import Structure

    from cspflow.dft.run import relax_structures
    from cspflow.dft.taskdoc import ionic_steps

    path = _cache(work, formula, label, level.tag)
    if path.exists():
        return json.loads(path.read_text())
    if level.geometry == "chgnet":
        chg = json.loads(_cache(work, formula, label, "chgnet").read_text())
        if chg["structure"] is None:
            raise CaseError(f"CHGNet did not relax {label}: {chg['reason']}")
        structure = Structure.from_dict(chg["structure"])
    else:
        base = _cache(work, formula, label, DEFAULT.tag)
        last = distinct_frames(json.loads(base.read_text()))[-1:] if base.exists() else []
        if not last:
            raise CaseError(f"no {DEFAULT.tag} run of {label} to start from; run it first")
        # without the frame's energy/forces/stress (Structure.properties): atomate2's job
        # raises on a structure that carries them
        structure = Structure.from_dict({**last[0]["structure"], "properties": {}})
    frames: list[dict] = []

    def keep(_name: str, doc: dict) -> None:
        frames.extend(ionic_steps(doc))

    mode = level.mode
    spec: dict[str, Any] = {"engine": "gpaw", "preset": level.preset, "relax": mode}
    if level.ecut is not None:
        spec["gpaw"] = {"ecut": level.ecut}
    if level.kpoint_density is not None:
        spec["kpoint_density"] = level.kpoint_density
    log(f"gpaw {level.tag} {label} ({len(structure)} atoms) started")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="learn-case-") as tmp:
        summary = relax_structures([(label, structure)], spec, Path(tmp), on_task_doc=keep)
    result = summary["results"][0]
    row = {
        "type": label, "mode": mode, "level": level.tag, "preset": summary["preset"],
        "settings": summary["settings"],
        "status": result["status"], "reason": result.get("reason"),
        "energy_per_atom": result.get("energy_per_atom"), "spacegroup": result.get("spacegroup"),
        "wall_s": round(time.monotonic() - t0, 1),
        "frames": [{"structure": f["structure"], "energy": f["energy"], "forces": f["forces"],
                    "stress": None if f["stress"] is None else [float(x) for x in f["stress"]]}
                   for f in frames if f.get("structure") and f.get("energy") is not None],
    }  # fmt: skip
    path.write_text(json.dumps(row, default=str))
    log(f"gpaw {level.tag} {label}: {row['status']}, {row['energy_per_atom']} eV/atom, "
        f"{len(row['frames'])} frames, {row['wall_s']} s")  # fmt: skip
    return row


def distinct_frames(row: dict[str, Any] | None) -> list[dict]:
    """The DFT frames of a cached result without repeats (the trajectory of an ASE relaxation
    that converges at once holds the first configuration twice)."""
    out: list[dict] = []
    for f in (row or {}).get("frames", []):
        if out and f["energy"] == out[-1]["energy"] and f["structure"] == out[-1]["structure"]:
            continue
        out.append(f)
    return out


def ranks(values: list[float | None]) -> list[int | None]:
    """1-based ranks (lowest first); None stays None."""
    order = sorted((v, i) for i, v in enumerate(values) if v is not None)
    out: list[int | None] = [None] * len(values)
    for r, (_, i) in enumerate(order, 1):
        out[i] = r
    return out


def relative(values: list[float | None]) -> list[float | None]:
    """meV/atom above the lowest of ``values`` (None stays None)."""
    known = [v for v in values if v is not None]
    return [None if v is None else 1000 * (v - min(known)) for v in values]


def table(formula: str, labels: list[str], work: Path, level: Level = DEFAULT) -> dict[str, Any]:
    """Per type: energies, relative energies (meV/atom), ranks, frames; the verdict.

    Ranks and relative energies are taken over the types that have both a CHGNet and a DFT
    energy. ``dft_sp_*`` is DFT at the CHGNet geometry (the first frame of the DFT run).
    """
    chg = [json.loads(_cache(work, formula, lb, "chgnet").read_text()) for lb in labels]
    paths = [_cache(work, formula, lb, level.tag) for lb in labels]
    dft = [json.loads(p.read_text()) if p.exists() else None for p in paths]
    frames = [distinct_frames(d) for d in dft]
    e_c = [c["energy_per_atom"] for c in chg]
    e_d = [d["energy_per_atom"] if d and d["status"] != "failed" else None for d in dft]
    e_sp = [
        fr[0]["energy"] / c["nsites"] if fr else None for fr, c in zip(frames, chg, strict=True)
    ]
    both = [i for i in range(len(labels)) if e_c[i] is not None and e_d[i] is not None]

    def over_both(values: list[float | None]) -> list[float | None]:
        return [values[i] if i in both else None for i in range(len(values))]

    cols = {"chgnet": over_both(e_c), "dft": over_both(e_d), "dft_sp": over_both(e_sp)}
    rel = {k: relative(v) for k, v in cols.items()}
    rank = {k: ranks(v) for k, v in cols.items()}
    rows = []
    for i, lb in enumerate(labels):
        row: dict[str, Any] = {
            "type": lb, "template": chg[i]["template"], "nsites": chg[i]["nsites"],
            "chgnet_spacegroup": chg[i]["spacegroup"], "chgnet_steps": chg[i]["steps"],
            "chgnet_e_per_atom": e_c[i], "dft_e_per_atom": e_d[i], "dft_sp_e_per_atom": e_sp[i],
            "dft_status": dft[i]["status"] if dft[i] else "not run",
            "dft_spacegroup": dft[i]["spacegroup"] if dft[i] else None,
            "dft_frames": len(frames[i]),
            "chgnet_wall_s": chg[i]["wall_s"], "dft_wall_s": dft[i]["wall_s"] if dft[i] else None,
        }  # fmt: skip
        for k in cols:
            row[f"{k}_rel_meV"], row[f"{k}_rank"] = rel[k][i], rank[k][i]
        c, d = rel["chgnet"][i], rel["dft"][i]
        row["error_meV"] = None if c is None or d is None else c - d
        rows.append(row)
    first = {k: next((r["type"] for r in rows if r[f"{k}_rank"] == 1), None) for k in cols}
    max_err = max((abs(r["error_meV"]) for r in rows if r["error_meV"] is not None), default=None)
    return {
        "formula": formula, "dft_level": level.tag, "dft": level.describe(),
        "dft_settings": next((d["settings"] for d in dft if d), None),
        "rows": rows, "compared": len(both), "chgnet_first": first["chgnet"],
        "dft_first": first["dft"], "dft_sp_first": first["dft_sp"],
        "max_rel_error_meV": max_err,
        "qualifies": len(both) >= 2 and (first["chgnet"] != first["dft"] or max_err > 10.0),
    }  # fmt: skip


def write_extxyz(formula: str, labels: list[str], work: Path, level: Level, path: Path) -> int:
    """Every DFT frame as extxyz (energy, forces, stress; type and step in info); the count."""
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    images = []
    for lb in labels:
        p = _cache(work, formula, lb, level.tag)
        if not p.exists():
            continue
        for k, f in enumerate(distinct_frames(json.loads(p.read_text()))):
            atoms = AseAtomsAdaptor.get_atoms(Structure.from_dict(f["structure"]))
            atoms.info = {"structure_type": lb, "step": k, "dft": f"gpaw-pbe-{level.tag}"}
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(f["energy"]),
                forces=None if f["forces"] is None else np.asarray(f["forces"], dtype=float),
                stress=None if f["stress"] is None else np.asarray(f["stress"], dtype=float),
            )  # fmt: skip
            images.append(atoms)
    if images:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(str(path), images, format="extxyz")
    return len(images)


def render(result: dict[str, Any]) -> str:
    """The table as Markdown, with the verdict line."""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        f"{result['formula']}: CHGNet 0.3.0 relax vs {result['dft']} "
        "(SP: DFT at the starting geometry, first frame; rel: meV/atom above the lowest)",
        "| type | atoms | CHGNet E (eV/at) | DFT E (eV/at) | CHGNet rel | DFT rel | DFT SP rel "
        "| rank CHGNet / DFT / SP | DFT frames | DFT time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['type']} | {r['nsites']} | {f(r['chgnet_e_per_atom'], '.4f')} | "
            f"{f(r['dft_e_per_atom'], '.4f')} | {f(r['chgnet_rel_meV'], '.1f')} | "
            f"{f(r['dft_rel_meV'], '.1f')} | {f(r['dft_sp_rel_meV'], '.1f')} | "
            f"{f(r['chgnet_rank'], 'd')} / {f(r['dft_rank'], 'd')} / {f(r['dft_sp_rank'], 'd')} | "
            f"{r['dft_frames']} | {f(r['dft_wall_s'], '.0f')} |"
        )
    lines.append(
        f"CHGNet rank 1: {result['chgnet_first']}; DFT rank 1: {result['dft_first']} "
        f"(SP: {result['dft_sp_first']}); largest relative-energy error "
        f"{f(result['max_rel_error_meV'], '.1f')} meV/atom; qualifies: {result['qualifies']}"
    )
    return "\n".join(lines)


def check_finetune(
    labels: list[str], holdout: list[str], epochs: int, dft: str, lr: float | None = None
) -> None:
    """One-line errors for ``--finetune`` before anything runs."""
    import importlib.util

    if dft == "none":
        raise CaseError("--finetune needs DFT frames; leave out --dft none")
    unknown = sorted(set(holdout) - set(labels))
    if unknown:
        raise CaseError(f"--finetune holds out a type not listed: {', '.join(unknown)}")
    if len(set(holdout)) >= len(labels):
        raise CaseError("--finetune must leave at least one type to train on")
    if epochs < 1:
        raise CaseError(f"--epochs must be at least 1, not {epochs}")
    if lr is not None and not lr > 0:
        raise CaseError(f"--lr must be positive, not {lr:g}")
    import cspflow.learn.train as train

    if not hasattr(train, "train_chgnet") or importlib.util.find_spec("chgnet") is None:
        raise CaseError("--finetune needs CHGNet fine-tuning (cspflow.learn.train.train_chgnet)")


def finetune(formula: str, labels: list[str], args: argparse.Namespace, level: Level) -> dict:
    """Run the ``--finetune`` step on ``level``'s frames (:mod:`_finetune`)."""
    from pymatgen.core import Structure

    from cspflow.errors import CspflowError

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _finetune import finetune_case

    frames, starts = {}, {}
    for lb in labels:
        path = _cache(args.work, formula, lb, level.tag)
        row = json.loads(path.read_text()) if path.exists() else None
        if not distinct_frames(row):
            raise CaseError(f"--finetune needs {level.tag} frames of every type; {lb} has none")
        frames[lb] = distinct_frames(row)
        chg = json.loads(_cache(args.work, formula, lb, "chgnet").read_text())
        starts[lb] = Structure.from_dict(chg["start"])
    tag = "_".join(h.replace(" ", "-") for h in args.finetune)
    opts = f"e{args.epochs}_s{args.seed}_lr{args.lr}{'_frozen' if args.freeze else ''}"
    work = args.work / formula / f"finetune_{level.tag}_{tag}_{opts}"
    log(f"fine-tuning CHGNet on {len(labels) - len(args.finetune)} types, holding out {tag}")
    try:
        return finetune_case(frames, list(args.finetune), starts, work, args.epochs, args.seed,
                             args.fmax, lr=args.lr, freeze=args.freeze)  # fmt: skip
    except CspflowError as exc:
        raise CaseError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("formula", help="composition, e.g. BaCl2")
    parser.add_argument("types", nargs="+", help="template ids or names, e.g. Cotunnite Fluorite")
    parser.add_argument(
        "--dft",
        choices=["cell", "positions", "static", "none"],
        default="cell",
        help="GPAW relaxation kind (static: single point), or none (CHGNet only)",
    )
    parser.add_argument("--preset", default="fast", help="GPAW preset (cspflow.dft.presets)")
    parser.add_argument("--ecut", type=float, default=None, help="override the preset's cutoff")
    parser.add_argument(
        "--kpoint-density", type=float, default=None, help="override the preset's k-points"
    )
    parser.add_argument(
        "--geometry",
        choices=["chgnet", "dft"],
        default="chgnet",
        help="start from the CHGNet cell, or from the default (fast cell) PBE run's last frame",
    )
    parser.add_argument("--fmax", type=float, default=0.05, help="CHGNet force threshold")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run DFT for these types only (the table still lists all)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "cspflow-learn-case",
        help="cache of per-type results",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where extxyz and json go")
    parser.add_argument(
        "--finetune",
        nargs="+",
        default=None,
        metavar="HOLDOUT",
        help="fine-tune CHGNet on the other types' DFT frames; judge on these (bench/_finetune.py)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="--finetune: CHGNet epochs")
    parser.add_argument("--seed", type=int, default=1, help="--finetune: training seed")
    parser.add_argument("--lr", type=float, default=None, help="--finetune: learning rate")
    parser.add_argument(
        "--freeze", action="store_true", help="--finetune: train CHGNet's last layers only"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)  # fmt: skip
    try:
        from pymatgen.core import Composition

        try:
            formula = Composition(args.formula).reduced_formula
        except (ValueError, KeyError) as exc:
            raise CaseError(f"cannot read composition {args.formula!r}: {exc}") from None
        from pymatgen.core import Element

        unknown = sorted(
            e.symbol for e in Composition(formula) if not Element.is_valid_symbol(e.symbol)
        )
        if unknown:
            raise CaseError(f"cannot read composition {args.formula!r}: unknown element(s) "
                            f"{', '.join(unknown)}")  # fmt: skip
        types = resolve_types(formula, args.types)
        if args.dft != "none":
            from cspflow.dft.gpaw import check_gpaw, gpaw_setup_dir
            from cspflow.dft.presets import PRESETS
            from cspflow.errors import CspflowError

            if args.preset not in PRESETS["gpaw"]:
                raise CaseError(f"unknown gpaw preset {args.preset!r}; "
                                f"choose one of: {', '.join(sorted(PRESETS['gpaw']))}")  # fmt: skip
            try:
                check_gpaw([e.symbol for e in Composition(formula)], gpaw_setup_dir())
            except CspflowError as exc:
                raise CaseError(str(exc)) from None
        for name, value in (("--ecut", args.ecut), ("--kpoint-density", args.kpoint_density)):
            if value is not None and not value > 0:
                raise CaseError(f"{name} must be positive, not {value:g}")
        level = Level(args.dft if args.dft != "none" else "cell", args.preset, args.ecut,
                      args.kpoint_density, args.geometry)  # fmt: skip
        labels = [lb for lb, _ in types]
        if args.only and not set(args.only) <= set(labels):
            raise CaseError(
                f"--only names a type not listed: {sorted(set(args.only) - set(labels))}"
            )
        if args.finetune is not None:
            check_finetune(labels, args.finetune, args.epochs, args.dft, args.lr)
        run_chgnet(formula, types, args.work, args.fmax)
        if args.dft != "none":
            for lb in args.only if args.only is not None else labels:
                run_dft(formula, lb, args.work, level)
        result = table(formula, labels, args.work, level)
        if args.finetune is not None:
            result["finetune"] = finetune(formula, labels, args, level)
    except CaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    frames_name = formula if level == DEFAULT else f"{formula}_{level.tag}"
    suffix = frames_name  # the frames are the level's; the json also names the hold-out
    if args.finetune is not None:
        suffix += "_finetune_" + "_".join(lb.replace(" ", "-") for lb in args.finetune)
    if args.dft != "none":
        n = write_extxyz(
            formula, labels, args.work, level, args.out / f"learn_case_{frames_name}.extxyz"
        )
        result["extxyz"] = f"learn_case_{frames_name}.extxyz" if n else None  # beside the json
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"learn_case_{suffix}.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        if "finetune" in result:
            from _finetune import render as render_finetune

            print(render_finetune(result["finetune"]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
