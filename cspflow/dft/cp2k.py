"""CP2K through atomate2's CP2K makers + custodian.

pymatgen needs its own per-element CP2K data (basis sets and potentials in YAML), generated from
the CP2K data directory (Debian: /usr/share/cp2k) by ``pmg config --cp2k``. cspflow generates it
once under ``settings.data_dir/cp2k-data`` and points pymatgen at it for the duration of a job
(``PMG_CP2K_DATA_DIR``; ``CP2K_DATA_DIR`` is deliberately left alone because pymatgen reads it
first and expects its YAML format there).

atomate2 0.1.5 crashes while parsing spin-restricted runs: ``CalculationInput.cleanup_dft``
calls ``.upper()`` on every value of the parsed ``dft`` section, and for RKS runs the first
value is the integer multiplicity. :func:`restricted_spin_guard` hands that validator a mapping
whose ``values()`` yields only strings, during the parse only; the stored data are unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomate2.cp2k.jobs.base import BaseCp2kMaker, cp2k_job
from atomate2.cp2k.sets.core import (
    CellOptSetGenerator,
    RelaxSetGenerator,
    StaticSetGenerator,
)

from cspflow.dft.dispersion import cp2k_input_updates
from cspflow.dft.presets import EV_PER_A_IN_HA_PER_BOHR
from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from jobflow import Response
    from pymatgen.core import Structure
    from pymatgen.io.cp2k.inputs import AtomicMetadata

__all__ = [
    "Cp2kDftMaker",
    "ensure_cp2k_data",
    "cp2k_data_env",
    "restricted_spin_guard",
    "find_basis_and_potential",
    "check_cp2k_cmd",
]

CP2K_SHARE = Path("/usr/share/cp2k")
_GENERATORS = {
    "static": StaticSetGenerator,
    "positions": RelaxSetGenerator,
    "cell": CellOptSetGenerator,
}


def ensure_cp2k_data(data_dir: Path, cp2k_share: Path = CP2K_SHARE) -> Path:
    """Return pymatgen's CP2K data directory under ``data_dir``, generating it on first use.

    Raises
    ------
    CspflowError
        When CP2K's data directory is missing or ``pmg config --cp2k`` fails.
    """
    target = Path(data_dir).expanduser() / "cp2k-data"
    if (target / ".complete").is_file():
        return target
    if not Path(cp2k_share).is_dir():
        raise CspflowError(
            f"CP2K data directory {cp2k_share} not found; install Debian's cp2k package "
            "(or a CP2K with its data/ directory)"
        )
    tmp = target.with_name(f"cp2k-data.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pmg = Path(sys.executable).with_name("pmg")
    cmd = [str(pmg) if pmg.exists() else "pmg", "config", "--cp2k", str(cp2k_share), str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(tmp.glob("*")):
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CspflowError(f"generating pymatgen's CP2K data failed: {tail[0]}")
    (tmp / ".complete").write_text("pmg config --cp2k\n")
    try:
        tmp.rename(target)
    except OSError:  # another worker finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def cp2k_data_env(data_dir: Path) -> Iterator[None]:
    """Point pymatgen at ``data_dir`` with PBE as default functional, for this block only."""
    from pymatgen.core import SETTINGS

    new = {"PMG_CP2K_DATA_DIR": str(data_dir), "PMG_DEFAULT_CP2K_FUNCTIONAL": "PBE"}
    old_env = {k: os.environ.get(k) for k in new}
    old_settings = {k: SETTINGS.get(k) for k in new}
    os.environ.update(new)
    SETTINGS.update(new)
    try:
        yield
    finally:
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for key, value in old_settings.items():
            if value is None:
                SETTINGS.pop(key, None)
            else:
                SETTINGS[key] = value


class _StrValuesDict(dict):
    """A dict whose ``values()`` skips non-strings (what atomate2's cleanup_dft can handle)."""

    def values(self):  # type: ignore[override]
        return [v for v in super().values() if isinstance(v, str)]


@contextlib.contextmanager
def restricted_spin_guard() -> Iterator[None]:
    """Let atomate2 0.1.5 parse spin-restricted CP2K outputs (see the module docstring)."""
    from atomate2.cp2k.schemas import calculation

    original = calculation.Cp2kOutput

    class _GuardedCp2kOutput(original):  # type: ignore[misc, valid-type]
        def parse_dft_params(self, *args: Any, **kwargs: Any) -> Any:
            result = super().parse_dft_params(*args, **kwargs)
            if isinstance(self.data.get("dft"), dict):
                self.data["dft"] = _StrValuesDict(self.data["dft"])
            return result

    calculation.Cp2kOutput = _GuardedCp2kOutput  # type: ignore[misc]
    try:
        yield
    finally:
        calculation.Cp2kOutput = original  # type: ignore[misc]


def _find_entry(entries: dict[str, Any] | None, cls: type[AtomicMetadata], name: str) -> str | None:
    """Key (data hash) of the first entry whose name or an alias is ``name``, or None.

    Entries are read into pymatgen's ``cls`` (``GaussianTypeOrbitalBasisSet`` or
    ``GthPotential``) and matched with its ``softmatch`` against an object carrying only the
    name, which is how ``DftSet.get_basis_and_potential`` matches a requested name.
    """
    wanted = cls(name=name)
    for key, entry in (entries or {}).items():
        if wanted.softmatch(cls.from_dict(entry)):
            return key
    return None


def find_basis_and_potential(
    elements: list[str], data_dir: Path, basis: str, potential: str
) -> dict[str, dict[str, Any]]:
    """Return atomate2's ``basis_and_potential`` entries (data hashes) for ``elements``.

    pymatgen's ``DftSet.get_basis_and_potential`` is not called directly: when nothing matches
    a requested name it only warns and writes the name into the input, and it skips entries
    without an electron count; this check has to name every element that lacks the basis set
    or potential.

    Raises
    ------
    CspflowError
        Naming every element for which the basis set or potential is not in the CP2K data.
    """
    from pymatgen.io.cp2k.inputs import GaussianTypeOrbitalBasisSet, GthPotential
    from ruamel.yaml import YAML

    out: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for el in sorted(set(elements)):
        path = Path(data_dir) / el
        found_basis = found_pot = None
        if path.is_file():
            data = YAML(typ="safe").load(path.read_text())
            found_basis = _find_entry(data.get("basis_sets"), GaussianTypeOrbitalBasisSet, basis)
            found_pot = _find_entry(data.get("potentials"), GthPotential, potential)
        if found_basis is None or found_pot is None:
            missing.append(el)
        else:
            out[el] = {"basis": found_basis, "potential": found_pot, "aux_basis": None}
    if missing:
        raise CspflowError(
            f"the CP2K basis set {basis} / potential {potential} has no entry for "
            f"{', '.join(missing)}; choose another dft.preset or engine for this chemical system"
        )
    return out


def check_cp2k_cmd(cp2k_cmd: str) -> None:
    """Raise :class:`CspflowError` when the CP2K executable of ``cp2k_cmd`` cannot be found."""
    import shlex

    parts = shlex.split(os.path.expandvars(cp2k_cmd or ""))
    # The executable is the last word that looks like cp2k (launchers like srun/mpirun come first).
    exe = next((p for p in reversed(parts) if "cp2k" in Path(p).name), parts[0] if parts else "")
    if not exe or shutil.which(exe) is None:
        raise CspflowError(
            f"CP2K executable {exe or '(empty)'!r} not found (cp2k_cmd={cp2k_cmd!r}); install "
            "Debian's cp2k package or set CSPFLOW_CP2K_CMD"
        )


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )  # fmt: skip
    return out


