"""The select stage: choose which prerelaxed candidates go on to DFT.

* the pure rule :func:`select_for_dft` (per composition the lowest within an energy window, plus
  the most uncertain under a committee);
* :func:`select_candidates`, which applies it to a campaign iteration's candidates and marks
  them ``selected``; the committee is the one a learning round trained (evaluated here on the
  relaxed structures, :func:`committee_spread`) or the disagreement prerelax stored with
  ``prerelax.committee`` (the explicit override);
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
    from ase import Atoms
    from pymongo.database import Database

__all__ = [
    "select_for_dft",
    "committee_spread",
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
                out.spread[r["candidate_id"]] = float(r["committee"].get(uncertainty) or 0.0)
        out.by_formula[formula] = ids
        out.selected.extend(ids)
    return out


def committee_spread(
    db: Database, docs: Sequence[dict[str, Any]], committee: Sequence[str],
    device: str | None = None,
) -> tuple[dict[str, dict[str, float]], list[str]]:  # fmt: skip
    """Disagreement of the ``committee`` (model specs) on each candidate's relaxed structure.

    Parameters
    ----------
    db
        The cspflow database (``registry:ID`` specs load from its GridFS).
    docs
        Candidate documents with ``candidate_id`` and ``relaxed.mlip.structure``.
    committee
        Two or more model specs, e.g. :func:`cspflow.models.learned_committee`.
    device
        ``cpu``/``cuda``/``auto`` (default: the ``device`` setting).

    Returns
    -------
    spread, model_ids
        Id -> ``{"energy_std", "force_std"}`` (:func:`cspflow.mlip.committee_disagreement`)
        for every candidate with a relaxed structure whose elements all members know; and the
        members' model ids.
    """
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from cspflow.mlip import committee_disagreement, load_model

    members = [load_model(spec, device=device, db=db) for spec in committee]
    known = [m.elements for m in members if m.elements is not None]
    ids: list[str] = []
    atoms: list[Atoms] = []
    for d in docs:
        st = ((d.get("relaxed") or {}).get("mlip") or {}).get("structure")
        if not st:
            continue
        structure = Structure.from_dict(st)
        numbers = {sp.Z for sp in structure.composition.elements}
        if all(numbers <= k for k in known):  # a member cannot rank what it never saw
            ids.append(d["candidate_id"])
            atoms.append(AseAtomsAdaptor.get_atoms(structure))
    values = committee_disagreement(members, atoms) if atoms else []
    return dict(zip(ids, values, strict=True)), [m.model_id for m in members]


def select_candidates(
    campaign: str | None,
    iteration: int | None,
    *,
    top_k: int = _DEFAULTS.top_k,
    energy_window: float = _DEFAULTS.energy_window,
    n_uncertain: int = _DEFAULTS.uncertain_k,
    uncertainty: str = _DEFAULTS.uncertainty,
    candidate_ids: Sequence[str] | None = None,
    committee: Sequence[str] = (),
    db: Database | None = None,
    device: str | None = None,
) -> SelectionSummary:
    """Mark the candidates chosen by :func:`select_for_dft` as ``selected`` in the database.

    Considers prerelaxed (and already selected), non-duplicate candidates of the
    campaign/iteration, plus older ones the campaign re-screened for this iteration with a newly
    promoted model (a ``screenings`` entry of this campaign that joins this iteration; see
    :mod:`cspflow.rescreen`),
    or exactly ``candidate_ids`` when given; rerunning it is idempotent.

    With ``committee`` (two or more model specs, e.g. the committee a learning round trained:
    :func:`cspflow.models.learned_committee`) and ``n_uncertain`` > 0, the uncertain picks are
    ranked by that committee's disagreement on the relaxed structures
    (:func:`committee_spread`); without it, by the disagreement prerelax stored
    (``prerelax.committee``). The summary names the committee's model ids.
    """
    from cspflow.store import candidates

    if db is None:
        from cspflow.store import get_database

        db = get_database()
    learned = len(committee) > 1 and n_uncertain > 0
    docs = candidates.selection_pool(db, campaign, iteration, candidate_ids, structures=learned)
    spread: dict[str, dict[str, float]] = {}
    model_ids: list[str] = []
    if learned:
        spread, model_ids = committee_spread(db, docs, committee, device=device)
    # selected ones count too, so running the selection again gives the same answer
    records = [
        {
            "candidate_id": d["candidate_id"],
            "formula": d["formula"],
            "energy_per_atom": (d.get("energy_per_atom") or {}).get("mlip"),
            "committee": spread.get(d["candidate_id"])
            if learned
            else ((d.get("relaxed") or {}).get("mlip") or {}).get("committee"),
        }  # fmt: skip
        for d in docs
    ]
    summary = select_for_dft(
        records,
        top_k=top_k,
        energy_window=energy_window,
        n_uncertain=n_uncertain,
        uncertainty=uncertainty,
    )
    if learned:
        summary.committee, summary.committee_source = model_ids, "learned"
    else:
        stored = next((r["committee"] for r in records if r["committee"]), None)
        if stored is not None:
            summary.committee = list(stored.get("model_ids") or [])
            summary.committee_source = "prerelax"
    candidates.mark_selected(db, summary.selected)
    return summary


@job
def select_job(
    campaign: str | None,
    iteration: int | None,
    after: list[Any] | None = None,
    candidate_ids: list[str] | None = None,
    settings: SelectSettings | dict | None = None,
    learned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :func:`select_candidates` (what the job runs; ``after`` only orders the job after its
    inputs).

    ``learned`` (``{"chemsys": .., "fidelity": key}``): rank the uncertain picks by the
    committee the learning rounds of that system trained
    (:func:`cspflow.models.learned_committee`, looked up when the job runs); none trained yet:
    by what prerelax stored.
    """
    s = SelectSettings.model_validate(settings or {})
    committee: list[str] = []
    db = None
    if learned and s.uncertain_k > 0:
        from cspflow.models import learned_committee
        from cspflow.store import get_database

        db = get_database()
        committee = learned_committee(db, learned["chemsys"], learned.get("fidelity"))
    return select_candidates(
        campaign,
        iteration,
        top_k=s.top_k,
        energy_window=s.energy_window,
        n_uncertain=s.uncertain_k,
        uncertainty=s.uncertainty,
        candidate_ids=candidate_ids,
        committee=committee,
        db=db,
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
    learned
        ``{"chemsys": .., "fidelity": key}``: rank uncertain picks by the committee learning
        rounds trained for that system (a campaign with ``learn.enabled`` and no
        ``prerelax.committee`` passes it); None: by what prerelax stored.
    """

    name: str = "select"
    settings: SelectSettings = field(default_factory=SelectSettings)
    learned: dict[str, Any] | None = None

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
            settings=self.settings, learned=self.learned,
        )  # fmt: skip
        j.name = self.name
        j.metadata.update(stage_metadata("select", campaign, iteration))
        return j
