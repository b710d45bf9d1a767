"""The prerelax stage: relax a batch of stored candidates and write the results.

* :func:`prerelax_candidates` (read a batch of candidate ids, load the model once, relax with
  :func:`cspflow.prerelax.relax.relax_structures`, write ``relaxed.mlip`` / status / energies,
  deduplicate the relaxed structures);
* the job :func:`prerelax_job` and its Maker :class:`PrerelaxMaker` (holds a
  :class:`~cspflow.schemas.prerelax.PrerelaxSettings`; ``stage_metadata("prerelax")``, routed to
  gpu workers).

Models come from :mod:`cspflow.mlip`, the only module that imports torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Job, Maker, job

from cspflow.jobs import stage_metadata
from cspflow.prerelax.relax import deduplicate_batch, relax_structures
from cspflow.schemas.prerelax import (
    CommitteeDoc,
    MlipRelaxDoc,
    PrerelaxSettings,
    PrerelaxSummary,
    PruneSettings,
    RelaxFilters,
)

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure
    from pymongo.database import Database

    from cspflow.mlip import LoadedModel
    from cspflow.prerelax.relax import RelaxOutcome

__all__ = [
    "prerelax_candidates",
    "prerelax_job",
    "PrerelaxMaker",
]

#: defaults of direct calls: the stage's settings, written once in the schema
_DEFAULTS = PrerelaxSettings()

# (candidate_id, relaxed structure) -> id of another candidate that is the same structure, or None
FindDuplicate = Callable[["Database", str, "Structure"], "str | None"]


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


def _relaxed(outcome: RelaxOutcome) -> tuple[Structure, float]:
    """Structure and energy per atom of an ok outcome (relax_structures sets both)."""
    assert outcome.structure is not None and outcome.energy_per_atom is not None
    return outcome.structure, outcome.energy_per_atom


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
    model: str = _DEFAULTS.model,
    committee: Sequence[str] = (),
    fmax: float = _DEFAULTS.fmax,
    max_steps: int = _DEFAULTS.max_steps,
    optimizer: str = _DEFAULTS.optimizer,
    filters: RelaxFilters | dict | None = None,
    batched: bool | None = _DEFAULTS.batched,
    max_seconds: float | None = _DEFAULTS.max_seconds,
    dedup: bool = _DEFAULTS.dedup,
    dispersion: str | None = _DEFAULTS.dispersion,
    fmax_screen: float | None = _DEFAULTS.fmax_screen,
    symmetry_stage: bool = _DEFAULTS.symmetry_stage,
    symmetry_rattle: float = _DEFAULTS.symmetry_rattle,
    cell_factor: float | None = _DEFAULTS.cell_factor,
    maxstep: float | None = _DEFAULTS.maxstep,
    finish_optimizer: str | None = _DEFAULTS.finish_optimizer,
    prune: PruneSettings | dict | None = None,
    batch_atoms: int | None = _DEFAULTS.batch_atoms,
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
    fmax, max_steps, optimizer, filters, batched, max_seconds, fmax_screen, symmetry_stage, \
    symmetry_rattle, cell_factor, maxstep, finish_optimizer, batch_atoms
        See :func:`~cspflow.prerelax.relax.relax_structures`.
    prune
        The early-stopping rule (default: :class:`~cspflow.schemas.prerelax.PruneSettings`'s);
        a pruned candidate is stored ``failed`` with the reason, ``relaxed.mlip.status``
        ``pruned``.
    dedup
        Deduplicate the relaxed structures.
    dispersion
        ``d3bj`` adds D3(BJ) to the model's energies, forces and stress (see
        :mod:`cspflow.mlip`); part of the stored result and of its key. Recorded in the result's fidelity.
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

    from cspflow.mlip import committee_disagreement, load_model
    from cspflow.schemas.fidelity import mlip_fidelity
    from cspflow.store import candidates

    t0 = time.monotonic()
    if db is None:
        from cspflow.store import get_database

        db = get_database()
    filters = RelaxFilters.model_validate(filters or {})
    rule = PruneSettings.model_validate(prune or {})
    ids = list(dict.fromkeys(candidate_ids))
    docs = candidates.require(db, ids)
    mlip = loaded or load_model(model, device=device, db=db, dispersion=dispersion)
    if mlip.dispersion != dispersion:
        raise ValueError(
            f"the loaded model's dispersion {mlip.dispersion!r} is not the run's {dispersion!r}"
        )
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
        "fmax_screen": fmax_screen,
        "symmetry_stage": symmetry_stage,
        "prune": rule.model_dump(),
    }
    if dispersion is not None:  # only when set: keys of runs without it stay as they were
        run_settings["dispersion"] = dispersion
    if finish_optimizer is not None:  # likewise
        run_settings["finish_optimizer"] = finish_optimizer
    if cell_factor is not None:  # likewise
        run_settings["cell_factor"] = cell_factor
    if maxstep is not None:  # likewise
        run_settings["maxstep"] = maxstep
    if symmetry_stage:  # the displacement changes the result only after a symmetric stage
        run_settings["symmetry_rattle"] = symmetry_rattle
    summary = PrerelaxSummary(
        model_id=mlip.model_id,
        dispersion=dispersion,
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
        fmax_screen=fmax_screen,
        symmetry_stage=symmetry_stage,
        symmetry_rattle=symmetry_rattle,
        cell_factor=cell_factor,
        maxstep=maxstep,
        finish_optimizer=finish_optimizer,
        prune=rule,
        batch_atoms=batch_atoms,
    )
    wall = time.monotonic() - t0
    good = [(cid, o) for cid, o in zip(todo, outcomes, strict=True) if o.ok]
    spread: dict[str, CommitteeDoc] = {}
    if len(members) > 1 and good:
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms: list[Atoms] = [AseAtomsAdaptor.get_atoms(_relaxed(o)[0]) for _, o in good]
        for (cid, _), dis in zip(good, committee_disagreement(members, atoms), strict=True):
            spread[cid] = CommitteeDoc(**dis, model_ids=[m.model_id for m in members])

    for cid, out in zip(todo, outcomes, strict=True):
        doc = MlipRelaxDoc(
            structure=out.structure.as_dict() if out.structure is not None else None,
            energy_per_atom=out.energy_per_atom,
            spacegroup=out.spacegroup_number,
            spacegroup_symbol=out.spacegroup,
            steps=out.steps,
            converged=out.converged,
            fmax=out.fmax,
            model_id=mlip.model_id,
            dispersion=dispersion,
            optimizer=optimizer.upper(),
            committee=spread.get(cid),
            key=keys[cid],
            device=mlip.device,
            wall_s=round(wall, 3),
            fidelity=mlip_fidelity(mlip.model_id, dispersion),
            status=out.status,  # type: ignore[arg-type]  # converged | pruned | failed
            reason=out.failure_reason,
            evaluations=out.evaluations,
            relax_wall_s=round(out.wall_s, 3),
        )
        candidates.set_mlip_result(db, cid, doc, failure_reason=out.failure_reason)
        if out.ok:
            summary.relaxed.append(cid)
        else:
            summary.failed[cid] = out.failure_reason or "failed"
            if out.pruned:
                summary.pruned[cid] = summary.failed[cid]
        summary.evaluations += out.evaluations
        summary.steps += out.steps

    if dedup and good:
        ordered = sorted(good, key=lambda g: _relaxed(g[1])[1])
        finder = find_duplicate or _default_find_duplicate(
            {cid: o.energy_per_atom for cid, o in good}
        )
        if finder is None:
            dups = deduplicate_batch([(cid, _relaxed(o)[0]) for cid, o in ordered])
        else:
            dups = {}
            for cid, o in ordered:
                other = finder(db, cid, _relaxed(o)[0])
                if other is not None and other != cid:
                    rep = dups.get(other, other)  # point at the batch's representative
                    if rep == cid:
                        # two of this batch found each other (a start already at the other's
                        # minimum, as template starts are): the lower-energy one, seen first,
                        # stays and takes over whatever pointed at this one
                        del dups[other]
                        dups = {k: other if v == cid else v for k, v in dups.items()}
                        rep = other
                    dups[cid] = rep
        for cid, other in dups.items():
            candidates.mark_duplicate(db, cid, other)
        summary.duplicates = dups

    now = candidates.get_many(db, summary.relaxed + summary.reused,
                              {"formula": 1, "energy_per_atom": 1, "status": 1})  # fmt: skip
    for d in now.values():
        e = (d.get("energy_per_atom") or {}).get("mlip")
        if e is not None and d.get("status") != "failed":
            summary.lowest[d["formula"]] = min(e, summary.lowest.get(d["formula"], e))
    summary.wall_s = round(time.monotonic() - t0, 3)
    return summary


@job
def prerelax_job(candidate_ids: list[str], settings: PrerelaxSettings | dict) -> dict[str, Any]:
    """Relax one batch with :func:`prerelax_candidates` (what the job runs); returns the summary
    as a dict."""
    s = PrerelaxSettings.model_validate(settings)
    kwargs = {name: getattr(s, name) for name in PrerelaxSettings.model_fields}
    return prerelax_candidates(candidate_ids, **kwargs).model_dump()


@dataclass
class PrerelaxMaker(Maker):
    """Relax one batch of candidates with an MLIP (a job per batch, routed to gpu workers).

    Parameters
    ----------
    name
        Job name.
    settings
        The stage's :class:`~cspflow.schemas.prerelax.PrerelaxSettings` (model, committee, fmax,
        max_steps, optimizer, filters, batched, max_seconds, dedup, fmax_screen, symmetry_stage,
        symmetry_rattle, cell_factor, maxstep, finish_optimizer, prune, batch_atoms); a campaign passes
        its spec's ``prerelax`` block.
    """

    name: str = "prerelax"
    settings: PrerelaxSettings = field(default_factory=PrerelaxSettings)

    def make(
        self,
        candidate_ids: list[str],
        campaign: str | None = None,
        iteration: int | None = None,
    ) -> Job:
        """Return the job for one batch (ids only: structures stay in the database)."""
        batch_job = prerelax_job(list(candidate_ids), settings=self.settings)
        batch_job.name = self.name
        batch_job.metadata.update(stage_metadata("prerelax", campaign, iteration))
        return batch_job
