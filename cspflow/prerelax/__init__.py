"""MLIP pre-relaxation of candidate batches, safety filters, committee disagreement, selection.

Three layers, as elsewhere in cspflow:

- :mod:`~cspflow.prerelax.relax`: pure functions on pymatgen/ASE objects, no database:
  :func:`~cspflow.prerelax.relax.check_geometry`,
  :func:`~cspflow.prerelax.relax.relax_structures` (a batch relaxed in lock step) and
  :func:`~cspflow.prerelax.relax.deduplicate_batch`.
- :mod:`~cspflow.prerelax.stage`: the database stage
  :func:`~cspflow.prerelax.stage.prerelax_candidates` and its jobflow Maker
  :class:`~cspflow.prerelax.stage.PrerelaxMaker` (``metadata={"stage": "prerelax"}``, routed to
  gpu workers).
- :mod:`~cspflow.prerelax.select`: :func:`~cspflow.prerelax.select.select_for_dft` (pure),
  :func:`~cspflow.prerelax.select.select_candidates` and
  :class:`~cspflow.prerelax.select.SelectMaker` (``{"stage": "select"}``, cpu).

Models come from :mod:`cspflow.mlip`, the only module that imports torch. Names are imported
lazily so ``import cspflow.prerelax`` stays cheap; jobs and Makers are serialised under their
submodule (e.g. ``cspflow.prerelax.stage``).
"""

from __future__ import annotations

from cspflow._lazy import lazy_exports

_EXPORTS = {
    "RelaxOutcome": "relax",
    "check_geometry": "relax",
    "relax_structures": "relax",
    "deduplicate_batch": "relax",
    "prerelax_candidates": "stage",
    "prerelax_job": "stage",
    "PrerelaxMaker": "stage",
    "select_for_dft": "select",
    "select_candidates": "select",
    "select_job": "select",
    "SelectMaker": "select",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
