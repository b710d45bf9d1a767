"""The one seam to torch and the MLIP packages (MACE, CHGNet): model specs, loading, evaluation.

Nothing else in cspflow imports torch, ``mace`` or ``chgnet``, besides its two helpers
:mod:`cspflow.mlip_d3` (D3 dispersion) and :mod:`cspflow.mlip_chgnet` (CHGNet loading and
fine-tuning). A model is named by a spec:

``chgnet``
    CHGNet 0.3.0; its weights ship inside the chgnet wheel, so it works offline (the default).
``chgnet:PATH``
    A fine-tuned CHGNet file (``CHGNet.from_file``; what :mod:`cspflow.mlip_chgnet` writes).
``mace:PATH``
    Any MACE model file (one trained by cspflow, or a foundation model the cluster has on disk).
``registry:ID``
    A model from cspflow's registry (:mod:`cspflow.models`): the ``models`` collection, with the
    file in GridFS; its record's ``kind`` (``mace`` or ``chgnet``) says how to load it.

:func:`load_model` returns a :class:`LoadedModel` that evaluates a list of ASE ``Atoms`` at
once: MACE models evaluate the whole list as one batch of graphs (one forward pass), CHGNet
through its own batched ``predict_structure``; either way the weights are loaded once.

``load_model(..., dispersion="d3bj")`` adds D3(BJ) (PBE parameters, the functional the MP-trained
models learned) to every evaluation, batched like the model (:mod:`cspflow.mlip_d3`).
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cspflow.errors import CspflowError
from cspflow.mlip_chgnet import CHGNET_VERSION
from cspflow.models import fetch_registry_model, registry_kind
from cspflow.settings import get_settings

if TYPE_CHECKING:
    from ase import Atoms
    from pymongo.database import Database

__all__ = [
    "ModelSpec",
    "Evaluation",
    "LoadedModel",
    "parse_model_spec",
    "resolve_device",
    "load_model",
    "committee_disagreement",
]

_CHGNET_MAX_Z = 94  # CHGNet 0.3.0 was trained on MPtrj, which covers H..Pu


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` is ``chgnet``, ``mace`` or ``registry``."""

    kind: str
    value: str | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


def _unloadable(path: Any, kind: str, exc: Exception, hint: str) -> CspflowError:
    """The one-line error for a model file that does not load as ``kind``."""
    detail = (str(exc).splitlines() or [""])[0]
    return CspflowError(
        f"{path} is not a loadable {kind} model ({type(exc).__name__}: {detail}); give {hint}"
    )


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse ``chgnet``, ``mace:PATH`` or ``registry:ID``.

    Raises
    ------
    CspflowError
        For any other spec, or a ``mace:`` path that is not a file.
    """
    text = (spec or "").strip()
    kind, _, value = text.partition(":")
    kind = kind.lower()
    if kind == "chgnet" and not value:
        return ModelSpec("chgnet")
    if kind == "chgnet":
        path = Path(value).expanduser()
        if not path.is_file():
            raise CspflowError(
                f"CHGNet model file {path} not found; give a fine-tuned CHGNet file as "
                "chgnet:PATH, or 'chgnet' for the universal 0.3.0 weights"
            )
        _check_torch_file(path, "CHGNet")
        return ModelSpec("chgnet", str(path.resolve()))
    if kind == "mace" and value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise CspflowError(
                f"MACE model file {path} not found; give an existing file as --model mace:PATH"
            )
        _check_torch_file(path)
        return ModelSpec("mace", str(path.resolve()))
    if kind == "registry" and value:
        return ModelSpec("registry", value)
    raise CspflowError(
        f"unknown model spec {spec!r}; use 'chgnet', 'chgnet:PATH', 'mace:PATH' or "
        "'registry:MODEL_ID'"
    )


def _check_torch_file(path: Path, family: str = "MACE") -> None:
    """Refuse a file that cannot be a saved torch model before torch and MACE are imported.

    ``torch.save`` writes a zip archive (or, in its legacy format, a pickle); a CIF, an extxyz
    or a text file given by mistake is neither, and loading it fails deep inside torch.
    """
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise CspflowError(f"cannot read {family} model file {path} ({exc.strerror})") from None
    source = "mace_run_train output" if family == "MACE" else "cspflow's fine-tuning output"
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CspflowError(
            f"{path} is not a loadable {family} model (not a saved torch file); give a "
            f"{family} model file ({source}, or `cspflow model export`)"
        )


def resolve_device(device: str | None = None) -> str:
    """Return ``cuda`` or ``cpu``: ``device`` if given, else the ``device`` setting.

    ``auto`` picks cuda when torch sees a CUDA device. Asking for cuda without one raises,
    before any work is done.
    """
    import torch

    wanted = (device or get_settings().device or "auto").lower()
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CspflowError(
                f"device {wanted!r} requested but torch sees no CUDA device; "
                "set CSPFLOW_DEVICE=auto (or cpu) to run on the CPU"
            )
        return wanted
    if wanted == "cpu":
        return "cpu"
    raise CspflowError(f"unknown device {wanted!r}; set CSPFLOW_DEVICE to auto, cpu or cuda")


@dataclass
class Evaluation:
    """Energy (eV), forces (eV/A, shape (n, 3)) and Voigt stress (eV/A^3) of one structure."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray


