"""Read-only reports on a campaign: its workflow, firework states, reruns, candidates, top list.

What ``cspflow campaign run``/``status`` and ``cspflow results top`` show, and what the
campaign runner polls; nothing here writes. Every function takes an explicit database
(:func:`cspflow.store.get_database`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "campaign_workflow",
    "firework_counts",
    "rerun_summary",
    "candidate_counts",
    "relax_totals",
    "TOP_SCHEMA_VERSION",
    "top_structures",
    "campaign_fidelity",
    "choose_fidelity",
]


def campaign_workflow(db: Database, name: str) -> dict | None:
    """The FireWorks workflow document of a campaign (nodes, state), or None."""
    return db.workflows.find_one(
        {"metadata.campaign": name}, {"nodes": 1, "state": 1, "fw_states": 1, "name": 1}
    )


def firework_counts(db: Database, fw_ids: list[int]) -> dict[str, int]:
    """Number of fireworks per FireWorks state among ``fw_ids``."""
    counts: dict[str, int] = {}
    for fw in db.fireworks.find({"fw_id": {"$in": fw_ids}}, {"state": 1}):
        counts[fw["state"]] = counts.get(fw["state"], 0) + 1
    return counts


def rerun_summary(db: Database, fw_ids: list[int]) -> dict:
    """Which of ``fw_ids`` ran more than once, and the lost runs among their launches.

    A firework was rerun when FireWorks archived a launch of it (``rerun_fw``); a lost run is
    a launch that ``cspflow worker reconcile`` (or the campaign runner) found without a live
    worker and marked with why (``lost.reason``: slurm, process or heartbeat).
    """
    rerun = list(db.fireworks.find(
        {"fw_id": {"$in": fw_ids}, "archived_launches.0": {"$exists": True}},
        {"fw_id": 1, "name": 1, "archived_launches": 1},
    ))  # fmt: skip
    names = {fw["fw_id"]: fw.get("name", "") for fw in rerun}
    archived = [lid for fw in rerun for lid in fw["archived_launches"]]
    lost = [
        {"fw_id": ln["fw_id"], "name": names.get(ln["fw_id"], ""), "launch_id": ln["launch_id"],
         "reason": ln["lost"].get("reason"), "detail": ln["lost"].get("detail")}
        for ln in db.launches.find({"launch_id": {"$in": archived}, "lost": {"$exists": True}},
                                   {"launch_id": 1, "fw_id": 1, "lost": 1})
    ]  # fmt: skip
    return {
        "fireworks_rerun": len(rerun),
        "archived_launches": len(archived),
        "lost_runs": len(lost),
        "rerun": [
            {
                "fw_id": fw["fw_id"],
                "name": fw.get("name", ""),
                "runs": 1 + len(fw["archived_launches"]),
            }
            for fw in rerun
        ],  # fmt: skip
        "lost": lost,
    }


def candidate_counts(db: Database, campaign: str) -> dict[str, int]:
    """Number of a campaign's candidates per status."""
    from cspflow.store import candidate_stats

    return candidate_stats.status_counts(db, campaign)


def relax_totals(db: Database, campaign: str) -> dict[str, Any]:
    """How a campaign's MLIP relaxations ended (converged / pruned / failed) and their total
    steps, model evaluations and wall time (:func:`cspflow.store.candidate_stats.relax_stats`)."""
    from cspflow.store import candidate_stats

    return candidate_stats.relax_stats(db, campaign)


#: 2: ``spacegroup`` is a number at every level (it was the symbol at MLIP level), with
#: ``spacegroup_symbol`` beside it
TOP_SCHEMA_VERSION = 2


def best_level(db: Database, chemsys: str) -> str | None:
    """The highest fidelity (``dft``, then ``mlip``) with a usable entry in the system (its
    subsystems included): a candidate's usable energy or a reference entry; None without."""
    from cspflow.store import candidates

    system = set(chemsys.split("-"))
    for level in ("dft", "mlip"):
        if any(set(d.get("composition", {})) <= system
               for d in candidates.usable(db, level, projection={"composition": 1})):  # fmt: skip
            return level
        refs = db.hull_references.find({"chemsys_level": level}, {"composition": 1})
        if any(set(r["composition"]) <= system for r in refs):
            return level
    return None


def _symbol(number: int | None) -> str | None:
    from pymatgen.symmetry.groups import SpaceGroup

    return SpaceGroup.from_int_number(number).symbol if number else None


def campaign_fidelity(db: Database, campaign: str) -> dict | None:
    """The DFT fidelity of a stored campaign's spec (None: no such campaign, or engine none)."""
    from cspflow.schemas.dft import DftSpec

    doc = db.campaigns.find_one({"name": campaign}, {"spec.dft": 1})
    if doc is None:
        return None
    dft = {k: v for k, v in ((doc.get("spec") or {}).get("dft") or {}).items() if k != "budget"}
    fid = DftSpec.model_validate(dft).fidelity()
    return fid.model_dump() if fid is not None else None


