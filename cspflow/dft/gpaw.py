"""GPAW through atomate2's ASE relax maker (plane waves, PBE, PAW setups from gpaw-data).

atomate2's :class:`~atomate2.ase.jobs.AseRelaxMaker` already does what the stage needs (cell or
positions relaxation with a FrechetCellFilter, an ASE TaskDoc with the trajectory, convergence
flags and timings), so the GPAW maker only supplies the calculator. ``gpaw`` is imported inside
the job, never at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomate2.ase.jobs import AseRelaxMaker

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator

__all__ = ["GpawRelaxMaker", "gpaw_setup_dir", "check_gpaw"]

DEBIAN_SETUPS = Path("/usr/share/gpaw-setups")


def gpaw_setup_dir(configured: Path | None = None) -> Path | None:
    """Return the PAW setup directory: the configured one, ``GPAW_SETUP_PATH``, or Debian's."""
    if configured is not None:
        return Path(configured).expanduser()
    env = os.environ.get("GPAW_SETUP_PATH")
    if env:
        return Path(env.split(os.pathsep)[0])
    return DEBIAN_SETUPS if DEBIAN_SETUPS.is_dir() else None


def check_gpaw(elements: list[str], setup_dir: Path | None, xc: str = "PBE") -> None:
    """Raise :class:`CspflowError` when GPAW or a PAW setup for one of ``elements`` is missing."""
    import importlib.util

    if importlib.util.find_spec("gpaw") is None:
        raise CspflowError(
            "GPAW is not installed in this environment; install it with "
            "`pip install 'cspflow[dft]'` (needs libxc/BLAS/FFTW dev packages) or pick another "
            "dft.engine"
        )
    if setup_dir is None or not Path(setup_dir).is_dir():
        raise CspflowError(
            f"GPAW PAW setups not found (looked in {setup_dir or DEBIAN_SETUPS}); install Debian's "
            "gpaw-data or set CSPFLOW_GPAW_SETUP_PATH"
        )
    missing = [
        el
        for el in elements
        if not any(Path(setup_dir).glob(f"{el}.{xc}*"))
        and not any(Path(setup_dir).glob(f"{el}.*{xc}*"))
    ]
    if missing:
        raise CspflowError(
            f"GPAW has no {xc} PAW setup for {', '.join(missing)} in {setup_dir}; "
            "add the setups there or pick another dft.engine"
        )


@dataclass
class GpawRelaxMaker(AseRelaxMaker):
    """Relax a structure with GPAW (plane-wave mode) through atomate2's ASE relax maker.

    Parameters
    ----------
    name : str
        Job name.
    ecut : float
        Plane-wave cutoff (eV).
    kpoint_density : float
        k-points per reciprocal Angstrom (ASE convention, 2 pi included); Gamma-centred.
    setup_dir : str or None
        PAW setups directory added to GPAW's search path (None: ``GPAW_SETUP_PATH``/Debian's).
    calculator_kwargs : dict
        Further ``gpaw.GPAW`` keywords (xc, occupations, ...).
    dispersion : str or None
        ``d3bj`` adds D3(BJ) for the calculator's ``xc`` (the ``dftd3`` package's ASE
        calculator, summed with GPAW by ASE's SumCalculator; see :mod:`cspflow.dft.dispersion`).
    """

    name: str = "gpaw relax"
    ecut: float = 300.0
    kpoint_density: float = 2.0
    setup_dir: str | None = None
    calculator_kwargs: dict[str, Any] = field(default_factory=lambda: {"xc": "PBE"})
    dispersion: str | None = None

    def _get_calculator(self) -> Calculator:
        import gpaw
        from gpaw import GPAW, PW

        setup_dir = gpaw_setup_dir(Path(self.setup_dir) if self.setup_dir else None)
        if setup_dir is not None and str(setup_dir) not in map(str, gpaw.setup_paths):
            gpaw.setup_paths.insert(0, str(setup_dir))
        kwargs = {"txt": "gpaw.txt", **self.calculator_kwargs}
        # k-points follow the cell: a dict density lets GPAW rebuild the grid for each cell.
        kwargs.setdefault("kpts", {"density": self.kpoint_density, "gamma": True})
        from cspflow.dft.dispersion import with_d3

        dft = GPAW(mode=PW(self.ecut), **kwargs)
        # atomate2 annotates Calculator; ASE's SumCalculator is a BaseCalculator with the same API
        return with_d3(dft, self.dispersion, str(kwargs.get("xc", "PBE")))  # type: ignore[arg-type, return-value]
