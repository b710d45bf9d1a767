"""Read-only reports on a campaign: its workflow, firework states, reruns, candidates, top list.

What ``cspflow campaign run``/``status`` and ``cspflow results top`` show, and what the
campaign runner polls; nothing here writes. Every function takes an explicit database
(:func:`cspflow.store.get_database`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "campaign_workflow",
    "firework_counts",
    "rerun_summary",
    "candidate_counts",
    "TOP_SCHEMA_VERSION",
    "top_structures",
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
    from cspflow.store import candidates

    return candidates.status_counts(db, campaign)


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


def _template_label(c: dict) -> str | None:
    params = c.get("params") or {}
    if c.get("source") != "template" or "template" not in params:
        return None
    return f"{params.get('template_name')} ({params['template']})"


def top_structures(db: Database, campaign: str, n: int = 10) -> list[dict]:
    """The campaign's lowest-energy unique structures at the best fidelity, ranked.

    Each row is the stable ``results top --json`` record (see docs/results.md): rank,
    candidate_id, formula, spacegroup (number) and spacegroup_symbol, nsites, level,
    energy_per_atom (mlip/dft),
    e_above_hull, source, template (name and id for a template candidate), iteration, and the final structure (pymatgen dict).
    """
    doc = db.campaigns.find_one({"name": campaign}, {"chemsys": 1})
    if doc is None:
        raise CspflowError(
            f"no campaign named {campaign!r}; list them with `cspflow campaign status`"
        )
    from cspflow.store import candidates

    level = best_level(db, doc["chemsys"]) or "mlip"
    rows = []
    for c in candidates.usable(db, level, {"campaign": campaign}):
        relaxed = (c.get("relaxed") or {}).get(level) or {}
        spacegroup = relaxed.get("spacegroup") or c.get("spacegroup")
        rows.append(
            {
                "candidate_id": c["candidate_id"],
                "formula": c["formula"],
                "nsites": c.get("nsites"),
                "spacegroup": spacegroup,
                "spacegroup_symbol": _symbol(spacegroup),
                "level": level,
                "energy_per_atom": {
                    k: (c.get("energy_per_atom") or {}).get(k) for k in ("mlip", "dft")
                },
                "e_above_hull": c.get("e_above_hull")
                if c.get("e_above_hull_level") == level
                else None,
                "source": c.get("source"),
                # the structure type a template candidate was made from (name, id)
                "template": _template_label(c),
                "iteration": c.get("iteration"),
                "structure": relaxed.get("structure") or c.get("structure"),
            }
        )
    rows.sort(key=lambda r: (r["e_above_hull"] if r["e_above_hull"] is not None else 1e9,
                             r["energy_per_atom"][level]))  # fmt: skip
    for i, r in enumerate(rows[:n], start=1):
        r["rank"] = i
    return rows[:n]