def choose_fidelity(
    db: Database, campaign: str, chemsys: str, requested: str | None = None
) -> str | None:
    """The fidelity key whose hull ``results hull|top`` show for a campaign.

    ``requested`` (``--fidelity``) when a hull of ``chemsys`` exists at it; else the campaign's
    own (its DFT fidelity, else the MLIP fidelity of its relaxations) when a hull exists at it;
    else the only fidelity with a hull. None when the system has no hull yet.

    Raises
    ------
    CspflowError
        An unknown ``requested`` key, or several hulls and none of the campaign's own: one
        line listing the fidelities to choose from.
    """
    from cspflow.store import candidates

    keys = sorted(k for k in db.hull.distinct("fidelity_key", {"chemsys": chemsys}) if k)
    choices = ", ".join(keys) or "none"
    if requested is not None:
        if requested not in keys:
            raise CspflowError(
                f"no {chemsys} hull at fidelity {requested!r}; fidelities with a hull: {choices}"
            )
        return requested
    if not keys:
        return None
    own = [campaign_fidelity(db, campaign), candidates.campaign_mlip_fidelity(db, campaign)]
    for fid in own:
        if fid is not None and fid["key"] in keys:
            return str(fid["key"])
    if len(keys) == 1:
        return keys[0]
    raise CspflowError(
        f"{chemsys} has hulls at {len(keys)} fidelities and none at campaign {campaign!r}'s own; "
        f"pick one with --fidelity: {choices}"
    )


def _template_label(c: dict) -> str | None:
    params = c.get("params") or {}
    if c.get("source") != "template" or "template" not in params:
        return None
    return f"{params.get('template_name')} ({params['template']})"


def top_structures(
    db: Database, campaign: str, n: int = 10, fidelity: str | None = None
) -> list[dict]:
    """The campaign's lowest-energy unique structures at one fidelity, ranked.

    The fidelity is :func:`choose_fidelity`'s (``fidelity`` when given); its latest hull gives
    ``e_above_hull``. The campaign's structures are those it generated and, at DFT level, those
    whose DFT result at that fidelity it ran. Each row is the stable ``results top --json``
    record (see docs/results.md): rank, candidate_id, formula, spacegroup (number) and
    spacegroup_symbol, nsites, level, fidelity_key, energy_per_atom (mlip/dft, the DFT one
    of that fidelity), e_above_hull, source, template (name and id for a template candidate),
    iteration, and the final structure (pymatgen dict).
    """
    doc = db.campaigns.find_one({"name": campaign}, {"chemsys": 1})
    if doc is None:
        raise CspflowError(
            f"no campaign named {campaign!r}; list them with `cspflow campaign status`"
        )
    from cspflow.store import candidates

    key = choose_fidelity(db, campaign, doc["chemsys"], fidelity)
    hull = None
    if key is not None:
        hull = db.hull.find_one({"chemsys": doc["chemsys"], "fidelity_key": key},
                                {"level": 1, "entries": 1}, sort=[("version", -1)])  # fmt: skip
    level = hull["level"] if hull else (best_level(db, doc["chemsys"]) or "mlip")
    ehull = {e["entry_id"]: e["e_above_hull"] for e in (hull or {}).get("entries", [])}
    where: dict = {"campaign": campaign}
    if key is not None and level == "dft":
        where = {"$or": [{"campaign": campaign}, {"relaxed.dft_by_fidelity.campaign": campaign}]}
    rows = []
    for c in candidates.usable(db, level, where, fidelity=key):
        if level == "dft" and key is not None:
            relaxed = candidates.dft_result_at(c, key) or {}
        else:
            relaxed = (c.get("relaxed") or {}).get(level) or {}
        spacegroup = relaxed.get("spacegroup") or c.get("spacegroup")
        energies = {k: (c.get("energy_per_atom") or {}).get(k) for k in ("mlip", "dft")}
        energies[level] = candidates.energy_at(c, level, key)
        rows.append(
            {
                "candidate_id": c["candidate_id"],
                "formula": c["formula"],
                "nsites": c.get("nsites"),
                "spacegroup": spacegroup,
                "spacegroup_symbol": _symbol(spacegroup),
                "level": level,
                "fidelity_key": key,
                "energy_per_atom": energies,
                "e_above_hull": ehull.get(c["candidate_id"]) if hull else (
                    c.get("e_above_hull") if c.get("e_above_hull_level") == level else None),
                "source": c.get("source"),
                # the structure type a template candidate was made from (name, id)
                "template": _template_label(c),
                "iteration": c.get("iteration"),
                "structure": relaxed.get("structure") or c.get("structure"),
            }
        )  # fmt: skip
    rows.sort(key=lambda r: (r["e_above_hull"] if r["e_above_hull"] is not None else 1e9,
                             r["energy_per_atom"][level]))  # fmt: skip
    for i, r in enumerate(rows[:n], start=1):
        r["rank"] = i
    return rows[:n]
