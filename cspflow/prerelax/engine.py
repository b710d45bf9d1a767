"""The relaxation engine's pure rules: the in-flight batch budget and the pruning bound.

:func:`relax_structures <cspflow.prerelax.relax.relax_structures>` keeps a batch of structures
in flight (a finished structure's place goes to the next pending one) and asks these functions
how many atoms fit in one model call (:func:`batch_budget`) and whether a running structure can
still end within the selection window of the best so far (:func:`prune_verdict`). No torch, no
ASE optimizers here: numbers in, numbers out, so the rules are tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cspflow.schemas.prerelax import PruneSettings

__all__ = ["CPU_BATCH_ATOMS", "batch_budget", "descent_bound", "PruneVerdict", "prune_verdict"]

#: atoms per model call on the CPU: CHGNet's cost per structure-step stops falling at about
#: 16 structures of 10-20 atoms per call (docs/relax.md), so more only delays the refill
CPU_BATCH_ATOMS = 256


def batch_budget(sizes: list[int], budget_atoms: int, in_flight: int = 0) -> int:
    """How many of ``sizes`` (atoms per structure, in queue order) join a batch that holds
    ``in_flight`` atoms already, without passing ``budget_atoms``.

    An empty batch takes at least one: a structure larger than the budget runs alone.
    """
    total, n = in_flight, 0
    for size in sizes:
        if total + size > budget_atoms and (n or in_flight):
            break
        total += size
        n += 1
    return n


def descent_bound(
    forces: np.ndarray,
    stress: np.ndarray,
    volume: float,
    recent_drop: float,
    settings: PruneSettings,
) -> tuple[float, float, float]:
    """The most a structure could still descend (eV/atom), and the two terms it is made of.

    Parameters
    ----------
    forces
        (n, 3) forces (eV/A).
    stress
        Voigt stress (eV/A^3).
    volume
        Cell volume (A^3).
    recent_drop
        Energy per atom lost over the last ``settings.every`` steps (eV/atom).
    settings
        The pruning rule's constants.

    Returns
    -------
    (bound, harmonic, slope)
        ``harmonic`` is the energy above the minimum of a harmonic well as soft as
        ``settings.stiffness`` (atoms) and ``settings.bulk_modulus`` (cell);
        ``slope`` is ``settings.slope_factor * recent_drop``; ``bound`` the larger.
    """
    n = max(len(forces), 1)
    force_term = float((forces**2).sum()) / (2.0 * settings.stiffness * n)
    stress_term = volume / n * float((stress**2).sum()) / (2.0 * settings.bulk_modulus)
    harmonic = force_term + stress_term
    slope = settings.slope_factor * max(recent_drop, 0.0)
    return max(harmonic, slope), harmonic, slope


@dataclass(frozen=True)
class PruneVerdict:
    """The numbers a pruning decision was made on (energies per atom, eV)."""

    energy: float
    bound: float
    harmonic: float
    slope: float
    best: float
    window: float

    @property
    def prune(self) -> bool:
        return self.energy - self.bound > self.best + self.window

    def reason(self, step: int) -> str:
        """One line for the record: what was compared at which step."""
        return (
            f"pruned at step {step}: E {self.energy:.4f} eV/atom - descent bound "
            f"{self.bound:.4f} (harmonic {self.harmonic:.4f}, slope {self.slope:.4f}) > best "
            f"{self.best:.4f} + window {self.window:g}"
        )


def prune_verdict(
    energy: float,
    forces: np.ndarray,
    stress: np.ndarray,
    volume: float,
    recent_drop: float,
    best: float,
    settings: PruneSettings,
) -> PruneVerdict:
    """Whether a running structure at ``energy`` (eV/atom) can still end within the window.

    ``best`` is the lowest energy per atom a structure of the same composition in the batch
    has relaxed to so far (to ``fmax_screen`` or ``fmax``).
    """
    bound, harmonic, slope = descent_bound(forces, stress, volume, recent_drop, settings)
    return PruneVerdict(energy, bound, harmonic, slope, best, settings.window)
