"""Re-screening: when a retrained model is promoted, judge the stored candidates again.

Candidates that an earlier model pre-relaxed but that never reached DFT were ranked by that
model. A promoted model (it beat the old one on held-out DFT frames) may rank them
differently, so the campaign does not leave them behind:

1. single points: every such candidate of the chemical system (its MLIP-relaxed structure),
   the campaign's own and those of earlier campaigns of the system or its subsystems, is
   evaluated with the new model in batches. Candidates of another campaign that is running
   now are left alone: their campaign's own selection is ranking them with its own model;
2. per formula, the ``top`` lowest by the new single-point energy are relaxed again with the
   new model (starting from their MLIP structure) through the prerelax stage;
3. every candidate of the pool gets one more entry in its append-only ``screenings`` list
   (:class:`~cspflow.schemas.candidate.ScreeningDoc`): this campaign, the model, the single
   point and the previous model's energy, whether it was relaxed again (also one that failed
   or relaxed into another candidate) and, for those relaxed and usable, ``joins_iteration`` =
   the next iteration, so that iteration's selection
   (:func:`cspflow.prerelax.select.select_candidates`) weighs them against its own new
   candidates, every energy in the pool coming from the same model. The candidate's
   ``campaign`` stays the one that generated it.

The job (:class:`RescreenMaker`, stage ``rescreen``, gpu) returns ids and counts, and how the ranking changed: for each
formula the old model's best and the new model's best, and whether they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Job, Maker, job

from cspflow.jobs import stage_metadata
from cspflow.schemas.prerelax import PrerelaxSettings, RescreenSettings

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["rescreen_pool", "rescreen_candidates", "rescreen_job", "RescreenMaker"]

STAGE = "rescreen"
#: defaults of direct calls: the stage's settings, written once in the schema
_DEFAULTS = RescreenSettings()


def rescreen_pool(
    db: Database, campaign: str, model_id: str, chemsys: str | None = None
) -> list[dict[str, Any]]:
    """Pre-relaxed, unique candidates without DFT, not relaxed by ``model_id``: those of
    ``campaign``, and with ``chemsys`` those of every campaign of the system (or a subsystem)
    that is not running now."""
    from cspflow.store import candidates

    chemsystems = None
    campaigns: Any = campaign
    if chemsys is not None:
        from cspflow.learn.dataset import subsystems

        busy = set(db["campaigns"].distinct("name", {"state": {"$in": ["submitted", "running"]}}))
        chemsystems = subsystems(chemsys)
        campaigns = {"$nin": sorted(busy - {campaign})}
    return [
        d
        for d in candidates.rescreen_pool(db, campaigns, chemsystems)
        if d["relaxed"]["mlip"].get("model_id") != model_id
    ]


def _single_points(model: Any, docs: list[dict[str, Any]], chunk: int = 32) -> list[float | None]:
    """Energy per atom of each stored MLIP structure with ``model`` (None where it fails)."""
    import numpy as np
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    out: list[float | None] = []
    for i in range(0, len(docs), chunk):
        part = docs[i : i + chunk]
        atoms = [AseAtomsAdaptor.get_atoms(Structure.from_dict(d["relaxed"]["mlip"]["structure"]))
                 for d in part]  # fmt: skip
        try:
            evals = model.evaluate(atoms)
            energies = [e.energy / len(a) for e, a in zip(evals, atoms, strict=True)]
        except Exception:  # one bad structure must not sink the chunk: go one by one
            energies = []
            for a in atoms:
                try:
                    energies.append(model.evaluate([a], batched=False)[0].energy / len(a))
                except Exception:
                    energies.append(float("nan"))
        out.extend(None if not np.isfinite(e) else float(e) for e in energies)
    return out


def _best(rows: list[tuple[str, float]]) -> str | None:
    return min(rows, key=lambda r: (r[1], r[0]))[0] if rows else None


def rescreen_candidates(
    db: Database,
    campaign: str,
    model: str,
    *,
    next_iteration: int,
    top: int = _DEFAULTS.top,
    prerelax: dict[str, Any] | None = None,
    device: str | None = None,
    chemsys: str | None = None,
) -> dict[str, Any]:
    """Re-screen stored candidates with ``model`` (see the module docstring).

    Parameters
    ----------
    db
        The cspflow database.
    campaign
        Campaign that re-screens (its next selection takes the re-relaxed candidates).
    model
        The newly promoted model's spec (``registry:ID``).
    next_iteration
        The iteration whose selection the re-relaxed candidates join.
    top
        Per formula, how many of the best single points are relaxed again (0: single points only).
    prerelax
        :class:`~cspflow.schemas.prerelax.PrerelaxSettings` fields of the campaign's prerelax stage
        (``fmax``, ``max_steps``, ``optimizer``, ``cell_factor``, ``maxstep``, ``dispersion``
        apply; the rest keep their defaults).
    device
        ``cpu``/``cuda``/``auto`` (default: the ``device`` setting).
    chemsys
        The campaign's chemical system: candidates of other campaigns of the system (and its
        subsystems) that are not running are re-screened too (default: the campaign's only).
    """
    from cspflow.mlip import load_model
    from cspflow.prerelax.stage import prerelax_candidates
    from cspflow.schemas.candidate import ScreeningDoc
    from cspflow.schemas.fidelity import mlip_fidelity
    from cspflow.store import candidates

    dispersion = PrerelaxSettings.model_validate(prerelax or {}).dispersion
    loaded = load_model(model, device=device, db=db, dispersion=dispersion)
    pool = rescreen_pool(db, campaign, loaded.model_id, chemsys)
    energies = _single_points(loaded, pool)
    old: dict[str, list[tuple[str, float]]] = {}
    new: dict[str, list[tuple[str, float]]] = {}
    records: dict[str, ScreeningDoc] = {}
    for doc, e in zip(pool, energies, strict=True):
        cid, formula = doc["candidate_id"], doc["formula"]
        before = (doc.get("energy_per_atom") or {}).get("mlip")
        if before is not None:
            old.setdefault(formula, []).append((cid, float(before)))
        records[cid] = ScreeningDoc(
            campaign=campaign, model_id=loaded.model_id, single_point_energy_per_atom=e,
            previous_model_id=doc["relaxed"]["mlip"].get("model_id"),
            previous_energy_per_atom=before,
            fidelity=mlip_fidelity(loaded.model_id, (prerelax or {}).get("dispersion")),
        )  # fmt: skip
        if e is not None:
            new.setdefault(formula, []).append((cid, e))
    chosen = [
        cid
        for formula in sorted(new)
        for cid, _ in sorted(new[formula], key=lambda r: (r[1], r[0]))[:top]
    ]
    relaxed: list[str] = []
    failed: dict[str, str] = {}
    if chosen:
        p = PrerelaxSettings.model_validate(prerelax or {})
        summary = prerelax_candidates(
            chosen, model=model, loaded=loaded, db=db, start="mlip",
            fmax=p.fmax, max_steps=p.max_steps, optimizer=p.optimizer, dispersion=p.dispersion,
            cell_factor=p.cell_factor, maxstep=p.maxstep,
        )  # fmt: skip
        relaxed = summary.relaxed + summary.reused
        failed = summary.failed
    # whatever became of a relaxation (relaxed, failed, or relaxed into another candidate),
    # ``relaxed.mlip`` is now this model's and no longer that of the candidate's own iteration
    for cid in chosen:
        records[cid].relaxed = True
    for cid in relaxed:
        records[cid].joins_iteration = next_iteration
    candidates.add_screenings(db, records)
    changes = {
        f: {"old_best": _best(old.get(f, [])), "new_best": _best(new.get(f, []))}
        for f in sorted(set(old) | set(new))
    }
    return {
        "model": model,
        "model_id": loaded.model_id,
        "n_single_points": sum(e is not None for e in energies),
        "n_other_campaigns": sum(d.get("campaign") != campaign for d in pool),
        "relaxed": relaxed,
        "failed": failed,
        "next_iteration": next_iteration,
        "best_changed": sorted(f for f, c in changes.items() if c["old_best"] != c["new_best"]),
        "best": changes,
    }


@job
def rescreen_job(
    learned: dict[str, Any] | None,
    campaign: str,
    next_iteration: int,
    top: int = _DEFAULTS.top,
    prerelax: dict[str, Any] | None = None,
    chemsys: str | None = None,
) -> dict[str, Any]:
    """Re-screen when the learn job promoted a model; otherwise say why not."""
    from cspflow.store import get_database

    learned = learned or {}
    if not learned.get("promoted") or not learned.get("current_model"):
        return {"skipped": learned.get("reason") or "no model promoted", "relaxed": []}
    return rescreen_candidates(
        get_database(), campaign, learned["current_model"], next_iteration=next_iteration,
        top=top, prerelax=prerelax, chemsys=chemsys,
    )  # fmt: skip


@dataclass
class RescreenMaker(Maker):
    """Make the rescreen job of a campaign iteration (gpu, after its learn job).

    Parameters
    ----------
    name
        Job name.
    settings
        :class:`~cspflow.schemas.prerelax.RescreenSettings`: how many per formula are relaxed
        again, and the campaign's prerelax settings (``fmax``, ``max_steps``, ``optimizer``,
        ``cell_factor``, ``maxstep`` apply).
    """

    name: str = "rescreen"
    settings: RescreenSettings = field(default_factory=RescreenSettings)

    def make(self, learned: Any, campaign: str, iteration: int, chemsys: str | None = None) -> Job:
        """Return the job; ``learned`` is the learn job's output (re-screen when it promoted a
        model). The candidates relaxed again join iteration ``iteration + 1``'s selection."""
        p = self.settings.prerelax
        prerelax = {"fmax": p.fmax, "max_steps": p.max_steps, "optimizer": p.optimizer,
                    "cell_factor": p.cell_factor, "maxstep": p.maxstep,
                    "dispersion": p.dispersion}  # fmt: skip
        j = rescreen_job(learned, campaign, iteration + 1, self.settings.top, prerelax, chemsys)
        j.name = self.name
        j.update_metadata(stage_metadata(STAGE, campaign, iteration))
        return j
