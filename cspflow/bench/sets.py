"""Benchmark sets: the YAML file, its entries, and the checks run before anything starts.

The set file (YAML)::

    name: dev_set
    match: {ltol: 0.2, stol: 0.3, angle_tol: 5}
    top_k: 5
    entries:
    - composition: NaCl
      reference: dev/NaCl.cif      # relative to the set file
      max_atoms: 8                 # optional; default max(8, 2 x primitive cell atoms)

The search is told the composition and ``max_atoms`` only: never the reference's space group,
cell or prototype (the set's ``prototype``/``spacegroup`` fields are documentation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cspflow.errors import CspflowError

__all__ = [
    "MatchSpec",
    "BenchEntry",
    "BenchSet",
    "PreparedEntry",
    "load_set",
    "default_max_atoms",
]


class MatchSpec(BaseModel):
    """StructureMatcher tolerances of a set."""

    model_config = ConfigDict(extra="forbid")

    ltol: float = Field(0.2, gt=0, description="Fractional length tolerance.")
    stol: float = Field(0.3, gt=0, description="Site tolerance (fraction of (V/n)^(1/3)).")
    angle_tol: float = Field(5.0, gt=0, description="Angle tolerance (degrees).")


class BenchEntry(BaseModel):
    """One entry of a set; fields other than these (prototype, spacegroup, ...) are ignored."""

    model_config = ConfigDict(extra="allow")

    composition: str = Field(description="Formula to search.")
    reference: str = Field(description="Reference structure file, relative to the set file.")
    max_atoms: int | None = Field(None, ge=1, description="Largest cell searched.")


class BenchSet(BaseModel):
    """A benchmark set as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("bench", description="Name of the set.")
    match: MatchSpec = Field(default_factory=MatchSpec)
    top_k: int = Field(5, ge=1, description="A reference counts as found within this rank.")
    entries: list[BenchEntry] = Field(min_length=1)


class PreparedEntry(BaseModel):
    """An entry checked and resolved: formula, reference structure, max_atoms."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    formula: str
    reference_path: Path
    reference: Any  # pymatgen Structure
    max_atoms: int


def default_max_atoms(reference: Any) -> int:
    """Twice the reference's primitive cell, and at least 8 atoms."""
    return max(8, 2 * len(reference.get_primitive_structure()))


def _formula(text: str) -> str:
    from cspflow.schemas.campaign import _check_formula

    try:
        return _check_formula(str(text))
    except ValueError as exc:
        raise CspflowError(f"{exc}") from None


def load_set(
    path: str | Path, only: list[str] | None = None
) -> tuple[BenchSet, list[PreparedEntry]]:
    """Read and check a set file; every reference must be readable and of its composition.

    Raises
    ------
    CspflowError
        Missing or malformed file, an unknown element, an unreadable reference, or ``only``
        naming a composition that is not in the set.
    """
    import yaml
    from pydantic import ValidationError

    from cspflow.chem import read_structures

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CspflowError(f"cannot read benchmark set {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise CspflowError(f"{path}: malformed YAML") from None
    try:
        bset = BenchSet.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise CspflowError(f"{path}: {loc}: {err['msg']}") from None
    wanted = {_formula(o) for o in only} if only else None
    prepared = []
    for i, entry in enumerate(bset.entries):
        try:
            formula = _formula(entry.composition)
        except CspflowError as exc:
            raise CspflowError(f"{path}: entries.{i}: {exc}") from None
        if wanted is not None and formula not in wanted:
            continue
        ref_path = (path.parent / entry.reference).resolve()
        try:
            refs = read_structures(ref_path)
        except CspflowError as exc:
            raise CspflowError(
                f"{path}: entries.{i} ({formula}): cannot read reference: {exc}"
            ) from None
        if len(refs) != 1:
            raise CspflowError(
                f"{path}: entries.{i} ({formula}): reference {ref_path} holds {len(refs)} "
                "structures; give a file with one"
            )
        ref = refs[0]
        if ref.composition.reduced_formula != formula:
            raise CspflowError(
                f"{path}: entries.{i}: reference {ref_path.name} is "
                f"{ref.composition.reduced_formula}, not {formula}"
            )
        max_atoms = entry.max_atoms or default_max_atoms(ref)
        prepared.append(
            PreparedEntry(
                formula=formula, reference_path=ref_path, reference=ref, max_atoms=max_atoms
            )
        )
    if wanted is not None:
        missing = sorted(wanted - {e.formula for e in prepared})
        if missing:
            known = ", ".join(_formula(e.composition) for e in bset.entries)
            raise CspflowError(f"--only: {', '.join(missing)} not in {path} (it has {known})")
    return bset, prepared
