"""Labelled frames for learning tests: strained, rattled bulk cells labelled by a real model.

The tests of training, committees and replay need small training sets whose labels a model can
learn; a universal model's own energies, forces and stress on strained, rattled cells are such
labels (``REF_energy``, ``REF_forces``, ``REF_stress``, as the DFT frames of
:mod:`cspflow.learn.dataset` carry them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["labelled_bulk"]


def labelled_bulk(
    model: Any,
    name: str,
    crystal: str,
    a: float,
    n: int,
    *,
    seed: int,
    scale: tuple[float, float] = (0.97, 1.04),
    rattle: float = 0.06,
    rattle_seed: int = 0,
    id_prefix: str | None = None,
) -> list[Atoms]:
    """``n`` cells of ``ase.build.bulk(name, crystal, a x U(scale))``, rattled, labelled by ``model``.

    Parameters
    ----------
    model
        A :class:`cspflow.mlip.LoadedModel` (e.g. ``load_model("chgnet", device="cpu")``).
    name, crystal, a
        ``ase.build.bulk`` arguments; the lattice constant is scaled by a uniform draw.
    seed
        Seed of the scale draws.
    rattle, rattle_seed
        Displacement amplitude (A) and the seed of the first cell's rattle (``+ k`` for cell k).
    id_prefix
        When given, ``info["candidate_id"] = f"{id_prefix}{k}"``.
    """
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk(name, crystal, a * rng.uniform(*scale))
        atoms.rattle(rattle, seed=rattle_seed + k)
        ev = model.evaluate([atoms])[0]
        atoms.info.update({"REF_energy": ev.energy, "REF_stress": ev.stress})
        if id_prefix is not None:
            atoms.info["candidate_id"] = f"{id_prefix}{k}"
        atoms.arrays["REF_forces"] = ev.forces
        frames.append(atoms)
    return frames
