"""Candidate generation (the first stage of a campaign).

Modules, in data-flow order:

- :mod:`~cspflow.generate.composition`: parse the composition, formula-unit counts that fit.
- :mod:`~cspflow.generate.sources`: random_symmetric (PyXtal), prototype, mutation, external.
- :mod:`~cspflow.generate.priors`: random_symmetric's space-group prior and Wyckoff choice.
- :mod:`~cspflow.generate.evolve`: variation operators, the niched population, adapted shares.
- :mod:`~cspflow.generate.constraints`: hard geometric constraints.
- :mod:`~cspflow.generate.batch`: one batch of unique candidates from weighted sources.
- :mod:`~cspflow.generate.maker`: the jobflow job (``GenerateMaker``).

Deduplication (fingerprints, ``find_duplicate`` / ``register`` / ``register_relaxed``, the
in-memory and MongoDB indexes) lives below the stages in :mod:`cspflow.dedup`; reading
structure files in :func:`cspflow.chem.read_structures`.

Names are imported lazily so ``import cspflow.generate`` stays cheap.
"""

from __future__ import annotations

from cspflow._lazy import lazy_exports

_EXPORTS = {
    "parse_target": "composition",
    "Target": "composition",
    "Constraints": "constraints",
    "violations": "constraints",
    "generate_batch": "batch",
    "load_parents": "batch",
    "parse_sources": "batch",
    "GenerateMaker": "maker",
    "generate_candidates": "maker",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