def build_input_generator(structure: Structure, settings: dict[str, Any], data_dir: Path):
    """Return the atomate2 CP2K input-set generator for a resolved cspflow preset."""
    from atomate2.cp2k.sets.base import _BASE_CP2K_SET

    relax = settings.get("relax", "positions")
    config = copy.deepcopy(_BASE_CP2K_SET)
    if settings.get("basis"):
        config["cp2k_input"]["basis_and_potential"] = find_basis_and_potential(
            [el.symbol for el in structure.composition.elements],
            data_dir,
            settings["basis"],
            settings["potential"],
        )
    if settings.get("kpoints") is None:
        config["KPOINTS"] = None  # Gamma only (needed for orbital transformation)
    elif settings["kpoints"]:
        config["KPOINTS"] = settings["kpoints"]
    user = copy.deepcopy(settings.get("input", {}))
    if settings.get("dispersion"):
        overrides = user.setdefault("override_default_params", {})
        for key, value in cp2k_input_updates(settings["dispersion"]).items():
            overrides[key] = _merged(overrides.get(key, {}), value)
    if relax != "static":
        motion = user.setdefault("activate_motion", {})
        motion.setdefault("max_iter", int(settings.get("steps", 200)))
        fmax_au = float(settings.get("fmax", 0.025)) / EV_PER_A_IN_HA_PER_BOHR
        motion.setdefault("max_force", fmax_au)
        motion.setdefault("rms_force", fmax_au * 2 / 3)
    return _GENERATORS[relax](config_dict=config, user_input_settings=user)


@dataclass
class Cp2kDftMaker(BaseCp2kMaker):
    """Run CP2K (static, positions or cell relaxation) with atomate2 + custodian.

    Parameters
    ----------
    name : str
        Job name.
    settings : dict
        Resolved cspflow CP2K preset (see :data:`cspflow.dft.presets.PRESETS`).
    data_dir : str
        pymatgen CP2K data directory (from :func:`ensure_cp2k_data`).
    run_cp2k_kwargs : dict
        Passed to atomate2's ``run_cp2k`` (``cp2k_cmd``, handlers, ``max_errors``).
    """

    name: str = "cp2k relax"
    settings: dict[str, Any] = field(default_factory=dict)
    data_dir: str = ""

    @cp2k_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Write the inputs, run CP2K through custodian and parse the TaskDocument."""
        data_dir = Path(self.data_dir)
        with cp2k_data_env(data_dir):
            generator = build_input_generator(structure, self.settings, data_dir)
            inner = replace(self, input_set_generator=generator)
            with restricted_spin_guard():
                return BaseCp2kMaker.make.original(  # type: ignore[attr-defined]
                    inner, structure, prev_dir=prev_dir
                )
