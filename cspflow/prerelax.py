"""MLIP pre-relaxation of candidate batches, safety filters, committee disagreement, selection.

Three layers, as elsewhere in cspflow:

* pure functions on pymatgen/ASE objects: :func:`check_geometry`, :func:`relax_structures`
  (a batch relaxed in lock step: one batched model evaluation per step for every structure still
  running, each structure with its own ASE FIRE/BFGS optimizer on a ``FrechetCellFilter``),
  :func:`deduplicate_batch` and :func:`select_for_dft`;
* database functions: :func:`prerelax_candidates` (read a batch of candidate ids, load the model
  once, relax, write ``relaxed.mlip`` / status / energies, deduplicate the relaxed structures)
  and :func:`select_candidates`;
* jobflow Makers: :class:`PrerelaxMaker` (``metadata={"stage": "prerelax"}``, routed to gpu
  workers) and :class:`SelectMaker` (``{"stage": "select"}``, cpu).

Models come from :mod:`cspflow.mlip`, the only module that imports torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from jobflow import Job, Maker, job

from cspflow.schemas.prerelax import (
    CommitteeDoc,
    MlipRelaxDoc,
    PrerelaxSummary,
    RelaxFilters,
    SelectionSummary,
)

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure
    from pymongo.database import Database

    from cspflow.mlip import LoadedModel

__all__ = [
    "RelaxOutcome",
    "check_geometry",
    "relax_structures",
    "deduplicate_batch",
    "select_for_dft",
    "prerelax_candidates",
    "select_candidates",
    "PrerelaxMaker",
    "SelectMaker",
]

OPTIMIZERS = ("FIRE", "BFGS")
# (candidate_id, relaxed structure) -> id of another candidate that is the same structure, or None
FindDuplicate = Callable[["Database", str, "Structure"], "str | None"]


@dataclass
class RelaxOutcome:
    """Result of relaxing one structure (``failure_reason`` is None when it is usable)."""

    structure: Structure | None
    energy_per_atom: float | None
    steps: int
    converged: bool
    fmax: float | None
    failure_reason: str | None = None
    spacegroup: str | None = None

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


def _spacegroup(structure: Structure) -> str | None:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
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
    atoms = _to_atoms(atoms) if not hasattr(atoms, "get_positions") else atoms
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
    fmax: float = 0.05,
    max_steps: int = 300,
    optimizer: str = "FIRE",
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
            outcome.spacegroup = _spacegroup(outcome.structure)
        outcomes[index] = outcome
        if progress is not None:
            progress(index, outcome)

    active: list[_Run] = []
    for k, atoms in enumerate(atoms_list):
        reason = check_geometry(atoms, filters)
        if reason is not None:
            finish(None, k, RelaxOutcome(_to_structure(atoms), None, 0, False, None, reason))
            continue
        opt = opt_cls(FrechetCellFilter(atoms), logfile=None)
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


def select_for_dft(
    records: Iterable[dict[str, Any]],
    *,
    top_k: int = 5,
    energy_window: float = 0.05,
    n_uncertain: int = 0,
    uncertainty: str = "force_std",
) -> SelectionSummary:
    """Choose candidates for DFT: per composition the ``top_k`` lowest within ``energy_window``.

    Parameters
    ----------
    records
        Dicts with ``candidate_id``, ``formula``, ``energy_per_atom`` and, when a committee was
        used, ``committee`` (``{"energy_std": .., "force_std": ..}``). Failed and duplicate
        candidates must already be left out.
    top_k
        Most candidates per composition chosen for low energy.
    energy_window
        Only candidates within this much of the composition's lowest energy (eV/atom).
    n_uncertain
        Per composition, also the ``n_uncertain`` not yet chosen with the largest committee
        disagreement (none without a committee).
    uncertainty
        ``force_std`` or ``energy_std``.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("energy_per_atom") is None:
            continue
        groups.setdefault(rec["formula"], []).append(rec)
    out = SelectionSummary()
    for formula in sorted(groups):
        recs = sorted(groups[formula], key=lambda r: (r["energy_per_atom"], r["candidate_id"]))
        e_min = recs[0]["energy_per_atom"]
        chosen = [r for r in recs if r["energy_per_atom"] - e_min <= energy_window + 1e-12]
        chosen = chosen[:top_k]
        ids = [r["candidate_id"] for r in chosen]
        for cid in ids:
            out.reasons[cid] = "lowest"
        if n_uncertain > 0:
            rest = [r for r in recs if r["candidate_id"] not in ids and r.get("committee")]
            rest.sort(key=lambda r: -float(r["committee"].get(uncertainty) or 0.0))
            for r in rest[:n_uncertain]:
                ids.append(r["candidate_id"])
                out.reasons[r["candidate_id"]] = "uncertain"
        out.by_formula[formula] = ids
        out.selected.extend(ids)
    return out


