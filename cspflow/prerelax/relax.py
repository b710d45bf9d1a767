"""The pure batched MLIP relaxer: safety filters, lock-step relaxation, in-batch deduplication.

Pure functions on pymatgen/ASE objects, no database: :func:`check_geometry`,
:func:`relax_structures` (a batch relaxed in flight: one batched model evaluation per step for
every structure in the batch, each with its own ASE optimizer on a ``FrechetCellFilter``; a
structure that converges, is pruned (:mod:`cspflow.prerelax.engine`) or fails gives its place
to the next pending one) and :func:`deduplicate_batch`. The database stage that uses them is
:mod:`cspflow.prerelax.stage`.

Models come from :mod:`cspflow.mlip`, the only module that imports torch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from cspflow.prerelax.engine import CPU_BATCH_ATOMS, batch_budget, prune_verdict
from cspflow.schemas.prerelax import PrerelaxSettings, PruneSettings, RelaxFilters

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

OPTIMIZERS = ("FIRE", "FIRE2", "BFGS", "LBFGS")
#: the prerelax stage's defaults (fmax, max_steps, optimizer), written once in the schema
_DEFAULTS = PrerelaxSettings()


@dataclass
class RelaxOutcome:
    """Result of relaxing one structure (``failure_reason`` is None when it is usable).

    ``status`` is ``converged``, ``pruned`` (stopped early as hopeless; ``failure_reason``
    holds the numbers that decided it) or ``failed``.
    """

    structure: Structure | None
    energy_per_atom: float | None
    steps: int
    converged: bool
    fmax: float | None
    failure_reason: str | None = None
    spacegroup: str | None = None  # Hermann-Mauguin symbol (symprec 0.1)
    spacegroup_number: int | None = None
    pruned: bool = False
    evaluations: int = 0  # model evaluations of this structure
    wall_s: float = 0.0  # from entering the batch to leaving it

    @property
    def ok(self) -> bool:
        return self.failure_reason is None

    @property
    def status(self) -> str:
        if self.ok:
            return "converged"
        return "pruned" if self.pruned else "failed"


def _to_atoms(obj: Structure | Atoms) -> Atoms:
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = obj.copy() if isinstance(obj, Atoms) else AseAtomsAdaptor.get_atoms(obj)
    atoms.calc = None
    atoms.info.clear()  # pymatgen leaves charges/properties there; the models need none
    return atoms


def _formula_key(atoms: Atoms) -> tuple[tuple[int, int], ...]:
    """The reduced composition (Z, count) pairs: energies per atom compare only within one."""
    from collections import Counter
    from math import gcd

    counts = Counter(int(z) for z in atoms.numbers)
    g = gcd(*counts.values()) if counts else 1
    return tuple(sorted((z, c // g) for z, c in counts.items()))


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
    target: float  # the force tolerance it is relaxing to now (fmax_screen, then fmax)
    started: float
    symmetric: bool = False  # still in the symmetry-constrained first stage
    held: int = 0  # consecutive evaluations with the forces below the screening tolerance
    steps: int = 0
    evaluations: int = 0
    energy0: float | None = None
    fmax: float | None = None
    energy: float | None = None
    history: list[float] = field(default_factory=list)  # energy per atom at each step


def _verdict(run: _Run, e_atom: float, ev: Any, volume: float, best: float, rule: PruneSettings):
    """The pruning test of ``run`` now (recent drop: over the last ``rule.every`` steps)."""
    past = run.history[-rule.every - 1] if len(run.history) > rule.every else run.history[0]
    return prune_verdict(e_atom, ev.forces, ev.stress, volume, past - e_atom, best, rule)


def _rattle(atoms: Atoms, amplitude: float) -> None:
    """Move every atom by ``amplitude`` (A) in a random direction, seeded by the structure
    (the same structure is displaced the same way wherever it sits in a batch)."""
    import zlib

    seed = zlib.crc32(np.round(atoms.get_scaled_positions(), 4).tobytes())
    step = np.random.default_rng(seed).normal(size=(len(atoms), 3))
    step *= amplitude / np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12)
    atoms.positions = atoms.positions + step


def _optimizer(name: str, maxstep: float | None = None) -> Any:
    """The ASE optimizer class ``name``, with ``maxstep`` bound when one is given."""
    from functools import partial

    from ase.optimize import BFGS, FIRE, FIRE2, LBFGS

    classes = {"FIRE": FIRE, "FIRE2": FIRE2, "BFGS": BFGS, "LBFGS": LBFGS}
    if name.upper() not in classes:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {name!r}")
    cls = classes[name.upper()]
    return cls if maxstep is None else partial(cls, maxstep=maxstep)


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
    fmax_screen: float | None = _DEFAULTS.fmax_screen,
    symmetry_stage: bool = _DEFAULTS.symmetry_stage,
    prune: PruneSettings | None = None,
    batch_atoms: int | None = _DEFAULTS.batch_atoms,
    trace: Callable[[int, int, float, float, float], None] | None = None,
    finish_optimizer: str | None = _DEFAULTS.finish_optimizer,
    symmetry_rattle: float = _DEFAULTS.symmetry_rattle,
    cell_factor: float | None = _DEFAULTS.cell_factor,
    maxstep: float | None = _DEFAULTS.maxstep,
) -> list[RelaxOutcome]:
    """Relax positions and cell of every structure with one loaded model, batch kept full.

    The structures run in flight: each step evaluates every structure in the batch in one
    model call (or a loop over the calculator when ``batched`` is False), then advances each
    structure's own optimizer on ASE's ``FrechetCellFilter``. A structure leaves the batch when
    it converges, is pruned, fails a filter, or hits ``max_steps``/``max_seconds``, and the
    next pending structure takes its place, so every call is full (``batch_atoms`` atoms, or
    ``chunk_size`` structures) until the queue is empty. A failure never stops the others.

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
        ``FIRE``, ``FIRE2``, ``BFGS`` or ``LBFGS``.
    filters
        Safety thresholds (:class:`~cspflow.schemas.prerelax.RelaxFilters`).
    batched
        Evaluate the running structures in one model call (default: when the model can).
    chunk_size
        Most structures in flight (default: no limit but ``batch_atoms``).
    max_seconds
        Wall-time limit per structure, counted from when it enters the batch.
    progress
        Called as ``progress(index, outcome)`` when a structure finishes.
    fmax_screen
        Loose tolerance: a structure that reaches it goes on to ``fmax`` only while within
        ``prune.window`` of the best so far, else it is pruned (None, or pruning off: ``fmax``
        for every structure).
    symmetry_stage
        Relax first with the starting structure's space group held (ASE ``FixSymmetry``,
        symprec 0.01), then release it and finish unconstrained.
    symmetry_rattle
        With ``symmetry_stage``: when the symmetric stage converges, every atom moves by this
        much (A, a random direction seeded by the structure) before the unconstrained finish,
        which then starts with a fresh evaluation: a symmetric saddle point has no forces that
        break its symmetry, so without the displacement the finish would stop on it.
    prune
        The early-stopping rule (:class:`~cspflow.schemas.prerelax.PruneSettings`; None: off);
        "the best so far" is per reduced composition.
    batch_atoms
        Atoms in flight per model call (default: the model's ``batch_atoms``).
    finish_optimizer
        With screening: the optimizer that takes a screened structure from ``fmax_screen`` to
        ``fmax`` (a fresh one; None: ``optimizer`` goes on with its state).
    cell_factor
        ``exp_cell_factor`` of the ``FrechetCellFilter``: the cell's degrees of freedom are the
        log-strain times this, their forces the virial divided by it (None: ASE's default, the
        number of atoms). It sets how stiff the cell looks to the optimizer next to the atoms
        and how tightly the stress converges (virial / factor < ``fmax``).
    maxstep
        Largest displacement of one optimizer step (A; None: the ASE optimizer's default).
    trace
        Called as ``trace(index, step, energy_per_atom, fmax, volume_ratio)`` after every
        evaluation that passed the filters (benchmarks record trajectories with it).

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
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter

    def cell_filter(atoms: Atoms) -> FrechetCellFilter:
        if cell_factor is None:
            return FrechetCellFilter(atoms)
        return FrechetCellFilter(atoms, exp_cell_factor=cell_factor)

    filters = filters or RelaxFilters()
    opt_cls = _optimizer(optimizer, maxstep)
    finish_cls = _optimizer(finish_optimizer, maxstep) if finish_optimizer else None
    rule = prune if prune is not None and prune.enabled else None
    screen = fmax_screen if rule is not None and fmax_screen and fmax_screen > fmax else fmax
    hold = rule.screen_hold if rule is not None else 1
    atoms_list = [_to_atoms(s) for s in structures]
    model.check_elements({int(z) for a in atoms_list for z in a.numbers})
    budget = batch_atoms or getattr(model, "batch_atoms", None) or CPU_BATCH_ATOMS
    cap = chunk_size or len(atoms_list) or 1

    outcomes: list[RelaxOutcome | None] = [None] * len(atoms_list)
    # per composition: the lowest energy per atom relaxed to fmax_screen or fmax so far
    best: dict[tuple[tuple[int, int], ...], float] = {}
    formulas = [_formula_key(a) for a in atoms_list]

    def finish(run: _Run | None, index: int, outcome: RelaxOutcome) -> None:
        if run is not None:
            outcome.evaluations = run.evaluations
            outcome.wall_s = time.monotonic() - run.started
        if outcome.structure is not None and outcome.ok:
            found = _spacegroup(outcome.structure)
            if found is not None:
                outcome.spacegroup_number, outcome.spacegroup = found
        outcomes[index] = outcome
        if progress is not None:
            progress(index, outcome)

    pending: deque[int] = deque()
    for k, atoms in enumerate(atoms_list):
        reason = check_geometry(atoms, filters)
        if reason is not None:
            finish(None, k, RelaxOutcome(_to_structure(atoms), None, 0, False, None, reason))
        else:
            pending.append(k)

    def admit(k: int) -> _Run:
        atoms = atoms_list[k]
        if symmetry_stage:
            atoms.set_constraint(FixSymmetry(atoms, symprec=0.01))
        # ASE types an optimizer's atoms as Atoms; a cell filter is its documented input too
        opt = opt_cls(cell_filter(atoms), logfile=None)  # type: ignore[arg-type]
        return _Run(k, atoms, opt, atoms.get_volume(), screen, time.monotonic(), symmetry_stage)

    def advance(run: _Run, gradient: np.ndarray) -> None:
        # the step reuses this gradient: FrechetCellFilter's matrix exponential is the
        # costliest part of a step outside the model (docs/relax.md)
        run.opt.optimizable.get_gradient = lambda g=gradient: g
        try:
            run.opt.step()
        finally:
            del run.opt.optimizable.get_gradient
        run.opt.nsteps += 1
        run.steps += 1

    # screened structures wait here (optimizer state kept) until every structure is screened
    parked: list[tuple[_Run, float, np.ndarray, str]] = []

    def park(run: _Run, e_atom: float, gradient: np.ndarray, how: str) -> None:
        key = formulas[run.index]
        best[key] = min(best.get(key, np.inf), e_atom)
        parked.append((run, e_atom, gradient, how))

    def resume() -> list[_Run]:
        """Finish the parked structures within the window of the best screened; prune the rest."""
        assert rule is not None
        back: list[_Run] = []
        for run, e_atom, gradient, how in parked:
            low = best[formulas[run.index]]
            if e_atom > low + rule.window:
                run.atoms.set_constraint()
                reason = (
                    f"screened ({how}): E {e_atom:.4f} eV/atom at step {run.steps} > best "
                    f"screened {low:.4f} + window {rule.window:g}"
                )
                out = RelaxOutcome(_to_structure(run.atoms), e_atom, run.steps, False,
                                   run.fmax, reason, pruned=True)  # fmt: skip
                finish(run, run.index, out)
            elif run.opt.optimizable.converged(gradient, fmax):
                struct = _to_structure(run.atoms)
                finish(run, run.index, RelaxOutcome(struct, e_atom, run.steps, True, run.fmax))
            else:
                run.target = fmax
                if finish_cls is not None:  # a fresh optimizer from here (no model call)
                    run.opt = finish_cls(cell_filter(run.atoms), logfile=None)  # type: ignore[arg-type]
                    gradient = run.opt.optimizable.get_gradient()
                advance(run, gradient)
                back.append(run)
        parked.clear()
        return back

    active: list[_Run] = []
    while active or pending or parked:
        if not active and not pending:
            active = resume()
            continue
        in_flight = sum(len(r.atoms) for r in active)
        room = batch_budget([len(atoms_list[k]) for k in pending], budget, in_flight)
        for _ in range(min(room, cap - len(active))):
            active.append(admit(pending.popleft()))
        evals = model.evaluate([r.atoms for r in active], batched=batched)
        still: list[_Run] = []
        for run, ev in zip(active, evals, strict=True):
            atoms = run.atoms
            n = len(atoms)
            run.evaluations += 1
            atoms.calc = SinglePointCalculator(
                atoms, energy=ev.energy, free_energy=ev.energy, forces=ev.forces, stress=ev.stress
            )
            steps = run.steps

            def fail(
                reason: str, run: _Run = run, steps: int = steps, pruned: bool = False
            ) -> None:
                run.atoms.set_constraint()
                e = run.energy / len(run.atoms) if run.energy is not None else None
                struct = _to_structure(run.atoms)
                out = RelaxOutcome(struct, e, steps, False, run.fmax, reason, pruned=pruned)
                finish(run, run.index, out)

            if not (np.isfinite(ev.energy) and np.all(np.isfinite(ev.forces))):
                fail(f"non-finite energy or forces at step {steps}")
                continue
            if run.energy0 is None:
                run.energy0 = ev.energy
            run.energy = ev.energy
            e_atom = ev.energy / n
            run.history.append(e_atom)
            fnorm = float(np.sqrt((ev.forces**2).sum(axis=1)).max()) if n else 0.0
            if fnorm > filters.max_force:
                fail(f"exploding forces: {fnorm:.3g} eV/A at step {steps}")
                continue
            # from the start, or from zero for a start above it: a random start several
            # eV/atom above zero may legitimately fall by more than the threshold
            drop = min(run.energy0 / n, 0.0) - e_atom
            if drop > filters.max_energy_drop_per_atom:
                what = "the start" if run.energy0 < 0 else "zero (the start was above)"
                fail(f"exploding energy: dropped {drop:.3g} eV/atom below {what} by step {steps}")
                continue
            ratio = atoms.get_volume() / run.volume0
            if not 1.0 / filters.max_volume_ratio <= ratio <= filters.max_volume_ratio:
                what = "blew up" if ratio > 1 else "collapsed"
                fail(f"volume {what}: {ratio:.2f}x the start at step {steps}")
                continue
            gradient = run.opt.optimizable.get_gradient()
            converged = run.opt.optimizable.converged(gradient, run.target)
            if converged and run.symmetric:
                # the symmetric stage is done: release the space group, finish unconstrained
                atoms.set_constraint()
                run.symmetric = False
                if symmetry_rattle > 0:  # off the symmetric point; evaluated there next step
                    _rattle(atoms, symmetry_rattle)
                    run.opt = opt_cls(cell_filter(atoms), logfile=None)  # type: ignore[arg-type]
                    still.append(run)
                    continue
                run.opt = opt_cls(cell_filter(atoms), logfile=None)  # type: ignore[arg-type]
                gradient = run.opt.optimizable.get_gradient()
                converged = run.opt.optimizable.converged(gradient, run.target)
            run.fmax = float(run.opt.optimizable.gradient_norm(gradient))
            if trace is not None:
                trace(run.index, steps, e_atom, run.fmax, ratio)
            key = formulas[run.index]
            screening = run.target > fmax
            if screening:
                # screened only once the forces stay low: FIRE passes saddles with small forces
                run.held = run.held + 1 if converged else 0
                converged = run.held >= hold
            if converged or (steps and steps % filters.check_every == 0):
                reason = check_geometry(atoms, filters)
                if reason is not None:
                    fail(f"{reason} at step {steps}")
                    continue
            if converged and screening:
                park(run, e_atom, gradient, f"fmax {run.fmax:.3g} <= {run.target:g}")
                continue
            if converged:
                best[key] = min(best.get(key, np.inf), e_atom)
                struct = _to_structure(atoms)
                finish(run, run.index, RelaxOutcome(struct, e_atom, steps, True, run.fmax))
                continue
            if screening and rule is not None and rule.screen_steps and steps >= rule.screen_steps:
                park(run, e_atom, gradient, f"step cap {rule.screen_steps}, fmax {run.fmax:.3g}")
                continue
            if (
                rule is not None
                and rule.descent
                and key in best
                and steps >= rule.min_steps
                and steps % rule.every == 0
            ):
                verdict = _verdict(run, e_atom, ev, atoms.get_volume(), best[key], rule)
                if verdict.prune:
                    fail(verdict.reason(steps), pruned=True)
                    continue
            if steps >= max_steps:
                fail(f"not converged in {max_steps} steps (fmax {run.fmax:.3g} eV/A)")
                continue
            if max_seconds is not None and time.monotonic() - run.started > max_seconds:
                fail(f"time limit {max_seconds:g} s reached after {steps} steps")
                continue
            advance(run, gradient)
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
