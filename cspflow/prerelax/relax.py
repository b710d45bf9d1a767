"""The pure batched MLIP relaxer: safety filters, lock-step relaxation, in-batch deduplication.

Pure functions on pymatgen/ASE objects, no database: :func:`check_geometry`,
:func:`relax_structures` (a batch relaxed in lock step: one batched model evaluation per step for
every structure still running, each structure with its own ASE FIRE/BFGS optimizer on a
``FrechetCellFilter``) and :func:`deduplicate_batch`. The database stage that uses them is
:mod:`cspflow.prerelax.stage`.

Models come from :mod:`cspflow.mlip`, the only module that imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cspflow.schemas.prerelax import PrerelaxSettings, RelaxFilters

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

    from cspflow.mlip import LoadedModel

__all__ = [
    "RelaxOutcome",
    "check_geometry",
    "relax_structures",
    "deduplicate_batch",
]

OPTIMIZERS = ("FIRE", "BFGS")
#: the prerelax stage's defaults (fmax, max_steps, optimizer), written once in the schema
_DEFAULTS = PrerelaxSettings()


@dataclass
class RelaxOutcome:
    """Result of relaxing one structure (``failure_reason`` is None when it is usable)."""

    structure: Structure | None
    energy_per_atom: float | None
    steps: int
    converged: bool
    fmax: float | None
    failure_reason: str | None = None
    spacegroup: str | None = None  # Hermann-Mauguin symbol (symprec 0.1)
    spacegroup_number: int | None = None

    @property
    def ok(self) -> bool:
        return self.failure_reason is None


def _to_atoms(obj: Structure | Atoms) -> Atoms:
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = obj.copy() if isinstance(obj, Atoms) else AseAtomsAdaptor.get_atoms(obj)
    atoms.calc = None
    atoms.info.clear()  # pymatgen leaves charges/properties there; the models need none
    return atoms


def _to_structure(atoms: Atoms) -> Structure:
    from pymatgen.io.ase import AseAtomsAdaptor

    clean = atoms.copy()
    clean.calc = None
    return AseAtomsAdaptor.get_structure(clean)


def _spacegroup(structure: Structure) -> tuple[int, str] | None:
    """(number, symbol) of the space group at symprec 0.1, or None where spglib gives up."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=0.1)
        return sga.get_space_group_number(), sga.get_space_group_symbol()
    except Exception:  # spglib gives up on some distorted cells; the symbol is informative only
        return None


def check_geometry(atoms: Atoms | Structure, filters: RelaxFilters | None = None) -> str | None:
    """Return why a structure is unusable (isolated atom, overlapping atoms), or None.

    Parameters
    ----------
    atoms
        The structure (periodic images count as neighbours).
    filters
        Thresholds; defaults from :class:`~cspflow.schemas.prerelax.RelaxFilters`.
    """
    from ase.data import chemical_symbols, covalent_radii
    from ase.neighborlist import neighbor_list

    filters = filters or RelaxFilters()
    atoms = _to_atoms(atoms) if not hasattr(atoms, "get_positions") else cast("Atoms", atoms)
    if len(atoms) == 0:
        return "empty structure"
    i, j, d = neighbor_list("ijd", atoms, filters.isolated_distance, self_interaction=False)
    lonely = sorted(set(range(len(atoms))) - set(i.tolist()))
    if lonely:
        k = lonely[0]
        return (
            f"isolated atom: {atoms[k].symbol}{k} has no neighbour within "
            f"{filters.isolated_distance:g} A"
        )
    z = atoms.numbers
    limit = filters.min_distance_ratio * (covalent_radii[z[i]] + covalent_radii[z[j]])
    bad = np.flatnonzero(d < limit)
    if bad.size:
        k = bad[np.argmin(d[bad] / limit[bad])]
        a, b = int(i[k]), int(j[k])
        return (
            f"overlapping atoms: {chemical_symbols[z[a]]}{a}-{chemical_symbols[z[b]]}{b} at "
            f"{d[k]:.2f} A (< {limit[k]:.2f} A)"
        )
    return None


@dataclass
class _Run:
    index: int
    atoms: Atoms
    opt: Any
    volume0: float
    energy0: float | None = None
    fmax: float | None = None
    energy: float | None = None