@dataclass
class LoadedModel:
    """A model in memory, ready to evaluate structures.

    Attributes
    ----------
    spec
        The spec it was loaded from.
    model_id
        Stable identity stored with every result (``chgnet-0.3.0``, ``mace-<sha12>``, registry id).
    device
        ``cpu`` or ``cuda``.
    calculator
        An ASE calculator for the same model (one structure at a time).
    elements
        Atomic numbers the model knows; None when it knows (almost) every element.
    batched
        Whether :meth:`evaluate` runs a list in one forward pass.
    chunk_size
        Most structures per forward pass (CHGNet on CPU gets slower with very large batches).
    dispersion
        Dispersion correction added to every evaluation (``d3bj``), or None.
    batch_atoms
        Atoms the relaxation engine keeps in flight per model call (:func:`batch_atoms_for`).
    family
        ``chgnet`` or ``mace``: the architecture (a ``registry:`` spec may be either).
    """

    spec: ModelSpec
    model_id: str
    device: str
    calculator: Any
    elements: frozenset[int] | None = None
    batched: bool = True
    chunk_size: int = 16
    batch_atoms: int = 256
    _backend: Any = field(default=None, repr=False)
    dispersion: str | None = None
    _d3: Any = field(default=None, repr=False)
    family: str = "mace"

    def check_elements(self, numbers: set[int] | list[int]) -> None:
        """Raise a one-line CspflowError when the model does not cover every element."""
        from pymatgen.core import Element

        missing = sorted(
            {int(z) for z in numbers}
            - (self.elements if self.elements is not None else set(range(1, _CHGNET_MAX_Z + 1)))
        )
        if missing:
            names = ", ".join(Element.from_Z(z).symbol for z in missing)
            raise CspflowError(
                f"model {self.model_id} does not cover {names}; use a model trained on these "
                "elements (e.g. --model chgnet)"
            )

    def evaluate(self, atoms_list: list[Atoms], *, batched: bool | None = None) -> list[Evaluation]:
        """Evaluate energy, forces and stress for every structure.

        Parameters
        ----------
        atoms_list
            Structures to evaluate (not modified).
        batched
            Evaluate the list in one pass (default: when the model supports it); False loops
            over the ASE calculator, one structure at a time.
        """
        if not atoms_list:
            return []
        use_batch = self.batched if batched is None else (batched and self.batched)
        if not use_batch:
            evals = [self._evaluate_one(a) for a in atoms_list]
        elif self.family == "chgnet":
            evals = self._evaluate_chgnet(atoms_list)
        else:
            evals = self._evaluate_mace(atoms_list)
        if self._d3 is not None:  # the same list, one batch, on the model's device
            for ev, (e, f, s) in zip(evals, self._d3.evaluate(atoms_list), strict=True):
                ev.energy += e
                ev.forces = ev.forces + f
                ev.stress = ev.stress + s
        return evals

    def _evaluate_one(self, atoms: Atoms) -> Evaluation:
        work = atoms.copy()
        work.calc = self.calculator
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
        stress = np.array(work.get_stress(voigt=True), dtype=float)
        return Evaluation(energy, forces, stress)

    def _evaluate_chgnet(self, atoms_list: list[Atoms]) -> list[Evaluation]:
        from ase.stress import full_3x3_to_voigt_6_stress
        from ase.units import GPa
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
        preds = self._backend.predict_structure(structures, task="efs", batch_size=len(structures))
        if isinstance(preds, dict):
            preds = [preds]
        out = []
        for atoms, pred in zip(atoms_list, preds, strict=True):
            stress = np.asarray(pred["s"], dtype=float) * GPa
            if stress.shape == (3, 3):
                stress = full_3x3_to_voigt_6_stress(stress)
            out.append(
                Evaluation(
                    float(pred["e"]) * len(atoms), np.asarray(pred["f"], dtype=float), stress
                )
            )
        return out

    def _evaluate_mace(self, atoms_list: list[Atoms]) -> list[Evaluation]:
        import torch
        from ase.stress import full_3x3_to_voigt_6_stress
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        calc = self.calculator
        keyspec = mace_data.KeySpecification(info_keys=calc.info_keys, arrays_keys=calc.arrays_keys)
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(a, key_specification=keyspec, head_name=calc.head),
                    z_table=calc.z_table,
                    cutoff=calc.r_max,
                    heads=calc.available_heads,
                )
                for a in atoms_list
            ]
        batch = torch_geometric.Batch.from_data_list(graphs).to(calc.device)
        model = calc.models[0]
        dtype = next(model.parameters()).dtype
        for key in batch.keys:
            value = batch[key]
            if torch.is_tensor(value) and torch.is_floating_point(value):
                batch[key] = value.to(dtype=dtype)
        out = model(batch.to_dict(), compute_stress=True, training=False)
        energies = out["energy"].detach().cpu().numpy().astype(float)
        forces = out["forces"].detach().cpu().numpy().astype(float)
        stresses = out["stress"].detach().cpu().numpy().astype(float)
        ptr = batch["ptr"].cpu().numpy()
        return [
            Evaluation(
                float(energies[i]),
                forces[ptr[i] : ptr[i + 1]],
                full_3x3_to_voigt_6_stress(stresses[i]),
            )
            for i in range(len(atoms_list))
        ]


