"""Small real jobs and helpers for cspflow's own plumbing tests (importable by workers)."""

from __future__ import annotations


def take_ids(args: tuple[str, str, int, str]) -> tuple[list[int], list[int]]:
    """Draw ``n`` launch ids and ``n`` fw ids from a LaunchPad (run in several processes at once).

    ``args`` is ``(uri, db_name, n, "cspflow" | "fireworks")``: the LaunchPad class to use.
    """
    from fireworks import LaunchPad

    from cspflow.scheduler.launchpad import CspflowLaunchPad

    uri, name, n, cls_name = args
    cls = CspflowLaunchPad if cls_name == "cspflow" else LaunchPad
    lp = cls(host=uri, name=name, uri_mode=True, strm_lvl="ERROR")
    return [lp.get_new_launch_id() for _ in range(n)], [lp.get_new_fw_id() for _ in range(n)]


def insert_candidate(
    db,
    structure,
    *,
    status: str = "selected",
    mlip_energy: float | None = None,
    mlip_structure=None,
    campaign: str = "test",
    iteration: int = 0,
) -> str:
    """Store a minimal candidate document for a stage test; return its id.

    The id doubles as ``fingerprint_hash``, so documents stay unique under the dedup index.
    """
    import uuid

    cid = f"c-{uuid.uuid4().hex[:8]}"
    comp = structure.composition
    doc = {
        "candidate_id": cid,
        "campaign": campaign,
        "iteration": iteration,
        "composition": {str(el): float(n) for el, n in comp.items()},
        "formula": comp.reduced_formula,
        "chemsys": comp.chemical_system,
        "fingerprint_hash": cid,
        "nsites": len(structure),
        "structure": structure.as_dict(),
        "status": status,
        "energy_per_atom": {"mlip": mlip_energy, "dft": None},
    }
    if mlip_structure is not None:
        doc["relaxed"] = {
            "mlip": {"structure": mlip_structure.as_dict(), "energy_per_atom": mlip_energy}
        }
    from cspflow.store import candidates

    candidates.insert_raw(db, doc)
    return cid
