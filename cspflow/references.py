"""Competing-phase reference entries for hulls (the ``hull_references`` collection).

A reference is a pymatgen ComputedEntry stored at one fidelity (docs/fidelity.md): a file is
read and every entry checked against the campaign's fidelity before anything is written
(:func:`reference_documents`); entries processed by an energy-correction scheme carry its
verdict (:func:`cspflow.dft.corrections.import_references`). :mod:`cspflow.hull` reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "read_reference_entries",
    "reference_fidelity",
    "reference_documents",
    "store_reference_documents",
    "store_references",
    "load_reference_entries",
]


def read_reference_entries(path: str | Path) -> list:
    """Read a JSON file of pymatgen ComputedEntries (monty ``dumpfn``).

    Raises
    ------
    CspflowError
        When the file cannot be read as entries.
    """
    from monty.serialization import loadfn

    from cspflow.errors import CspflowError

    try:
        entries = loadfn(str(path))
    except Exception as exc:
        raise CspflowError(
            f"cannot read reference entries {path}: {exc}; give a JSON file of pymatgen "
            "ComputedEntries (monty dumpfn)"
        ) from None
    return list(entries)


def reference_fidelity(entry: Any, fidelity: dict) -> str | None:
    """Why a reference ComputedEntry cannot be at ``fidelity`` (None: it can).

    A reference names its fidelity in ``entry.data["fidelity_key"]`` (written by cspflow), or
    is recognisably Materials Project data (``parameters["run_type"]``: VASP, MP settings); its
    energy carries a correction when ``entry.correction`` is not zero. A reference with none of
    these is taken to be at the campaign's fidelity (the user's file, the user's word).
    """
    key = fidelity["key"]
    named = (getattr(entry, "data", None) or {}).get("fidelity_key")
    if named is not None:
        return None if named == key else f"it is at fidelity {named}"
    run_type = (getattr(entry, "parameters", None) or {}).get("run_type")
    if run_type is not None and fidelity.get("engine") != "vasp":
        return f"it is Materials Project VASP data (run_type {run_type})"
    correction = float(getattr(entry, "correction", 0.0) or 0.0)
    if correction != 0.0 and not fidelity.get("correction"):
        return f"its energy carries a correction ({correction:+.3f} eV) and the campaign's does not"
    if correction == 0.0 and run_type is not None and fidelity.get("correction"):
        return f"it is uncorrected and the campaign's energies carry {fidelity['correction']}"
    return None


def reference_documents(
    path: str | Path,
    fidelity: dict | None = None,
    level: str = "dft",
    entries: list | None = None,
    corrections: list | None = None,
) -> list[dict]:
    """Read a JSON file of pymatgen ComputedEntries (or take ``entries`` read from ``path``) as
    ``hull_references`` documents at ``fidelity`` (a Fidelity dict; None: an explicit unknown
    one), writing nothing.

    ``corrections`` (one :class:`~cspflow.schemas.dft.EnergyCorrectionDoc` per entry, from
    :func:`cspflow.dft.corrections.import_references`) is stored as ``correction``: a corrected
    hull uses its corrected energy and leaves refused entries out. Entries processed by the
    campaign's own scheme are at its fidelity by construction and are not checked.

    Raises
    ------
    CspflowError
        An unreadable file, or an entry that cannot be at ``fidelity``
        (:func:`reference_fidelity`): one line naming the entry and why.
    """
    from cspflow.errors import CspflowError
    from cspflow.schemas.fidelity import unknown_fidelity

    if entries is None:
        entries = read_reference_entries(path)
    fid = fidelity or unknown_fidelity("dft").model_dump()
    docs = []
    for i, entry in enumerate(entries):
        why = None if corrections is not None else reference_fidelity(entry, fid)
        if why is not None:
            raise CspflowError(
                f"reference entry {getattr(entry, 'entry_id', None) or i} "
                f"({entry.composition.reduced_formula}) in {path} cannot be at the campaign's "
                f"fidelity {fid['key']}: {why}; give references computed with the campaign's "
                "settings"
            )
        comp = entry.composition
        doc = {
            "entry_id": f"ref-{getattr(entry, 'entry_id', None) or i}",
            "formula": comp.reduced_formula,
            "composition": {str(el): float(amt) for el, amt in comp.items()},
            "energy_per_atom": float(entry.energy_per_atom),
            "chemsys_level": level,
            "fidelity_key": fid["key"],
            "fidelity": fid,
            "source_file": str(path),
        }
        if corrections is not None:
            doc["correction"] = corrections[i].model_dump()
        docs.append(doc)
    return docs


def store_reference_documents(db: Database, docs: list[dict]) -> int:
    """Upsert :func:`reference_documents` output into ``hull_references``; return how many."""
    for doc in docs:
        update: dict[str, Any] = {"$set": doc}
        if "correction" not in doc:
            update["$unset"] = {"correction": ""}
        db.hull_references.update_one(
            {"entry_id": doc["entry_id"], "fidelity_key": doc["fidelity_key"]}, update, upsert=True
        )
    return len(docs)


def store_references(
    db: Database,
    entries: list,
    source: str | Path,
    level: str = "dft",
    corrections: list | None = None,
    fidelity: dict | None = None,
) -> int:
    """Store competing-phase references for the hulls at ``level`` and ``fidelity``; return
    how many (:func:`reference_documents` checks every entry before anything is written)."""
    docs = reference_documents(source, fidelity, level, entries=entries, corrections=corrections)
    return store_reference_documents(db, docs)


def load_reference_entries(
    path: str | Path, db: Database, level: str = "dft", fidelity: dict | None = None
) -> int:
    """Import competing-phase references from a JSON file of pymatgen ComputedEntries.

    Their energies must be at the campaign's ``fidelity`` (a Fidelity dict): an entry that
    cannot be (:func:`reference_fidelity`) is a one-line error and nothing is stored
    (:func:`reference_documents` checks them all first). Each stored reference carries that
    fidelity, and only hulls of it use it; a campaign with an energy-correction scheme imports
    through :func:`cspflow.dft.corrections.import_references` instead. Returns the number stored.
    """
    return store_reference_documents(db, reference_documents(path, fidelity, level))
