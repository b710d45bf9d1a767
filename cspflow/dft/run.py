"""Run DFT on structure files without a campaign (what ``cspflow dft relax`` calls).

The same engine jobs as the stage (:func:`cspflow.dft.stage.build_engine_job`), run locally with
an in-memory JobStore; results go to CIF files and a JSON summary instead of the database.
Structure files are read by :func:`cspflow.chem.read_named_structures`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError
from cspflow.jobs import stage_metadata

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["relax_structures"]


def relax_structures(
    structures: list[tuple[str, Structure]],
    spec: dict[str, Any],
    out: Path,
    on_done: Callable[[str], None] | None = None,
    on_task_doc: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the engine job for each structure; write ``<name>.cif`` for converged results.

    ``on_task_doc(name, doc)`` receives each engine task document as plain JSON
    (:func:`cspflow.dft.taskdoc.as_dict`; ``{}`` when the job raised), e.g. to read its ionic
    steps with :func:`cspflow.dft.taskdoc.ionic_steps`.

    Raises
    ------
    CspflowError
        When the engine cannot run at all here (the same one-line reason for every structure).
    """
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    from cspflow.dft.presets import resolve_settings, settings_hash
    from cspflow.dft.stage import build_engine_job
    from cspflow.dft.taskdoc import result_from_task_doc
    from cspflow.schemas.dft import DftSpec
    from cspflow.settings import get_settings

    dspec = DftSpec.model_validate({k: v for k, v in spec.items() if v is not None})
    preset, settings = resolve_settings(dspec)
    cs = get_settings()
    out = Path(out)
    runs = out / "runs"  # created with the first job that runs: a refused run leaves no trace
    results: list[dict[str, Any]] = []
    preflight_errors: list[str] = []
    for name, structure in structures:
        row: dict[str, Any] = {
            "name": name,
            "formula": structure.composition.reduced_formula,
            "nsites": len(structure),
            "settings_hash": settings_hash(structure, dspec.engine, preset, settings),
        }
        start = time.perf_counter()
        try:
            engine_job = build_engine_job(dspec, settings, structure, cs)
        except CspflowError as exc:
            preflight_errors.append(str(exc))
            row.update(status="failed", reason=str(exc))
            results.append(row)
            if on_done:
                on_done(name)
            continue
        engine_job.update_metadata(stage_metadata("dft"))
        runs.mkdir(parents=True, exist_ok=True)
        store = JobStore(MemoryStore())
        responses = run_locally(
            engine_job, store=store, create_folders=True, root_dir=runs, log=False
        )
        response = responses.get(engine_job.uuid, {})
        doc = response[max(response)].output if response else None
        row.update(result_from_task_doc(doc, settings.get("relax")))
        if on_task_doc:
            from cspflow.dft.taskdoc import as_dict

            on_task_doc(name, as_dict(doc))
        if dspec.correction and row["status"] == "converged":
            from cspflow.dft.corrections import correct_task_doc

            row["correction"] = correct_task_doc(doc, dspec.correction, name).model_dump()
        row["wall_time_s"] = round(time.perf_counter() - start, 2)
        if row.get("structure") and row["status"] != "failed":
            from pymatgen.core import Structure

            cif = out / f"{name}.cif"
            Structure.from_dict(row["structure"]).to(filename=str(cif))
            row["cif"] = str(cif)
        row.pop("structure", None)
        results.append(row)
        if on_done:
            on_done(name)
    if structures and len(preflight_errors) == len(structures) and len(set(preflight_errors)) == 1:
        raise CspflowError(preflight_errors[0])
    return {
        "engine": dspec.engine,
        "preset": preset,
        "correction": dspec.correction,
        "dispersion": dspec.dispersion,
        "settings": settings,
        "results": results,
    }
