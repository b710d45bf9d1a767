"""D3(BJ) dispersion for MLIP energies, forces and stress, in PyTorch (``torch-dftd``).

:mod:`cspflow.mlip` adds :class:`D3Correction` to a model's evaluation when a prerelax asks
for ``dispersion: d3bj``; with :mod:`cspflow.mlip`, this is the only module that imports torch
(``[tool.importlinter]`` in ``pyproject.toml``).

Why torch-dftd (pfnet-research, PyPI ``torch-dftd``): it evaluates periodic cells, a whole list
of structures in one batch (as the model does), and forces and stress by autograd, on the
model's device. tad-dftd3 0.7.0 (the Grimme group's) takes no cell, so it cannot evaluate a
crystal without building the periodic images outside it.

Parameters: CHGNet and MACE-MP learned PBE(+U) energies of the Materials Project, so the
correction uses the PBE D3(BJ) parameters (s6 1, s8 0.7875, a1 0.4289, a2 4.4407; Grimme,
Ehrlich, Goerigk, J. Comput. Chem. 32, 1456 (2011)). Two-body terms only (no three-body ATM
term), with s-dftd3's real-space cutoffs (60 bohr for pairs, 40 bohr for the coordination
number), in float64: the same numbers as the ``dftd3`` package's ``DFTD3(method="pbe",
damping="d3bj")``, VASP's IVDW=12 and CP2K's DFTD3(BJ), which the DFT side uses
(:mod:`cspflow.dft.dispersion`).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["D3Correction", "D3_FUNCTIONAL", "D3_CUTOFF_BOHR", "D3_CN_CUTOFF_BOHR"]

#: the functional whose D3(BJ) parameters an MLIP trained on MP data gets
D3_FUNCTIONAL = "pbe"
#: s-dftd3's default real-space cutoffs (bohr): pairs, coordination number
D3_CUTOFF_BOHR = 60.0
D3_CN_CUTOFF_BOHR = 40.0


class D3Correction:
    """D3(BJ) energy (eV), forces (eV/A) and Voigt stress (eV/A^3) of a list of structures.

    Parameters
    ----------
    dispersion
        ``d3bj``.
    device
        torch device of the model (``cpu``, ``cuda``).
    functional
        Whose D3(BJ) parameters to use (default PBE, see the module docstring).
    """

    def __init__(self, dispersion: str, device: str = "cpu", functional: str = D3_FUNCTIONAL):
        if dispersion != "d3bj":
            raise CspflowError(f"unknown dispersion {dispersion!r}; choose d3bj")
        try:
            import torch
            from torch_dftd.torch_dftd3_calculator import TorchDFTD3Calculator
        except ImportError:
            raise CspflowError(
                "dispersion d3bj for MLIPs needs the torch-dftd package; install it with "
                "`pip install torch-dftd` or leave prerelax.dispersion out"
            ) from None
        from ase.units import Bohr

        self.dispersion = dispersion
        self.functional = functional
        self._calc = TorchDFTD3Calculator(
            damping="bj",
            xc=functional,
            device=device,
            cutoff=D3_CUTOFF_BOHR * Bohr,
            cnthr=D3_CN_CUTOFF_BOHR * Bohr,
            abc=False,
            dtype=torch.float64,
        )

    def evaluate(self, atoms_list: list[Atoms]) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Return ``(energy, forces, stress)`` of each structure, all in one batch."""
        if not atoms_list:
            return []
        with warnings.catch_warnings():
            # torch-dftd builds the cell tensor from a numpy Cell (a harmless speed warning)
            warnings.simplefilter("ignore", UserWarning)
            results: list[dict[str, Any]] = self._calc.batch_calculate(
                list(atoms_list), properties=["energy", "forces", "stress"]
            )
        out = []
        for atoms, res in zip(atoms_list, results, strict=True):
            forces = np.asarray(res["forces"], dtype=float)
            stress = (
                np.asarray(res["stress"], dtype=float) if atoms.pbc.any() else np.zeros(6, float)
            )
            out.append((float(res["energy"]), forces, stress))
        return out
