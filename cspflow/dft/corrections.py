"""Energy corrections of DFT entries: the Materials Project 2020 scheme, for VASP only.

VASP runs with the MP preset (pymatgen's ``MPRelaxSet`` through atomate2) give GGA/GGA+U
energies that the Materials Project combines with its own data only after
``MaterialsProject2020Compatibility``: fitted anion corrections (oxide, peroxide, superoxide,
ozonide, S, F, Cl, Br, I, N, H, Se, Si, Sb, Te) and the GGA/GGA+U mixing shifts of the
transition metals run with U. This module applies that scheme, unchanged, to both sides of a
hull:

- a campaign's DFT result: :func:`entry_from_task_doc` builds the ``ComputedStructureEntry``
  emmet's ``TaskDoc`` holds (``entry`` with ``run_type``, ``hubbards``, ``potcar_spec`` and the
  final structure, as ``TaskDoc.structure_entry`` does) and :func:`correct_entry` processes it;
- reference entries: :func:`mp_reference_entries` reads the Materials Project entries pymatgen
  ships (``pymatgen/analysis/compatibility/calc_compounds.json.gz``: 423 GGA/GGA+U entries,
  stored uncorrected) and :func:`import_references` processes and stores them
  (:func:`cspflow.references.store_references`).

An entry the scheme refuses (not GGA/GGA+U, POTCARs other than MP's, a U value other than MP's,
no POTCAR information) gets ``status="refused"`` and the scheme's reason, and a corrected hull
leaves it out and lists it (:func:`cspflow.hull.update_hull`). Pure functions apart from
:func:`import_references`; no engine runs here.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError
from cspflow.schemas.dft import MP_OFFLINE_REFERENCES, CorrectionScheme, EnergyCorrectionDoc

if TYPE_CHECKING:
    from pymatgen.entries.compatibility import Compatibility
    from pymatgen.entries.computed_entries import ComputedEntry
    from pymongo.database import Database

__all__ = [
    "MP_OFFLINE",
    "compatibility",
    "entry_from_task_doc",
    "correct_entry",
    "correct_task_doc",
    "mp_reference_entries",
    "reference_entries",
    "import_references",
]

# The `references:` value of a campaign spec that means pymatgen's shipped MP entries.
MP_OFFLINE = MP_OFFLINE_REFERENCES


def compatibility(scheme: CorrectionScheme) -> Compatibility:
    """Return pymatgen's compatibility object for ``scheme`` with its default settings."""
    if scheme != "mp2020":
        raise CspflowError(f"unknown energy-correction scheme {scheme!r}; the one known is mp2020")
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility()


def entry_from_task_doc(task_doc: Any, entry_id: str | None = None) -> ComputedEntry:
    """The ``ComputedStructureEntry`` of an emmet VASP ``TaskDoc`` (object or its JSON).

    emmet's ``TaskDoc.entry`` (final energy, uncorrected, with ``run_type``, ``is_hubbard``,
    ``hubbards``, ``potcar_spec`` and ``oxide_type``) with the final structure attached, as
    ``TaskDoc.structure_entry`` builds it; older task documents without ``entry`` get it from
    ``TaskDoc.get_entry(calcs_reversed)``.

    Raises
    ------
    CspflowError
        When the document is not a VASP task document with a final structure.
    """
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    from cspflow.dft.taskdoc import as_dict

    data = as_dict(task_doc)
    structure = (data.get("output") or {}).get("structure") or data.get("structure")
    raw = data.get("entry")
    if raw is None and data.get("calcs_reversed"):
        from emmet.core.tasks import TaskDoc

        raw = TaskDoc.get_entry(data["calcs_reversed"], data.get("task_id")).as_dict()
    if raw is None or not structure:
        raise CspflowError(
            "the DFT result has no VASP task-document entry and final structure to correct "
            "(only emmet's VASP TaskDoc carries run_type, hubbards and POTCARs)"
        )
    entry = ComputedEntry.from_dict(raw)
    return ComputedStructureEntry(
        structure=Structure.from_dict(structure),
        energy=entry.uncorrected_energy,
        composition=entry.composition,
        parameters=dict(entry.parameters),
        data=dict(entry.data),
        entry_id=entry_id if entry_id is not None else entry.entry_id,
    )


