"""The select stage: choose which prerelaxed candidates go on to DFT.

* the pure rule :func:`select_for_dft` (per composition the lowest within an energy window, plus
  the most uncertain under a committee);
* :func:`select_candidates`, which applies it to a campaign iteration's candidates and marks
  them ``selected``;
* the job :func:`select_job` and its Maker :class:`SelectMaker` (``stage_metadata("select")``,
  cpu).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Job, Maker, job

from cspflow.jobs import stage_metadata
from cspflow.schemas.prerelax import SelectionSummary, SelectSettings

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "select_for_dft",
    "select_candidates",
    "select_job",
    "SelectMaker",
]

#: defaults of direct calls: the stage's settings, written once in the schema
_DEFAULTS = SelectSettings()


def select_for_dft(
    records: Iterable[dict[str, Any]],
    *,
    top_k: int = _DEFAULTS.top_k,
    energy_window: float = _DEFAULTS.energy_window,
    n_uncertain: int = _DEFAULTS.uncertain_k,
    uncertainty: str = _DEFAULTS.uncertainty,
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


def select_candidates(
    campaign: str | None,
    iteration: int | None,
    *,
    top_k: int = _DEFAULTS.top_k,
    energy_window: float = _DEFAULTS.energy_window,
    n_uncertain: int = _DEFAULTS.uncertain_k,
    uncertainty: str = _DEFAULTS.uncertainty,
    candidate_ids: Sequence[str] | None = None,
    db: Database | None = None,
) -> SelectionSummary:
    """Mark the candidates chosen by :func:`select_for_dft` as ``selected`` in the database.

    Considers prerelaxed (and already selected), non-duplicate candidates of the
    campaign/iteration, plus older ones the campaign re-screened for this iteration with a newly
    promoted model (a ``screenings`` entry of this campaign that joins this iteration; see
    :mod:`cspflow.rescreen`),
    or exactly ``candidate_ids`` when given; rerunning it is idempotent.
    """
    from cspflow.store import candidates

    if db is None:
        from cspflow.store import get_database

        db = get_database()
    # selected ones count too, so running the selection again gives the same answer
    records = [
        {
            "candidate_id": d["candidate_id"],
            "formula": d["formula"],
            "energy_per_atom": (d.get("energy_per_atom") or {}).get("mlip"),
            "committee": ((d.get("relaxed") or {}).get("mlip") or {}).get("committee"),
        }
        for d in candidates.selection_pool(db, campaign, iteration, candidate_ids)
    ]
    summary = select_for_dft(
        records,
        top_k=top_k,
        energy_window=energy_window,
        n_uncertain=n_uncertain,
        uncertainty=uncertainty,
    )
    candidates.mark_selected(db, summary.selected)
    return summary


@job
def select_job(
    campaign: str | None,
    iteration: int | None,
    after: list[Any] | None = None,
    candidate_ids: list[str] | None = None,
    settings: SelectSettings | dict | None = None,
) -> dict[str, Any]:
    """Run :func:`select_candidates` (what the job runs; ``after`` only orders the job after its
    inputs)."""
    s = SelectSettings.model_validate(settings or {})
    return select_candidates(
        campaign,
        iteration,
        top_k=s.top_k,
        energy_window=s.energy_window,
        n_uncertain=s.uncertain_k,
        uncertainty=s.uncertainty,
        candidate_ids=candidate_ids,
    ).model_dump()


@dataclass
class SelectMaker(Maker):
    """Pick the candidates of a campaign iteration that go on to DFT (cpu).

    Parameters
    ----------
    name
        Job name.
    settings
        The stage's :class:`~cspflow.schemas.prerelax.SelectSettings`; a campaign passes its
        spec's ``select`` block.
    """

    name: str = "select"
    settings: SelectSettings = field(default_factory=SelectSettings)

    def make(
        self,
        campaign: str | None = None,
        iteration: int | None = None,
        prerelax_outputs: list[Any] | None = None,
        candidate_ids: list[str] | None = None,
    ) -> Job:
        """Return the select job; pass the prerelax jobs' outputs to run after them."""
        j = select_job(
            campaign, iteration, after=prerelax_outputs or [], candidate_ids=candidate_ids,
            settings=self.settings,
        )  # fmt: skip
        j.name = self.name
        j.metadata.update(stage_metadata("select", campaign, iteration))
        return j