def _relax_key(structure: dict, settings: dict, model_id: str) -> str:
    blob = json.dumps([structure, settings, model_id], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _start_structure(doc: dict[str, Any], start: str) -> dict[str, Any]:
    """The structure a relaxation starts from (``initial`` or the stored ``mlip`` result)."""
    if start == "mlip":
        relaxed = ((doc.get("relaxed") or {}).get("mlip") or {}).get("structure")
        if relaxed:
            return relaxed
    elif start != "initial":
        raise ValueError(f"start must be 'initial' or 'mlip', not {start!r}")
    return doc["structure"]


def _default_find_duplicate(energies: dict[str, float | None]) -> FindDuplicate | None:
    try:
        from cspflow.dedup.index import register_relaxed
    except ImportError:
        return None

    def find(db: Database, candidate_id: str, structure: Structure) -> str | None:
        return register_relaxed(db, candidate_id, structure, "mlip", energies.get(candidate_id))

    return find


def prerelax_candidates(
    candidate_ids: Sequence[str],
    *,
    model: str = "chgnet",
    committee: Sequence[str] = (),
    fmax: float = 0.05,
    max_steps: int = 300,
    optimizer: str = "FIRE",
    filters: RelaxFilters | dict | None = None,
    batched: bool | None = None,
    max_seconds: float | None = None,
    dedup: bool = True,
    db: Database | None = None,
    find_duplicate: FindDuplicate | None = None,
    device: str | None = None,
    loaded: LoadedModel | None = None,
    start: str = "initial",
) -> PrerelaxSummary:
    """Relax a batch of stored candidates and write the results to ``candidates``.

    Loads the model once for the batch. For each candidate it sets ``relaxed.mlip``
    (:class:`~cspflow.schemas.prerelax.MlipRelaxDoc`), ``energy_per_atom.mlip`` and ``status``
    (``prerelaxed``, or ``failed`` with ``failure_reason``). Relaxed structures are then
    deduplicated, lowest energy first: a match sets ``duplicate_of``. A candidate whose stored
    ``relaxed.mlip.key`` equals this run's key (same structure, settings and model) is not redone.

    Parameters
    ----------
    candidate_ids
        The batch.
    model
        Model spec (``chgnet``, ``mace:PATH``, ``registry:ID``).
    committee
        Further model specs; with any, the disagreement of ``[model, *committee]`` on each
        relaxed structure is stored under ``relaxed.mlip.committee``.
    fmax, max_steps, optimizer, filters, batched, max_seconds
        See :func:`relax_structures`.
    dedup
        Deduplicate the relaxed structures.
    db
        The cspflow database (default: from the settings).
    find_duplicate
        ``f(db, candidate_id, relaxed_structure) -> duplicate id or None``; default
        :func:`cspflow.dedup.index.register_relaxed` (level ``mlip``, with the relaxed
        energy, so copies of one minimum are found however they drifted), or a StructureMatcher
        comparison within the batch when that module is absent.
    device
        ``cpu``/``cuda``/``auto`` (default: the ``device`` setting).
    loaded
        An already loaded model (skips loading ``model``).
    start
        ``initial`` relaxes the generated structure; ``mlip`` starts from the stored MLIP
        relaxed structure where there is one (re-screening with a new model).

    Raises
    ------
    CspflowError
        Unknown ids, a bad model spec, or a model lacking an element of the batch.
    """
    from pymatgen.core import Structure

    from cspflow.errors import CspflowError
    from cspflow.mlip import committee_disagreement, load_model

    t0 = time.monotonic()
    if db is None:
        from cspflow.store import get_database

        db = get_database()
    filters = RelaxFilters.model_validate(filters or {})
    ids = list(dict.fromkeys(candidate_ids))
    coll = db["candidates"]
    docs = {d["candidate_id"]: d for d in coll.find({"candidate_id": {"$in": ids}}, {"_id": 0})}
    missing = [cid for cid in ids if cid not in docs]
    if missing:
        raise CspflowError(
            f"{len(missing)} candidate id(s) not in the candidates collection (e.g. {missing[0]}); "
            "generate them first"
        )
    mlip = loaded or load_model(model, device=device, db=db)
    members = [mlip] + [load_model(spec, device=mlip.device, db=db) for spec in committee]
    numbers = set()
    for d in docs.values():
        numbers |= {sp.Z for sp in Structure.from_dict(d["structure"]).composition.elements}
    for m in members:
        m.check_elements(numbers)

    run_settings = {
        "fmax": fmax,
        "max_steps": max_steps,
        "optimizer": optimizer.upper(),
        "filters": filters.model_dump(),
        "committee": [m.model_id for m in members[1:]],
    }
    summary = PrerelaxSummary(
        model_id=mlip.model_id,
        device=mlip.device,
        batched=bool(mlip.batched if batched is None else batched and mlip.batched),
        n_candidates=len(ids),
    )
    starts = {cid: _start_structure(docs[cid], start) for cid in ids}
    keys = {cid: _relax_key(starts[cid], run_settings, mlip.model_id) for cid in ids}
    todo = []
    for cid in ids:
        stored = ((docs[cid].get("relaxed") or {}).get("mlip")) or {}
        if stored.get("key") == keys[cid]:
            summary.reused.append(cid)
        else:
            todo.append(cid)

    structures = [Structure.from_dict(starts[cid]) for cid in todo]
    outcomes = relax_structures(
        structures,
        mlip,
        fmax=fmax,
        max_steps=max_steps,
        optimizer=optimizer,
        filters=filters,
        batched=batched,
        max_seconds=max_seconds,
    )
    wall = time.monotonic() - t0
    good = [(cid, o) for cid, o in zip(todo, outcomes, strict=True) if o.ok]
    spread: dict[str, CommitteeDoc] = {}
    if len(members) > 1 and good:
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = [AseAtomsAdaptor.get_atoms(o.structure) for _, o in good]
        for (cid, _), dis in zip(good, committee_disagreement(members, atoms), strict=True):
            spread[cid] = CommitteeDoc(**dis, model_ids=[m.model_id for m in members])

    for cid, out in zip(todo, outcomes, strict=True):
        doc = MlipRelaxDoc(
            structure=out.structure.as_dict() if out.structure is not None else None,
            energy_per_atom=out.energy_per_atom,
            spacegroup=out.spacegroup,
            steps=out.steps,
            converged=out.converged,
            fmax=out.fmax,
            model_id=mlip.model_id,
            optimizer=optimizer.upper(),
            committee=spread.get(cid),
            key=keys[cid],
            device=mlip.device,
            wall_s=round(wall, 3),
        )
        update: dict[str, Any] = {
            "relaxed.mlip": doc.model_dump(),
            "energy_per_atom.mlip": out.energy_per_atom if out.ok else None,
            "status": "prerelaxed" if out.ok else "failed",
            "failure_reason": out.failure_reason,
        }
        coll.update_one({"candidate_id": cid}, {"$set": update, "$unset": {"duplicate_of": ""}})
        if out.ok:
            summary.relaxed.append(cid)
        else:
            summary.failed[cid] = out.failure_reason or "failed"

    if dedup and good:
        ordered = sorted(good, key=lambda g: g[1].energy_per_atom)
        finder = find_duplicate or _default_find_duplicate(
            {cid: o.energy_per_atom for cid, o in good}
        )
        if finder is None:
            dups = deduplicate_batch([(cid, o.structure) for cid, o in ordered])
        else:
            dups = {}
            for cid, o in ordered:
                other = finder(db, cid, o.structure)
                if other is not None and other != cid:
                    dups[cid] = dups.get(other, other)  # point at the batch's representative
        for cid, other in dups.items():
            coll.update_one({"candidate_id": cid}, {"$set": {"duplicate_of": other}})
        summary.duplicates = dups

    for cid in summary.relaxed + summary.reused:
        d = coll.find_one({"candidate_id": cid}, {"formula": 1, "energy_per_atom": 1, "status": 1})
        e = (d.get("energy_per_atom") or {}).get("mlip")
        if e is not None and d.get("status") != "failed":
            f = d.get("formula") or docs[cid].get("formula")
            summary.lowest[f] = min(e, summary.lowest.get(f, e))
    summary.wall_s = round(time.monotonic() - t0, 3)
    return summary


def select_candidates(
    campaign: str | None,
    iteration: int | None,
    *,
    top_k: int = 5,
    energy_window: float = 0.05,
    n_uncertain: int = 0,
    uncertainty: str = "force_std",
    candidate_ids: Sequence[str] | None = None,
    db: Database | None = None,
) -> SelectionSummary:
    """Mark the candidates chosen by :func:`select_for_dft` as ``selected`` in the database.

    Considers prerelaxed (and already selected), non-duplicate candidates of the
    campaign/iteration, plus older ones the campaign re-screened for this iteration with a newly
    promoted model (``rescreen.campaign``/``rescreen.iteration``; see :mod:`cspflow.rescreen`),
    or exactly ``candidate_ids`` when given; rerunning it is idempotent.
    """
    if db is None:
        from cspflow.store import get_database

        db = get_database()
    # selected ones count too, so running the selection again gives the same answer
    query: dict[str, Any] = {"status": {"$in": ["prerelaxed", "selected"]}, "duplicate_of": None}
    if candidate_ids is not None:
        query["candidate_id"] = {"$in": list(candidate_ids)}
    else:
        # this iteration's candidates, and older ones (of the system: this campaign's or an
        # earlier campaign's) a newly promoted model re-screened for it
        query["$or"] = [
            {"campaign": campaign, "iteration": iteration},
            {"rescreen.campaign": campaign, "rescreen.iteration": iteration},
        ]
    projection = {
        "_id": 0,
        "candidate_id": 1,
        "formula": 1,
        "energy_per_atom": 1,
        "relaxed.mlip.committee": 1,
    }
    records = [
        {
            "candidate_id": d["candidate_id"],
            "formula": d["formula"],
            "energy_per_atom": (d.get("energy_per_atom") or {}).get("mlip"),
            "committee": ((d.get("relaxed") or {}).get("mlip") or {}).get("committee"),
        }
        for d in db["candidates"].find(query, projection)
    ]
    summary = select_for_dft(
        records,
        top_k=top_k,
        energy_window=energy_window,
        n_uncertain=n_uncertain,
        uncertainty=uncertainty,
    )
    if summary.selected:
        db["candidates"].update_many(
            {"candidate_id": {"$in": summary.selected}}, {"$set": {"status": "selected"}}
        )
    return summary


def _metadata(stage: str, campaign: str | None, iteration: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"stage": stage}
    if campaign is not None:
        meta["campaign"] = campaign
    if iteration is not None:
        meta["iteration"] = iteration
    return meta


@dataclass
class PrerelaxMaker(Maker):
    """Relax one batch of candidates with an MLIP (a job per batch, routed to gpu workers).

    Parameters
    ----------
    name
        Job name.
    model
        Model spec: ``chgnet``, ``mace:PATH`` or ``registry:ID``.
    committee
        Further model specs for committee disagreement.
    fmax
        Force convergence (eV/A).
    max_steps
        Optimizer steps per candidate.
    optimizer
        ``FIRE`` or ``BFGS`` (on ``FrechetCellFilter``).
    filters
        :class:`~cspflow.schemas.prerelax.RelaxFilters` fields.
    batched
        Batched model evaluation (None: when the model supports it).
    max_seconds
        Wall-time limit per candidate (s).
    dedup
        Deduplicate relaxed structures.
    """

    name: str = "prerelax"
    model: str = "chgnet"
    committee: list[str] = field(default_factory=list)
    fmax: float = 0.05
    max_steps: int = 300
    optimizer: str = "FIRE"
    filters: dict[str, Any] = field(default_factory=dict)
    batched: bool | None = None
    max_seconds: float | None = None
    dedup: bool = True

    def make(
        self,
        candidate_ids: list[str],
        campaign: str | None = None,
        iteration: int | None = None,
    ) -> Job:
        """Return the job for one batch (ids only: structures stay in the database)."""
        batch_job = self.run_batch(list(candidate_ids))
        batch_job.name = self.name
        batch_job.metadata.update(_metadata("prerelax", campaign, iteration))
        return batch_job

    @job
    def run_batch(self, candidate_ids: list[str]) -> dict[str, Any]:
        """Run the batch (what the job executes); returns the summary as a dict."""
        summary = prerelax_candidates(
            candidate_ids,
            model=self.model,
            committee=self.committee,
            fmax=self.fmax,
            max_steps=self.max_steps,
            optimizer=self.optimizer,
            filters=self.filters,
            batched=self.batched,
            max_seconds=self.max_seconds,
            dedup=self.dedup,
        )
        return summary.model_dump()


@dataclass
class SelectMaker(Maker):
    """Pick the candidates of a campaign iteration that go on to DFT (cpu)."""

    name: str = "select"
    top_k: int = 5
    energy_window: float = 0.05
    n_uncertain: int = 0
    uncertainty: str = "force_std"

    def make(
        self,
        campaign: str | None = None,
        iteration: int | None = None,
        prerelax_outputs: list[Any] | None = None,
        candidate_ids: list[str] | None = None,
    ) -> Job:
        """Return the select job; pass the prerelax jobs' outputs to run after them."""
        select_job = self.run_select(
            campaign, iteration, after=prerelax_outputs or [], candidate_ids=candidate_ids
        )
        select_job.name = self.name
        select_job.metadata.update(_metadata("select", campaign, iteration))
        return select_job

    @job
    def run_select(
        self,
        campaign: str | None,
        iteration: int | None,
        after: list[Any] | None = None,
        candidate_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run the selection (``after`` only orders the job after its inputs)."""
        return select_candidates(
            campaign,
            iteration,
            top_k=self.top_k,
            energy_window=self.energy_window,
            n_uncertain=self.n_uncertain,
            uncertainty=self.uncertainty,
            candidate_ids=candidate_ids,
        ).model_dump()
