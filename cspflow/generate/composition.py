"""Parse a user's composition and work out the cells that fit ``max_atoms``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cspflow.errors import CspflowError

__all__ = ["Target", "parse_target"]

_TOKEN = re.compile(r"([A-Z][a-z]*)(\d*)")


@dataclass(frozen=True)
class Target:
    """A composition to search and the largest cell allowed.

    Parameters
    ----------
    formula_unit
        Element -> integer amount in one formula unit (reduced), in the order written.
    max_atoms
        Largest number of atoms in a generated cell.
    """

    formula_unit: dict[str, int]
    max_atoms: int

    @property
    def atoms_per_fu(self) -> int:
        """Atoms in one formula unit."""
        return sum(self.formula_unit.values())

    @property
    def formula(self) -> str:
        """Reduced formula (pymatgen's spelling, e.g. ``MgAl2O4``)."""
        from pymatgen.core import Composition

        return Composition(self.formula_unit).reduced_formula

    @property
    def chemsys(self) -> str:
        """Elements sorted alphabetically, joined by ``-``."""
        return "-".join(sorted(self.formula_unit))

    @property
    def species(self) -> list[str]:
        """Elements in the order written."""
        return list(self.formula_unit)

    @property
    def fu_counts(self) -> list[int]:
        """Every formula-unit count whose cell fits ``max_atoms``."""
        return list(range(1, self.max_atoms // self.atoms_per_fu + 1))

    def num_ions(self, fu: int) -> list[int]:
        """Atoms of each species in a cell of ``fu`` formula units."""
        return [fu * n for n in self.formula_unit.values()]


def parse_target(composition: str, max_atoms: int) -> Target:
    """Validate a composition string and ``max_atoms``.

    Parameters
    ----------
    composition
        A formula such as ``MgAl2O4``, ``SrTiO3`` or ``Si`` (integer amounts; it is reduced).
    max_atoms
        Largest cell; at least one formula unit must fit.

    Raises
    ------
    CspflowError
        On an empty or malformed formula, an unknown element, ``max_atoms < 1``, or a formula
        unit larger than ``max_atoms``.
    """
    from math import gcd

    from pymatgen.core.periodic_table import Element

    if max_atoms < 1:
        raise CspflowError(
            f"--max-atoms must be at least 1 (got {max_atoms}); pass a positive cell size"
        )
    text = composition.replace(" ", "")
    if not text or _TOKEN.sub("", text):
        raise CspflowError(
            f"cannot read the composition {composition!r}; write it as element symbols with "
            "integer amounts, e.g. MgAl2O4"
        )
    amounts: dict[str, int] = {}
    for symbol, count in _TOKEN.findall(text):
        if not Element.is_valid_symbol(symbol):
            raise CspflowError(
                f"unknown element {symbol!r} in {composition!r}; use element symbols such as "
                "Mg, Al, O (case matters)"
            )
        amounts[symbol] = amounts.get(symbol, 0) + (int(count) if count else 1)
    if any(v == 0 for v in amounts.values()):
        raise CspflowError(f"zero amount in {composition!r}; leave out elements that are absent")
    divisor = 0
    for v in amounts.values():
        divisor = gcd(divisor, v)
    fu = {el: v // divisor for el, v in amounts.items()}
    target = Target(formula_unit=fu, max_atoms=max_atoms)
    if target.atoms_per_fu > max_atoms:
        raise CspflowError(
            f"one formula unit of {target.formula} has {target.atoms_per_fu} atoms, more than "
            f"--max-atoms {max_atoms}; raise --max-atoms to at least {target.atoms_per_fu}"
        )
    return target
