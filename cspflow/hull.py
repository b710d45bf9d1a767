"""Convex hull of a chemical system from stored candidates (pymatgen PhaseDiagram).

One fidelity per hull, never mixed (docs/fidelity.md): a hull is keyed by its chemical system
and a fidelity key (``gpaw:PBE:fast:1a2b3c4d``, ``mlip:chgnet-0.3.0``), and built only from
candidate energies and reference entries of that fidelity. A campaign's hull is at its DFT
fidelity once one converged DFT entry of the system exists there, else at the MLIP fidelity of
its pre-relaxations. Each update is stored as a new version of that (system, fidelity) in the
``hull`` collection with the entries it used and what changed; ``e_above_hull`` is written to
every candidate that has an energy at that fidelity. A DFT hull whose fidelity carries an
energy-correction scheme (``mp2020``, VASP with the MP preset) uses the corrected energies
stored with each result and reference (:mod:`cspflow.dft.corrections`) and lists the entries
the scheme refused as ``excluded``, never mixing them in. :class:`HullMaker` makes the hull
job of a campaign iteration (:func:`hull_update`, stage ``hull``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from jobflow import Job, Maker, job

from cspflow.jobs import stage_metadata

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymongo.database import Database

__all__ = [
    "HullEntry",
    "HullResult",
    "compute_hull",
    "candidate_entries",
    "corrected_entries",
    "update_hull",
    "hull_update",
    "HullMaker",
    "latest_hull",
    "plot_hull",
    "campaign_fidelity",
    "hull_fidelities",
]

LEVELS = ("dft", "mlip")


@dataclass(frozen=True)
class HullEntry:
    """One point: a composition and its total energy per atom at one fidelity."""

    entry_id: str
    formula: str
    composition: dict[str, float]
    energy_per_atom: float
    source: str = "candidate"  # candidate | reference
    uncorrected_energy_per_atom: float | None = None  # set when energy_per_atom is corrected


@dataclass
class HullResult:
    """A computed hull: e_above_hull per entry id, the stable set and formation energies."""

    chemsys: str
    level: str
    e_above_hull: dict[str, float]
    stable: list[str]
    formation_energy_per_atom: dict[str, float]
    complete: bool
    missing_elements: list[str] = field(default_factory=list)
    phase_diagram: PhaseDiagram | None = None

    def incomplete_reason(self, fidelity: str | None = None) -> str | None:
        """Why the hull is not a full convex hull (None when it is)."""
        if self.complete:
            return None
        at = f" at fidelity {fidelity}" if fidelity else ""
        return (
            f"no energy for element(s) {', '.join(self.missing_elements)}{at}: e_above_hull is "
            "relative to the lowest structure of each composition; compute the elements at this "
            "fidelity or import references of it"
        )


def _chemsys(elements: Iterable[str]) -> str:
    return "-".join(sorted(set(elements)))


def compute_hull(
    entries: list[HullEntry], chemsys: str | None = None, level: str = "dft"
) -> HullResult:
    """Compute the hull of ``entries`` (pure function, no database).

    When an element of the system has no entry, a convex hull cannot be built; the result then
    ranks each composition against its own lowest energy (``complete=False``) and lists the
    missing elements, so a single-composition search still gets ``e_above_hull``.
    """
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    if not entries:
        raise ValueError("no entries to build a hull from")
    elements = sorted({el for e in entries for el in e.composition})
    chemsys = chemsys or _chemsys(elements)
    system = chemsys.split("-")
    have = {
        el for e in entries for el in e.composition if len(Composition(e.composition).elements) == 1
    }
    missing = sorted(set(system) - have)
    if missing:
        best: dict[str, float] = {}
        for e in entries:
            best[e.formula] = min(best.get(e.formula, float("inf")), e.energy_per_atom)
        ehull = {e.entry_id: max(0.0, e.energy_per_atom - best[e.formula]) for e in entries}
        stable = sorted(
            {min((x for x in entries if x.formula == f), key=lambda x: x.energy_per_atom).entry_id
             for f in best}
        )  # fmt: skip
        return HullResult(
            chemsys, level, ehull, stable, {}, complete=False, missing_elements=missing
        )

    pd_entries = []
    for e in entries:
        comp = Composition(e.composition)
        pd_entries.append(PDEntry(comp, e.energy_per_atom * comp.num_atoms, name=e.entry_id))
    pd = PhaseDiagram(pd_entries)
    ehull = {}
    eform = {}
    for pe in pd_entries:
        ehull[pe.name] = float(max(0.0, pd.get_e_above_hull(pe, allow_negative=True) or 0.0))
        eform[pe.name] = float(pd.get_form_energy_per_atom(pe))
    # pymatgen types stable_entries as Entry; they are the PDEntries given above
    stable = sorted(cast("PDEntry", pe).name for pe in pd.stable_entries)
    return HullResult(chemsys, level, ehull, stable, eform, complete=True, phase_diagram=pd)


def _in_system(doc: dict, system: set[str]) -> bool:
    return set(doc.get("composition", {})) <= system


def candidate_entries(
    db: Database, chemsys: str, level: str, fidelity: str | None = None
) -> list[HullEntry]:
    """Return hull entries of every usable candidate in ``chemsys`` (and its subsystems).

    The usable energies of :func:`cspflow.store.candidates.usable_query` of fidelity key
    ``fidelity`` (DFT entries converged, duplicates and failed candidates left out), and the
    reference entries of that fidelity. ``fidelity`` None: every usable energy at ``level``
    (only for databases of one fidelity; :func:`update_hull` always names one).
    """
    from cspflow.store import candidates

    system = set(chemsys.split("-"))
    entries = []
    fields = {"candidate_id": 1, "composition": 1, "formula": 1, "energy_per_atom": 1}
    for doc in candidates.usable(db, level, projection=fields, fidelity=fidelity):
        energy = candidates.energy_at(doc, level, fidelity)
        if _in_system(doc, system) and energy is not None:
            entries.append(
                HullEntry(
                    entry_id=doc["candidate_id"],
                    formula=doc["formula"],
                    composition=doc["composition"],
                    energy_per_atom=energy,
                )
            )
    query: dict[str, Any] = {"chemsys_level": level}
    if fidelity is not None:
        query["fidelity_key"] = fidelity
    for ref in db.hull_references.find(query):
        if set(ref["composition"]) <= system:
            entries.append(
                HullEntry(
                    ref["entry_id"],
                    ref["formula"],
                    ref["composition"],
                    float(ref["energy_per_atom"]),
                    source="reference",
                )  # fmt: skip
            )
    return entries


def _corrected(
    doc: dict, corr: dict | None, scheme: str, source: str
) -> tuple[HullEntry | None, dict | None]:
    """(entry at its corrected energy, None) or (None, why it is left out)."""
    if corr and corr.get("scheme") == scheme and corr.get("status") == "applied":
        entry = HullEntry(
            doc["entry_id"], doc["formula"], doc["composition"],
            float(corr["corrected_energy_per_atom"]), source=source,
            uncorrected_energy_per_atom=float(corr["uncorrected_energy_per_atom"]),
        )  # fmt: skip
        return entry, None
    if corr and corr.get("scheme") == scheme:
        reason = corr.get("reason") or f"refused by {scheme}"
    elif source == "reference":
        reason = f"reference stored without the {scheme} scheme (import it with the campaign)"
    else:
        reason = f"DFT result recorded without the {scheme} scheme"
    return None, {"entry_id": doc["entry_id"], "formula": doc["formula"], "source": source,
                  "reason": reason}  # fmt: skip


def corrected_entries(
    db: Database, chemsys: str, scheme: str, fidelity: str | None = None
) -> tuple[list[HullEntry], list[dict]]:
    """Return (hull entries, excluded) of a DFT hull with the energy-correction ``scheme``.

    Every usable DFT candidate and every reference of the system (of fidelity key ``fidelity``
    when given) enters at the corrected energy
    its ``correction`` record holds; one the scheme refused, or stored without the scheme, is
    left out and listed with the reason (``entry_id``, ``formula``, ``source``, ``reason``).
    """
    from cspflow.store import candidates

    system = set(chemsys.split("-"))
    entries: list[HullEntry] = []
    excluded: list[dict] = []
    fields = {"candidate_id": 1, "composition": 1, "formula": 1, "relaxed.dft.correction": 1}
    for doc in candidates.usable(db, "dft", projection=fields, fidelity=fidelity):
        if _in_system(doc, system):
            run = (
                candidates.dft_result_at(doc, fidelity)
                if fidelity is not None
                else (doc.get("relaxed") or {}).get("dft")
            )
            corr = (run or {}).get("correction")
            entry, why = _corrected({**doc, "entry_id": doc["candidate_id"]}, corr, scheme,
                                    "candidate")  # fmt: skip
            entries.extend([entry] if entry else [])
            excluded.extend([why] if why else [])
    query: dict[str, Any] = {"chemsys_level": "dft"}
    if fidelity is not None:
        query["fidelity_key"] = fidelity
    for ref in db.hull_references.find(query):
        if set(ref["composition"]) <= system:
            entry, why = _corrected(ref, ref.get("correction"), scheme, "reference")
            entries.extend([entry] if entry else [])
            excluded.extend([why] if why else [])
    return entries, excluded


def best_level(db: Database, chemsys: str) -> str | None:
    """Return the highest fidelity with at least one usable entry in the system, or None
    (:func:`cspflow.store.reports.best_level`)."""
    from cspflow.store.reports import best_level as _best_level

    return _best_level(db, chemsys)


def campaign_fidelity(db: Database, campaign: str) -> dict | None:
    """The DFT fidelity of a stored campaign's spec (None: no such campaign, or engine none;
    :func:`cspflow.store.reports.campaign_fidelity`)."""
    from cspflow.store.reports import campaign_fidelity as _campaign_fidelity

    return _campaign_fidelity(db, campaign)


def hull_fidelities(db: Database, chemsys: str) -> list[str]:
    """Fidelity keys of the stored hulls of ``chemsys``, sorted."""
    return sorted(k for k in db.hull.distinct("fidelity_key", {"chemsys": chemsys}) if k)


def _resolve(
    db: Database,
    chemsys: str,
    level: str | None,
    fidelity: dict | None,
    campaign: str | None,
) -> tuple[str, dict] | None:
    """The (level, fidelity) a hull update of ``chemsys`` is built at (None: no entries)."""
    from cspflow.errors import CspflowError
    from cspflow.store import candidates

    if fidelity is None and campaign is not None and level is None:
        # the campaign's DFT fidelity; engine none: the MLIP fidelity of its relaxations
        fidelity = campaign_fidelity(db, campaign) or candidates.campaign_mlip_fidelity(
            db, campaign
        )
    if fidelity is not None:
        # a named fidelity, or the campaign's: never another one's entries (a campaign whose
        # DFT all failed gets no hull rather than another functional's)
        level = fidelity.get("level", "dft")
        if fidelity["key"] in candidates.fidelity_keys(db, chemsys, level):
            return level, fidelity
        own = candidates.campaign_mlip_fidelity(db, campaign) if campaign else None
        if level == "dft" and own is not None:
            return "mlip", own  # no DFT entry at the campaign's fidelity yet: its MLIP energies
        return None
    level = level or best_level(db, chemsys)
    if level is None:
        return None
    keys = candidates.fidelity_keys(db, chemsys, level)
    if not keys:
        return None
    if len(keys) > 1:
        raise CspflowError(
            f"{chemsys} has {level} energies at {len(keys)} fidelities ({', '.join(sorted(keys))}); "
            "name the one to build a hull of"
        )
    return level, next(iter(keys.values()))


def update_hull(
    db: Database,
    chemsys: str,
    campaign: str | None = None,
    iteration: int | None = None,
    level: str | None = None,
    correction: str | None = None,
    fidelity: dict | None = None,
) -> dict | None:
    """Recompute the hull of ``chemsys`` at one fidelity, store it as a new version of that
    (system, fidelity) and write ``e_above_hull``.

    The fidelity: ``fidelity`` (a :class:`~cspflow.schemas.fidelity.Fidelity` dict) when
    given, else the campaign's DFT fidelity (from its stored spec), falling back to the MLIP
    fidelity of the campaign's pre-relaxations while no DFT entry exists at it; without either,
    the one fidelity of the system at ``level`` (several: an error naming them).

    ``correction`` (an energy-correction scheme such as ``"mp2020"``; the fidelity's own, which
    it must equal when given) applies to DFT hulls:
    entries enter at their corrected energies and those the scheme refused are listed in the
    stored ``excluded`` (:func:`corrected_entries`); an MLIP hull is never corrected.

    Idempotent per campaign iteration: when the newest version was made by the same campaign
    and iteration from the same entries (a hull job rerun after its worker died between storing
    the hull and reporting back), that version is returned and no new one is stored.

    Returns the stored hull document (None when there is nothing to build from).
    """
    resolved = _resolve(db, chemsys, level, fidelity, campaign)
    if resolved is None:
        return None
    level, fid = resolved
    key = fid["key"]
    scheme = fid.get("correction") if level == "dft" else None
    if level == "dft" and correction is not None and correction != scheme:
        from cspflow.errors import CspflowError

        raise CspflowError(
            f"the {chemsys} hull at fidelity {key} is {scheme or 'uncorrected'}; correction "
            f"{correction} belongs to another fidelity (docs/fidelity.md)"
        )
    excluded: list[dict] = []
    if scheme:
        entries, excluded = corrected_entries(db, chemsys, scheme, key)
    else:
        entries = candidate_entries(db, chemsys, level, key)
    if not entries:
        return None
    previous = latest_hull(db, chemsys, key)
    if previous is not None and _same_build(previous, entries, level, campaign, iteration, scheme):
        return previous
    result = compute_hull(entries, chemsys, level)
    version = (previous["version"] + 1) if previous else 1
    prev_stable = set(previous["stable"]) if previous and previous["level"] == level else set()
    by_id = {e.entry_id: e for e in entries}
    doc = {
        "chemsys": chemsys,
        "version": version,
        "level": level,
        "fidelity_key": key,
        "fidelity": fid,
        "correction": scheme,
        "excluded": excluded,
        "complete": result.complete,
        "missing_elements": result.missing_elements,
        "incomplete_reason": result.incomplete_reason(key),
        "campaign": campaign,
        "iteration": iteration,
        "created_at": datetime.datetime.now(datetime.UTC),
        "stable": result.stable,
        "stable_formulas": sorted({by_id[i].formula for i in result.stable}),
        "added_to_stable": sorted(set(result.stable) - prev_stable),
        "removed_from_stable": sorted(prev_stable - set(result.stable)),
        "entries": [
            {
                "entry_id": e.entry_id,
                "formula": e.formula,
                "composition": e.composition,
                "energy_per_atom": e.energy_per_atom,
                "uncorrected_energy_per_atom": e.uncorrected_energy_per_atom,
                "source": e.source,
                "e_above_hull": result.e_above_hull[e.entry_id],
                "formation_energy_per_atom": result.formation_energy_per_atom.get(e.entry_id),
            }
            for e in entries
        ],  # fmt: skip
    }
    db.hull.insert_one(doc)
    from cspflow.store import candidates

    values = {
        e.entry_id: result.e_above_hull[e.entry_id] for e in entries if e.source == "candidate"
    }
    candidates.set_hull(db, values, level, version, key)
    doc.pop("_id", None)
    return doc


@job
def hull_update(
    chemsys: str,
    campaign: str | None,
    iteration: int | None,
    after: Any = None,
    correction: str | None = None,
) -> dict | None:
    """Recompute the hull of the campaign's system; return the stored version's summary."""
    from cspflow.store import get_database

    doc = update_hull(
        get_database(), chemsys, campaign=campaign, iteration=iteration, correction=correction
    )
    if doc is None:
        return None
    return {
        "chemsys": chemsys, "version": doc["version"], "level": doc["level"],
        "fidelity_key": doc["fidelity_key"],
        "stable": doc["stable"], "stable_formulas": doc["stable_formulas"],
        "added_to_stable": doc["added_to_stable"], "complete": doc["complete"],
        "correction": doc.get("correction"), "excluded": len(doc.get("excluded") or []),
    }  # fmt: skip


@dataclass
class HullMaker(Maker):
    """Make the hull job of a campaign iteration (cpu). The hull has no settings: it uses every
    usable energy of the system at the campaign's fidelity (:func:`update_hull`).

    Parameters
    ----------
    name
        Job name.
    correction
        Energy-correction scheme of the campaign's DFT energies (``dft.correction``), or None.
    """

    name: str = "hull"
    correction: str | None = None

    def make(
        self,
        chemsys: str,
        campaign: str | None = None,
        iteration: int | None = None,
        after: Any = None,
    ) -> Job:
        """Return the job; ``after`` only orders it (the hull runs after DFT, reading nothing of
        its outputs)."""
        j = hull_update(chemsys, campaign, iteration, after=after, correction=self.correction)
        j.name = self.name
        j.config.resolve_references = False
        j.update_metadata(stage_metadata("hull", campaign, iteration), dynamic=False)
        return j


def _same_build(
    hull: dict,
    entries: list[HullEntry],
    level: str,
    campaign: str | None,
    iteration: int | None,
    correction: str | None = None,
) -> bool:
    """Was ``hull`` built by this campaign iteration from exactly these entries?"""
    if campaign is None or (hull.get("campaign"), hull.get("iteration")) != (campaign, iteration):
        return False
    if hull.get("correction") != correction:
        return False
    stored = sorted((e["entry_id"], e["energy_per_atom"]) for e in hull["entries"])
    return hull["level"] == level and stored == sorted(
        (e.entry_id, e.energy_per_atom) for e in entries
    )


def latest_hull(db: Database, chemsys: str, fidelity: str | None = None) -> dict | None:
    """Return the newest stored hull version of ``chemsys`` at fidelity key ``fidelity`` (None:
    of any fidelity, the one stored last)."""
    query: dict[str, Any] = {"chemsys": chemsys}
    if fidelity is not None:
        query["fidelity_key"] = fidelity
        return db.hull.find_one(query, {"_id": 0}, sort=[("version", -1)])
    return db.hull.find_one(query, {"_id": 0}, sort=[("created_at", -1), ("version", -1)])


def plot_hull(hull_doc: dict, path: str | Path) -> Path:
    """Draw a binary (formation energy vs fraction) or ternary hull to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from pymatgen.analysis.phase_diagram import PDEntry, PDPlotter, PhaseDiagram
    from pymatgen.core import Composition

    path = Path(path)
    elements = hull_doc["chemsys"].split("-")
    entries = hull_doc["entries"]
    if hull_doc.get("complete") and len(elements) in (2, 3):
        pd = PhaseDiagram(
            [PDEntry(Composition(e["composition"]),
                     e["energy_per_atom"] * Composition(e["composition"]).num_atoms,
                     name=e["formula"]) for e in entries]
        )  # fmt: skip
        plotter = PDPlotter(pd, backend="matplotlib", show_unstable=0.2)
        ax = plotter.get_plot(label_unstable=False)
        fig = ax.get_figure() if ax is not None and hasattr(ax, "get_figure") else plt.gcf()
        assert isinstance(fig, Figure)  # PDPlotter draws on a pyplot figure, not a subfigure
        fig.suptitle(
            f"{hull_doc['chemsys']} hull v{hull_doc['version']} "
            f"({hull_doc.get('fidelity_key') or hull_doc['level']})"
        )
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path
    # single element or incomplete system: energy above the lowest structure, per formula
    fig, ax = plt.subplots(figsize=(6, 4))
    formulas = sorted({e["formula"] for e in entries})
    for x, formula in enumerate(formulas):
        ys = sorted(e["e_above_hull"] * 1000 for e in entries if e["formula"] == formula)
        ax.scatter([x] * len(ys), ys, s=18, alpha=0.7)
        ax.scatter([x], [ys[0]], s=60, marker="*", color="k")
    ax.set_xticks(range(len(formulas)), formulas)
    ax.set_ylabel("E above lowest / hull (meV/atom)")
    ax.set_title(
        f"{hull_doc['chemsys']} v{hull_doc['version']} "
        f"({hull_doc.get('fidelity_key') or hull_doc['level']})"
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