def correct_entry(entry: ComputedEntry, scheme: CorrectionScheme) -> EnergyCorrectionDoc:
    """Process one entry with ``scheme`` (on a copy) and return its verdict.

    The same call as ``compatibility(scheme).process_entries([entry])`` (``clean=True``: any
    adjustments the entry carried are replaced), except that a refusal keeps the scheme's
    reason instead of dropping the entry silently.
    """
    from pymatgen.entries.compatibility import CompatibilityError

    work = copy.deepcopy(entry)
    uncorrected = float(work.uncorrected_energy_per_atom)
    try:
        with warnings.catch_warnings():
            # pymatgen warns when it guesses oxidation states; the outcome is the same
            warnings.simplefilter("ignore")
            done = compatibility(scheme).process_entry(work, on_error="raise")
    except (CompatibilityError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # KeyError/IndexError/AttributeError: no or malformed potcar_symbols / potcar_spec
        reason = str(exc).split(" for {")[0] or type(exc).__name__  # U errors append the entry
        return EnergyCorrectionDoc(
            scheme=scheme,
            status="refused",
            reason=f"{scheme} cannot process this entry: {reason}",
            uncorrected_energy_per_atom=uncorrected,
        )
    if done is None:  # pymatgen discarded it (an adjustment of the same name with another value)
        return EnergyCorrectionDoc(
            scheme=scheme,
            status="refused",
            reason=f"{scheme} discarded this entry (conflicting energy adjustments)",
            uncorrected_energy_per_atom=uncorrected,
        )
    natoms = float(done.composition.num_atoms)
    return EnergyCorrectionDoc(
        scheme=scheme,
        status="applied",
        uncorrected_energy_per_atom=uncorrected,
        correction_per_atom=float(done.correction) / natoms,
        corrected_energy_per_atom=float(done.energy_per_atom),
        adjustments=[
            {"name": adj.name, "value": float(adj.value)} for adj in done.energy_adjustments
        ],
    )


def correct_task_doc(
    task_doc: Any, scheme: CorrectionScheme, entry_id: str | None = None
) -> EnergyCorrectionDoc:
    """:func:`correct_entry` on the entry of a VASP task document; a document without one is
    refused with the reason."""
    try:
        entry = entry_from_task_doc(task_doc, entry_id)
    except (CspflowError, ValueError, KeyError, TypeError) as exc:
        return EnergyCorrectionDoc(scheme=scheme, status="refused", reason=str(exc))
    return correct_entry(entry, scheme)


def mp_reference_entries(elements: list[str] | str) -> list[ComputedEntry]:
    """The Materials Project entries pymatgen ships whose elements lie within ``elements``.

    ``calc_compounds.json.gz`` (beside ``pymatgen.analysis.compatibility``): GGA/GGA+U
    ``ComputedEntry`` objects with ``run_type``, ``hubbards`` and ``potcar_symbols``, stored
    without corrections (``correction`` 0), no structures. Sorted by entry id.
    """
    import pymatgen.analysis.compatibility as compat_pkg
    from monty.serialization import loadfn

    system = set(elements.split("-") if isinstance(elements, str) else elements)
    path = Path(compat_pkg.__file__).with_name("calc_compounds.json.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noble gases have no Pauling electronegativity
        data = loadfn(str(path))
    entries = [e for e in data.values() if {str(el) for el in e.composition.elements} <= system]
    return sorted(entries, key=lambda e: str(e.entry_id))


def reference_entries(source: str, chemsys: str) -> list[ComputedEntry]:
    """The entries of a spec's ``references``: :data:`MP_OFFLINE` or a JSON file of them."""
    if source == MP_OFFLINE:
        return mp_reference_entries(chemsys)
    from cspflow.references import read_reference_entries

    return read_reference_entries(source)


def import_references(
    source: str,
    db: Database,
    chemsys: str,
    scheme: CorrectionScheme,
    level: str = "dft",
    fidelity: dict | None = None,
) -> tuple[int, list[str]]:
    """Store reference entries processed by ``scheme`` for a corrected hull.

    ``source`` is :data:`MP_OFFLINE` (pymatgen's shipped MP entries of ``chemsys``) or a JSON
    file of pymatgen ComputedEntries (corrected or not: ``clean=True`` replaces any
    adjustments they carry, so both sides get exactly the same scheme). Refused entries are
    stored with their reason and never used; every reference is stored at ``fidelity`` (the
    campaign's Fidelity dict). Returns (entries stored, refusal reasons).
    """
    from cspflow.references import store_references

    entries = reference_entries(source, chemsys)
    docs = [correct_entry(e, scheme) for e in entries]
    store_references(db, entries, source, level=level, corrections=docs, fidelity=fidelity)
    refused = [
        f"{e.entry_id} {e.composition.reduced_formula}: {d.reason}"
        for e, d in zip(entries, docs, strict=True)
        if d.status == "refused"
    ]
    return len(entries), refused
