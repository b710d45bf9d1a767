#!/usr/bin/env python3
"""Only the owner modules touch the ``candidates`` collection (part of ``make lint``).

Candidate state is read and written through :mod:`cspflow.store.candidates` (and created,
with its dedup forms, by :mod:`cspflow.dedup`); the rest of the package calls those functions.
This check fails, naming file and line, where any other module of ``cspflow/`` reaches the
collection itself: ``db["candidates"]``, ``db.candidates``, ``get_database().candidates``,
``self.db.candidates`` (any database-like expression: a name or attribute ending in ``db`` or
``database``, or a call of a function so named).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "cspflow"
OWNERS = ("store", "dedup")  # packages allowed to touch the collection
COLLECTION = "candidates"


def _database_like(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name.lower().endswith(("db", "database"))


def _raw_accesses(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == COLLECTION:
            hit = _database_like(node.value)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            hit = node.slice.value == COLLECTION and _database_like(node.value)
        else:
            continue
        if hit:
            lines.append(node.lineno)
    return lines


def offenders(root: Path = ROOT) -> list[str]:
    """``path:line: text`` of every raw access outside the owners."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in OWNERS:
            continue
        text = path.read_text()
        source = text.splitlines()
        for n in sorted(set(_raw_accesses(ast.parse(text)))):
            out.append(f"cspflow/{rel}:{n}: {source[n - 1].strip()}")
    return out


def main() -> int:
    bad = offenders()
    for row in bad:
        print(row)
    if bad:
        print(f"error: {len(bad)} access(es) to the candidates collection outside "
              "cspflow/store and cspflow/dedup; use cspflow.store.candidates")  # fmt: skip
        return 1
    print("candidates owner check: only cspflow/store and cspflow/dedup touch the collection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