def relax_structures(
    structures: Sequence[Structure | Atoms],
    model: LoadedModel,
    *,
    fmax: float = _DEFAULTS.fmax,
    max_steps: int = _DEFAULTS.max_steps,
    optimizer: str = _DEFAULTS.optimizer,
    filters: RelaxFilters | None = None,
    batched: bool | None = None,
    chunk_size: int | None = None,
    max_seconds: float | None = None,
    progress: Callable[[int, RelaxOutcome], None] | None = None,
) -> list[RelaxOutcome]:
    """Relax positions and cell of every structure with one loaded model.

    All structures step in lock step: each step evaluates every structure still running in one
    batched model call (or a loop over the calculator when ``batched`` is False), then advances
    each structure's own optimizer (FIRE or BFGS on ASE's ``FrechetCellFilter``). A structure
    leaves the batch when it converges, fails a filter, or hits ``max_steps``/``max_seconds``;
    a failure never stops the others.

    Parameters
    ----------
    structures
        pymatgen Structures or ASE Atoms (not modified).
    model
        From :func:`cspflow.mlip.load_model`.
    fmax
        Convergence threshold on the largest force, cell forces included (eV/A).
    max_steps
        Optimizer steps per structure; not converged by then means failed.
    optimizer
        ``FIRE`` or ``BFGS``.
    filters
        Safety thresholds (:class:`~cspflow.schemas.prerelax.RelaxFilters`).
    batched
        Evaluate the running structures in one model call (default: when the model can).
    chunk_size
        Largest number of structures per model call (default: the model's own).
    max_seconds
        Wall-time limit per structure, counted from the start of the batch.
    progress
        Called as ``progress(index, outcome)`` when a structure finishes.

    Returns
    -------
    list of RelaxOutcome
        In the order of ``structures``.

    Raises
    ------
    CspflowError
        When the model does not cover an element of some structure (before any work).
    """
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE

    filters = filters or RelaxFilters()
    opt_name = optimizer.upper()
    if opt_name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {optimizer!r}")
    opt_cls = FIRE if opt_name == "FIRE" else BFGS
    atoms_list = [_to_atoms(s) for s in structures]
    model.check_elements({int(z) for a in atoms_list for z in a.numbers})

    outcomes: list[RelaxOutcome | None] = [None] * len(atoms_list)

    def finish(run: _Run | None, index: int, outcome: RelaxOutcome) -> None:
        if outcome.structure is not None and outcome.ok:
            found = _spacegroup(outcome.structure)
            if found is not None:
                outcome.spacegroup_number, outcome.spacegroup = found
        outcomes[index] = outcome
        if progress is not None:
            progress(index, outcome)

    active: list[_Run] = []
    for k, atoms in enumerate(atoms_list):
        reason = check_geometry(atoms, filters)
        if reason is not None:
            finish(None, k, RelaxOutcome(_to_structure(atoms), None, 0, False, None, reason))
            continue
        # ASE types an optimizer's atoms as Atoms; a cell filter is its documented input too
        opt = opt_cls(FrechetCellFilter(atoms), logfile=None)  # type: ignore[arg-type]
        active.append(_Run(k, atoms, opt, atoms.get_volume()))

    start = time.monotonic()
    size = chunk_size or model.chunk_size
    while active:
        evals = []
        for lo in range(0, len(active), size):
            evals += model.evaluate([r.atoms for r in active[lo : lo + size]], batched=batched)
        still: list[_Run] = []
        for run, ev in zip(active, evals, strict=True):
            atoms = run.atoms
            n = len(atoms)
            atoms.calc = SinglePointCalculator(
                atoms, energy=ev.energy, free_energy=ev.energy, forces=ev.forces, stress=ev.stress
            )
            steps = run.opt.nsteps

            def fail(reason: str, run: _Run = run, steps: int = steps) -> None:
                e = run.energy / len(run.atoms) if run.energy is not None else None
                struct = _to_structure(run.atoms)
                finish(run, run.index, RelaxOutcome(struct, e, steps, False, run.fmax, reason))

            if not (np.isfinite(ev.energy) and np.all(np.isfinite(ev.forces))):
                fail(f"non-finite energy or forces at step {steps}")
                continue
            if run.energy0 is None:
                run.energy0 = ev.energy
            run.energy = ev.energy
            fnorm = float(np.sqrt((ev.forces**2).sum(axis=1)).max()) if n else 0.0
            if fnorm > filters.max_force:
                fail(f"exploding forces: {fnorm:.3g} eV/A at step {steps}")
                continue
            drop = (run.energy0 - ev.energy) / n
            if drop > filters.max_energy_drop_per_atom:
                fail(f"exploding energy: dropped {drop:.3g} eV/atom by step {steps}")
                continue
            ratio = atoms.get_volume() / run.volume0
            if not 1.0 / filters.max_volume_ratio <= ratio <= filters.max_volume_ratio:
                what = "blew up" if ratio > 1 else "collapsed"
                fail(f"volume {what}: {ratio:.2f}x the start at step {steps}")
                continue
            gradient = run.opt.optimizable.get_gradient()
            run.fmax = float(run.opt.optimizable.gradient_norm(gradient))
            converged = run.opt.optimizable.converged(gradient, fmax)
            if converged or (steps and steps % filters.check_every == 0):
                reason = check_geometry(atoms, filters)
                if reason is not None:
                    fail(f"{reason} at step {steps}")
                    continue
            if converged:
                struct = _to_structure(atoms)
                finish(run, run.index, RelaxOutcome(struct, ev.energy / n, steps, True, run.fmax))
                continue
            if steps >= max_steps:
                fail(f"not converged in {max_steps} steps (fmax {run.fmax:.3g} eV/A)")
                continue
            if max_seconds is not None and time.monotonic() - start > max_seconds:
                fail(f"time limit {max_seconds:g} s reached after {steps} steps")
                continue
            run.opt.step()
            run.opt.nsteps += 1
            still.append(run)
        active = still
    return [o for o in outcomes if o is not None]


def deduplicate_batch(
    items: Sequence[tuple[str, Structure]], matcher: Any | None = None
) -> dict[str, str]:
    """Map each structure that matches an earlier one in ``items`` to that one's id.

    Used when cspflow's dedup index (:mod:`cspflow.dedup.index`) is not available; the
    default ``matcher`` is the index's (:data:`~cspflow.dedup.match.MATCHER_KWARGS`). Pass
    ``items`` lowest energy first so the lowest-energy copy is the one kept.
    """
    from cspflow.dedup.match import MATCHER_KWARGS
    from cspflow.dedup.match import matcher as make_matcher

    matcher = matcher or make_matcher(**MATCHER_KWARGS)
    kept: list[tuple[str, Structure]] = []
    dup: dict[str, str] = {}
    for cid, s in items:
        formula = s.composition.reduced_formula
        for kid, ks in kept:
            if ks.composition.reduced_formula == formula and matcher.fit(s, ks):
                dup[cid] = kid
                break
        else:
            kept.append((cid, s))
    return dup
