"""D3(BJ) dispersion on the DFT side: what each engine is given when ``dft.dispersion`` is set.

One correction, three ways in, each the engine's own or its community's recommended one:

- VASP: ``IVDW = 12`` (D3 with Becke-Johnson damping; VASP takes the PBE parameters from
  ``GGA = PE``) through the input set's ``user_incar_settings`` (:func:`vasp_incar`).
- CP2K: its built-in pair potential, ``&VDW_POTENTIAL`` / ``&PAIR_POTENTIAL`` with
  ``TYPE DFTD3(BJ)``, the reference functional and the ``dftd3.dat`` parameter file that Debian's
  ``cp2k`` package ships in ``/usr/share/cp2k`` (:func:`cp2k_input_updates`).
- GPAW (and any ASE calculator): ASE's ``SumCalculator`` of the DFT calculator and the
  ``dftd3`` package's (simple-dftd3) ASE calculator (:func:`with_d3`), as dftd3's documentation
  recommends.

All three are two-body D3(BJ) without the three-body (ATM) term: VASP's IVDW=12 and CP2K's
DFTD3(BJ) leave it out by default, and so does ``dftd3.ase.DFTD3(damping="d3bj")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from ase.calculators.calculator import BaseCalculator, Calculator

__all__ = [
    "CP2K_D3_PARAMETER_FILE",
    "check_dftd3",
    "d3_calculator",
    "with_d3",
    "vasp_incar",
    "cp2k_input_updates",
]

#: Debian's cp2k package ships Grimme's D3 reference data here
CP2K_D3_PARAMETER_FILE = Path("/usr/share/cp2k/dftd3.dat")

# Functional names as the dftd3 package spells them, for the xc names GPAW accepts
_BOHR = 0.52917721067  # Angstrom (CODATA 2014, as ASE)

_DFTD3_METHOD = {"PBE": "pbe", "RPBE": "rpbe", "REVPBE": "revpbe", "PBESOL": "pbesol"}


def _method(xc: str) -> str:
    method = _DFTD3_METHOD.get(str(xc).upper())
    if method is None:
        raise CspflowError(
            f"no D3(BJ) parameters for the functional {xc!r} here; use it with PBE, RPBE, "
            "revPBE or PBEsol, or leave dft.dispersion out"
        )
    return method


def check_dftd3(xc: str = "PBE") -> None:
    """Raise a one-line :class:`CspflowError` when the ``dftd3`` package or parameters are missing."""
    import importlib.util

    if importlib.util.find_spec("dftd3") is None:
        raise CspflowError(
            "dft.dispersion d3bj with GPAW needs the dftd3 package; install it with "
            "`pip install dftd3` or leave dft.dispersion out"
        )
    _method(xc)


def d3_calculator(dispersion: str, xc: str = "PBE") -> Calculator:
    """Return the ``dftd3`` package's ASE calculator for ``dispersion`` with ``xc``'s parameters."""
    if dispersion != "d3bj":
        raise CspflowError(f"unknown dispersion {dispersion!r}; choose d3bj")
    from dftd3.ase import DFTD3

    return DFTD3(method=_method(xc), damping="d3bj")


def with_d3(calc: BaseCalculator, dispersion: str | None, xc: str = "PBE") -> BaseCalculator:
    """Return ``calc`` plus D3 (ASE's SumCalculator), or ``calc`` itself when ``dispersion`` is
    None."""
    if dispersion is None:
        return calc
    from ase.calculators.mixing import SumCalculator

    return SumCalculator([calc, d3_calculator(dispersion, xc)])


def vasp_incar(dispersion: str | None) -> dict[str, Any]:
    """INCAR settings for ``dispersion`` (``IVDW = 12`` for d3bj; nothing for None)."""
    if dispersion is None:
        return {}
    if dispersion == "d3bj":
        return {"IVDW": 12}
    raise CspflowError(f"unknown dispersion {dispersion!r}; choose d3bj")


def cp2k_input_updates(
    dispersion: str | None, xc: str = "PBE", parameter_file: Path = CP2K_D3_PARAMETER_FILE
) -> dict[str, Any]:
    """CP2K input updates (atomate2's ``override_default_params`` form) for ``dispersion``.

    For ``d3bj``: ``FORCE_EVAL/DFT/XC/VDW_POTENTIAL`` with ``DISPERSION_FUNCTIONAL
    PAIR_POTENTIAL`` and a ``PAIR_POTENTIAL`` section of ``TYPE DFTD3(BJ)``, the reference
    functional, the absolute path of the D3 parameter file and the pair cutoff of the ``dftd3``
    package (60 bohr); nothing for None.

    Raises
    ------
    CspflowError
        When the D3 parameter file is missing (install Debian's ``cp2k``, which ships it).
    """
    if dispersion is None:
        return {}
    if dispersion != "d3bj":
        raise CspflowError(f"unknown dispersion {dispersion!r}; choose d3bj")
    if not Path(parameter_file).is_file():
        raise CspflowError(
            f"CP2K's D3 parameter file {parameter_file} not found; install Debian's cp2k "
            "package (it ships dftd3.dat) or leave dft.dispersion out"
        )
    pair = {
        "TYPE": "DFTD3(BJ)",
        # CP2K cuts pairs at twice R_CUTOFF (default 20 bohr); 30 bohr gives s-dftd3's 60
        "R_CUTOFF": round(30 * _BOHR, 4),
        "PARAMETER_FILE_NAME": str(parameter_file),
        "REFERENCE_FUNCTIONAL": str(xc).upper(),
    }
    vdw = {"DISPERSION_FUNCTIONAL": "PAIR_POTENTIAL", "PAIR_POTENTIAL": pair}
    return {"FORCE_EVAL": {"DFT": {"XC": {"VDW_POTENTIAL": vdw}}}}