#: GPU memory model: bytes of GPU memory one atom in flight takes (graph, activations and the
#: autograd tape for forces and stress); an estimate, not measured here (no GPU was lent):
#: set ``prerelax.batch_atoms`` where a measurement says otherwise
GPU_BYTES_PER_ATOM = 1 << 20
#: the most atoms per call on a GPU, whatever the memory (past this the GPU is saturated)
GPU_MAX_BATCH_ATOMS = 16384


def batch_atoms_for(device: str) -> int:
    """Atoms per model call: 256 on the CPU (docs/relax.md), on a GPU half its free memory
    over :data:`GPU_BYTES_PER_ATOM`, capped at :data:`GPU_MAX_BATCH_ATOMS`."""
    if not device.startswith("cuda"):
        return 256
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(max(64, min(GPU_MAX_BATCH_ATOMS, free // 2 // GPU_BYTES_PER_ATOM)))


def _sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _quiet_stdout():
    # CHGNet and MACE print banners on stdout; keep stdout clean for --json output.
    with contextlib.redirect_stdout(sys.stderr):
        yield


def load_model(
    spec: str | ModelSpec,
    device: str | None = None,
    db: Database | None = None,
    dispersion: str | None = None,
) -> LoadedModel:
    """Load the model named by ``spec`` onto ``device`` (default: the ``device`` setting).

    ``dispersion="d3bj"`` adds D3(BJ) to every :meth:`LoadedModel.evaluate` (energy, forces and
    stress; see :mod:`cspflow.mlip_d3`); ``model_id`` stays the model's own, and
    ``LoadedModel.dispersion`` names the correction.

    Raises
    ------
    CspflowError
        Unknown spec, missing file, unknown registry id, a file that is not a model of its
        architecture (MACE or CHGNet), or cuda requested without a CUDA device.
    """
    parsed = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    dev = resolve_device(device)
    loaded = _load_model(parsed, dev, db)
    if dispersion is not None:
        from cspflow.mlip_d3 import D3Correction

        loaded.dispersion = dispersion
        loaded._d3 = D3Correction(dispersion, device=dev)
    return loaded


def _load_chgnet(parsed: ModelSpec, dev: str, path: Path | None, model_id: str) -> LoadedModel:
    """CHGNet: the universal weights (``path`` None) or a fine-tuned file."""
    from chgnet.model.dynamics import CHGNetCalculator

    from cspflow.mlip_chgnet import load_chgnet

    with _quiet_stdout():
        try:
            model = load_chgnet(path)
        except Exception as exc:  # torch/pickle raise many types for a file that is no CHGNet
            raise _unloadable(
                path, "CHGNet", exc,
                "a fine-tuned CHGNet file (cspflow's learn output, or `cspflow model export`)",
            ) from None  # fmt: skip
        model = model.to(dev)
        chgnet_calc = CHGNetCalculator(model=model, use_device=dev, on_isolated_atoms="ignore")
    return LoadedModel(
        parsed,
        model_id,
        dev,
        chgnet_calc,
        elements=None,
        chunk_size=16 if dev == "cpu" else 128,
        batch_atoms=batch_atoms_for(dev),
        _backend=model,
        family="chgnet",
    )


def _load_model(parsed: ModelSpec, dev: str, db: Database | None) -> LoadedModel:
    if parsed.kind == "chgnet" and parsed.value is None:
        return _load_chgnet(parsed, dev, None, f"chgnet-{CHGNET_VERSION}")
    assert parsed.value is not None  # parse_model_spec gives the other specs a value
    if parsed.kind == "chgnet":
        path = Path(parsed.value)
        return _load_chgnet(parsed, dev, path, f"chgnet-{_sha12(path)}")
    if parsed.kind == "registry":
        path = fetch_registry_model(parsed.value, db=db)
        model_id = parsed.value
        if registry_kind(model_id, db=db) == "chgnet":
            return _load_chgnet(parsed, dev, path, model_id)
    else:
        path = Path(parsed.value)
        if not path.is_file():
            raise CspflowError(f"MACE model file {path} not found; check the path in mace:PATH")
        model_id = f"mace-{_sha12(path)}"

    import torch

    with _quiet_stdout():
        from mace.calculators import MACECalculator

        try:
            calc = MACECalculator(model_paths=str(path), device=dev)
        except Exception as exc:  # torch/pickle raise many types for a file that is no model
            raise _unloadable(
                path, "MACE", exc, "a MACE .model file (mace_run_train output)"
            ) from None
    elements = frozenset(int(z) for z in calc.z_table.zs)
    torch.set_grad_enabled(True)  # MACE needs autograd for forces
    return LoadedModel(
        parsed,
        model_id,
        dev,
        calc,
        elements=elements,
        chunk_size=32 if dev == "cpu" else 256,
        batch_atoms=batch_atoms_for(dev),
        _backend=calc.models[0],
    )


def committee_disagreement(
    models: list[LoadedModel], atoms_list: list[Atoms]
) -> list[dict[str, float]]:
    """Energy and force disagreement of a committee of models on each structure.

    ``energy_std`` is the standard deviation of the energy per atom across models (eV/atom);
    ``force_std`` is DP-GEN's max force deviation: the largest, over atoms, of the root mean
    square deviation of that atom's force vector from the committee mean (eV/A).
    """
    if len(models) < 2:
        raise ValueError("a committee needs two or more models")
    evals = [m.evaluate(atoms_list) for m in models]
    out = []
    for i, atoms in enumerate(atoms_list):
        e = np.array([ev[i].energy for ev in evals]) / len(atoms)
        f = np.stack([ev[i].forces for ev in evals])  # (models, atoms, 3)
        dev = np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=2).mean(axis=0))
        out.append({"energy_std": float(e.std()), "force_std": float(dev.max())})
    return out
