"""The DFT stage: one idempotent DFT job per selected candidate, results on the candidate.

Layers, top down:

- :class:`DftStageMaker` makes the fan-out job; at run time it replaces itself with one
  :func:`dft_candidate` job per candidate id (``Response(replace=Flow([...]))``).
- :func:`dft_candidate` loads the candidate, keys the work by its fidelity
  (:meth:`~cspflow.schemas.dft.DftSpec.fidelity`) and
  :func:`~cspflow.dft.presets.settings_hash`, and either returns the stored converged result
  of that fidelity (no code runs; a result of another fidelity never stands in for it, except
  the same calculation stored under another correction scheme, which is re-corrected and
  stored at this fidelity), marks the candidate failed with a one-line reason (missing
  program, unknown element, ...), or replaces itself with the engine's atomate2 job followed by
  :func:`record_dft`.
- :func:`record_dft` turns the engine's task document into a :class:`DftResultDoc` (through
  :func:`cspflow.dft.taskdoc.result_from_task_doc`) and writes it
  to ``candidates.relaxed.dft``; ``energy_per_atom.dft`` is set for converged runs only. It runs
  even when the engine job failed (``on_missing_references=none``), so a failed candidate is
  marked failed and the other candidates go on. With an energy-correction scheme
  (``dft.correction``, VASP only) a converged result also gets its
  :class:`~cspflow.schemas.dft.EnergyCorrectionDoc` (:func:`attach_correction`); the stored
  ``energy`` stays the engine's.

Every job carries ``metadata={"stage": "dft", ...}`` (routed to the cpu workers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Job, Maker, OnMissing, Response, job

from cspflow.dft.presets import resolve_settings, settings_hash
from cspflow.dft.taskdoc import result_from_task_doc
from cspflow.errors import CspflowError
from cspflow.jobs import stage_metadata
from cspflow.schemas.dft import CorrectionScheme, DftResultDoc, DftSpec
from cspflow.schemas.fidelity import Fidelity

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymongo.database import Database

    from cspflow.settings import CspflowSettings

__all__ = [
    "DftStageMaker",
    "dft_fanout",
    "dft_candidate",
    "record_dft",
    "input_structure",
    "build_engine_job",
    "write_result",
    "final_energy_per_atom",
    "attach_correction",
]

STAGE = "dft"
# custodian polls its job every 10 s by default, a floor on every DFT run; 2 s costs nothing and
# keeps the monitors' period (polling_time_step x monitor_freq) at custodian's default 300 s.
CUSTODIAN_KWARGS = {"polling_time_step": 2, "monitor_freq": 150}


def input_structure(candidate: dict) -> Structure:
    """Return the DFT input: the MLIP-relaxed structure when present, else the generated one."""
    from pymatgen.core import Structure

    relaxed = (candidate.get("relaxed") or {}).get("mlip") or {}
    data = relaxed.get("structure") or candidate.get("structure")
    if not data:
        raise CspflowError(f"candidate {candidate.get('candidate_id')} has no structure")
    return Structure.from_dict(data)


def write_result(db: Database, candidate_id: str, result: DftResultDoc) -> None:
    """Store ``result`` (:func:`cspflow.store.candidates.set_dft_result`: only a converged run
    is usable) and, for a converged structure, deduplicate it against other DFT results of its
    fidelity."""
    from cspflow.schemas.fidelity import unknown_fidelity
    from cspflow.store import candidates

    if result.fidelity is None:  # a result made without a spec: an explicit unknown fidelity
        fid = unknown_fidelity("dft", result.engine, result.preset)
        result = result.model_copy(update={"fidelity": fid})
    candidates.set_dft_result(db, candidate_id, result)
    if result.usable and result.structure:
        dedup_dft(db, candidate_id, result)


def dedup_dft(db: Database, candidate_id: str, result: DftResultDoc) -> str | None:
    """File the DFT-relaxed structure; when it is another DFT result's structure, mark the
    higher-energy of the two ``duplicate_of`` the lower (two candidates often relax to the
    same minimum, and the hull and the top list should show it once). Returns the duplicate
    candidate's id, or None."""
    from pymatgen.core import Structure

    from cspflow.dedup.index import register_relaxed
    from cspflow.store import candidates

    assert result.structure is not None  # write_result passes results with a structure
    assert result.fidelity is not None  # the stage gives every result its fidelity
    key = result.fidelity.key
    structure = Structure.from_dict(result.structure)
    other = register_relaxed(
        db, candidate_id, structure, "dft", result.energy_per_atom, fidelity=key
    )
    if other is None:
        return None
    doc = candidates.get_many(db, [other], {"relaxed.dft_by_fidelity": 1, "duplicate_of": 1})
    theirs_run = candidates.dft_result_at(doc.get(other, {}), key) or {}
    if (
        theirs_run.get("status") != "converged"
        or theirs_run.get("duplicate_of") is not None
        or doc.get(other, {}).get("duplicate_of") is not None
    ):
        return None  # it matched a form that is not a usable DFT result at this fidelity
    theirs = theirs_run.get("energy_per_atom")
    mine = result.energy_per_atom
    loser, winner = (
        (other, candidate_id) if theirs is not None and mine is not None and mine < theirs
        else (candidate_id, other)
    )  # fmt: skip
    candidates.mark_dft_duplicate(db, loser, winner, key)
    return loser


def final_energy_per_atom(candidate: dict, engine: str) -> float | None:
    """The energy a hull or training set may use: DFT when converged, MLIP when engine is none."""
    energies = candidate.get("energy_per_atom") or {}
    if engine == "none":
        return energies.get("mlip")
    dft = (candidate.get("relaxed") or {}).get("dft") or {}
    if dft.get("status") != "converged":
        return None
    return energies.get("dft")


def build_engine_job(
    spec: DftSpec, settings: dict[str, Any], structure: Structure, cs: CspflowSettings
) -> Job:
    """Check that the engine can run here, then return its atomate2 job for ``structure``.

    Raises
    ------
    CspflowError
        One line naming what is missing (program, command, setups, basis for an element).
    """
    if structure.properties:
        # labels of another calculation (a structure read from an ionic step or an extxyz with
        # energies) would ride along into the engine's atoms and break its task document
        structure = structure.copy()
        structure.properties = {}
    elements = [el.symbol for el in structure.composition.elements]
    relax = settings.get("relax", "cell")
    maker: Any
    if spec.engine == "vasp":
        from cspflow.dft.vasp import VaspDftMaker, check_vasp

        check_vasp(cs.vasp_cmd, elements, spec.potcar_spec)
        maker = VaspDftMaker(
            name=f"vasp {relax}",
            settings=settings,
            run_vasp_kwargs={
                "vasp_cmd": cs.vasp_cmd,
                "vasp_gamma_cmd": cs.vasp_cmd,
                "custodian_kwargs": dict(CUSTODIAN_KWARGS),
            },
            write_input_set_kwargs={"potcar_spec": spec.potcar_spec},
            stop_children_kwargs={"handle_unsuccessful": False},
        )
        return maker.make(structure)
    if spec.engine == "cp2k":
        from cspflow.dft.cp2k import (
            Cp2kDftMaker,
            check_cp2k_cmd,
            ensure_cp2k_data,
            find_basis_and_potential,
        )

        check_cp2k_cmd(cs.cp2k_cmd)
        data_dir = ensure_cp2k_data(cs.data_dir)
        if settings.get("basis"):
            find_basis_and_potential(elements, data_dir, settings["basis"], settings["potential"])
        maker = Cp2kDftMaker(
            name=f"cp2k {relax}",
            settings=settings,
            data_dir=str(data_dir),
            run_cp2k_kwargs={"cp2k_cmd": cs.cp2k_cmd, "custodian_kwargs": dict(CUSTODIAN_KWARGS)},
            stop_children_kwargs={"handle_unsuccessful": False},
        )
        return maker.make(structure)
    if spec.engine == "gpaw":
        from cspflow.dft.gpaw import GpawRelaxMaker, check_gpaw, gpaw_setup_dir

        calc = dict(settings.get("calculator", {}))
        setup_dir = gpaw_setup_dir(cs.gpaw_setup_path)
        check_gpaw(elements, setup_dir, calc.get("xc", "PBE"))
        if settings.get("dispersion"):
            from cspflow.dft.dispersion import check_dftd3

            check_dftd3(calc.get("xc", "PBE"))
        maker = GpawRelaxMaker(
            name=f"gpaw {relax}",
            ecut=float(settings["ecut"]),
            kpoint_density=float(settings["kpoint_density"]),
            setup_dir=str(setup_dir),
            calculator_kwargs=calc,
            dispersion=settings.get("dispersion"),
            relax_cell=relax == "cell",
            steps=0 if relax == "static" else int(settings["steps"]),
            relax_kwargs={"fmax": float(settings["fmax"])},
        )
        return maker.make(structure)
    raise CspflowError(f"dft.engine {spec.engine!r} runs no DFT")


def _header(
    candidate_id: str, spec: DftSpec, preset: str, shash: str, campaign: str | None
) -> dict[str, Any]:
    fidelity = spec.fidelity()
    return {
        "candidate_id": candidate_id,
        "campaign": campaign,
        "engine": spec.engine,
        "preset": preset,
        "settings_hash": shash,
        "dispersion": spec.dispersion,
        "fidelity": fidelity.model_dump() if fidelity is not None else None,
    }


def attach_correction(
    result: DftResultDoc, task_doc: Any, scheme: CorrectionScheme | None, candidate_id: str
) -> DftResultDoc:
    """``result`` with the correction ``scheme`` applied to its task document's entry
    (:func:`cspflow.dft.corrections.correct_task_doc`); unchanged when there is no scheme or
    the run did not converge."""
    if scheme is None or not result.usable:
        return result
    from cspflow.dft.corrections import correct_task_doc

    return result.model_copy(
        update={"correction": correct_task_doc(task_doc, scheme, candidate_id)}
    )


@job
def record_dft(
    task_doc: Any,
    candidate_id: str,
    header: dict,
    task_uuid: str,
    relax: str,
    started: float,
    correction: CorrectionScheme | None = None,
) -> DftResultDoc:
    """Write the engine's outcome to the candidate (runs even when the engine job failed).

    ``task_doc`` arrives unresolved (``resolve_references=False``) and is read from the store
    as plain JSON: re-validating atomate2 0.1.5's CP2K TaskDocument would crash on
    spin-restricted runs, and the recorder only needs a few fields.
    """
    from jobflow import CURRENT_JOB, OutputReference

    from cspflow.settings import get_settings
    from cspflow.store import get_database

    if isinstance(task_doc, OutputReference):
        task_doc = task_doc.resolve(CURRENT_JOB.store, on_missing=OnMissing.NONE, deserialize=False)
    fields = result_from_task_doc(task_doc, relax)
    if fields.get("wall_time_s") is None:
        fields["wall_time_s"] = round(time.time() - started, 2)
    result = DftResultDoc(**header, **fields, task_uuid=task_uuid if task_doc is not None else None)
    result = attach_correction(result, task_doc, correction, candidate_id)
    write_result(get_database(get_settings()), candidate_id, result)
    return result


@job
def dft_candidate(
    candidate_id: str, spec: dict, campaign: str | None = None, iteration: int | None = None
) -> DftResultDoc | Response:
    """Run (or reuse) DFT for one candidate; see the module docstring."""
    from cspflow.settings import get_settings
    from cspflow.store import get_database

    cs = get_settings()
    db = get_database(cs)
    dspec = DftSpec.model_validate(spec)
    from cspflow.store import candidates

    candidate = candidates.get_many(db, [candidate_id]).get(candidate_id)
    if candidate is None:
        raise CspflowError(f"candidate {candidate_id} is not in the database")
    preset, settings = resolve_settings(dspec)
    structure = input_structure(candidate)
    shash = settings_hash(structure, dspec.engine, preset, settings)
    header = _header(candidate_id, dspec, preset, shash, campaign)

    stored = candidates.dft_result_at(candidate, header["fidelity"]["key"]) or {}
    if stored.get("settings_hash") == shash and stored.get("status") == "converged":
        reused = DftResultDoc.model_validate({**stored, "reused": True})
        have = (stored.get("correction") or {}).get("scheme")
        if dspec.correction and have != dspec.correction:
            reused = _recorrect(db, cs, reused, dspec.correction, candidate_id)
        return reused
    same_run = _same_calculation(candidate, dspec, shash)
    if same_run is not None:
        # the same calculation stored under another correction scheme: the engine energy is
        # the same, only the correction differs; VASP does not run again
        return _recorrect(db, cs, same_run, dspec.correction, candidate_id, header["fidelity"])

    try:
        engine_job = build_engine_job(dspec, settings, structure, cs)
    except CspflowError as exc:
        result = DftResultDoc(**header, status="failed", reason=str(exc))
        write_result(db, candidate_id, result)
        return result

    meta = stage_metadata(STAGE, campaign, iteration, candidate_id=candidate_id)
    engine_job.update_metadata(meta)
    recorder = record_dft(
        engine_job.output,
        candidate_id,
        header,
        engine_job.uuid,
        settings.get("relax", "cell"),
        time.time(),
        dspec.correction,
    )
    recorder.name = f"dft record {candidate_id}"
    recorder.config.on_missing_references = OnMissing.NONE
    recorder.config.resolve_references = False
    recorder.config.expose_store = True
    recorder.update_metadata(meta)
    return Response(replace=Flow([engine_job, recorder], output=recorder.output))


def _same_calculation(candidate: dict, dspec: DftSpec, shash: str) -> DftResultDoc | None:
    """A converged result of the same DFT calculation stored at a fidelity that differs from
    ``dspec``'s only in its energy-correction scheme (same settings hash), or None.

    The correction is applied after the run, to the engine's energy, so such a result is the
    same work: :func:`dft_candidate` re-corrects it instead of running the engine again.
    """
    from typing import get_args

    from cspflow.store import candidates

    own = dspec.fidelity()
    if own is None:
        return None
    for scheme in (None, *get_args(CorrectionScheme)):
        if scheme == dspec.correction:
            continue
        other = dspec.model_copy(update={"correction": scheme}).fidelity()
        run = candidates.dft_result_at(candidate, other.key) if other is not None else None
        if run and run.get("settings_hash") == shash and run.get("status") == "converged":
            return DftResultDoc.model_validate({**run, "reused": True})
    return None


def _recorrect(
    db: Database,
    cs: CspflowSettings,
    result: DftResultDoc,
    scheme: CorrectionScheme | None,
    candidate_id: str,
    fidelity: dict | None = None,
) -> DftResultDoc:
    """A reused result stored without ``scheme``: correct it from its TaskDoc in the JobStore
    (no DFT reruns) and store the correction with it; with ``fidelity`` (a Fidelity dict),
    stored as the result of that fidelity (the one of another scheme stays as it was)."""
    from cspflow.store import candidates, get_jobstore

    if fidelity is not None:
        result = result.model_copy(
            update={"fidelity": Fidelity.model_validate(fidelity), "correction": None}
        )
    if scheme is None:
        out = result.model_copy(update={"reused": False})
        candidates.set_dft_result(db, candidate_id, out)
        return out.model_copy(update={"reused": True})
    store = get_jobstore(cs)
    store.connect()
    try:
        found = store.query_one({"uuid": result.task_uuid}, load=True) if result.task_uuid else None
    finally:
        store.close()
    task_doc = (found or {}).get("output")
    out = attach_correction(result.model_copy(update={"reused": False}), task_doc, scheme,
                            candidate_id)  # fmt: skip
    candidates.set_dft_result(db, candidate_id, out)
    return out.model_copy(update={"reused": True})


@job
def dft_fanout(
    candidate_ids: list[str], spec: dict, campaign: str | None = None, iteration: int | None = None
) -> Response | list:
    """Replace this job with one :func:`dft_candidate` job per candidate id."""
    dspec = DftSpec.model_validate(spec)
    if dspec.engine == "none" or not candidate_ids:
        return []  # the MLIP energy is final
    jobs: list[Job | Flow] = []
    for cid in candidate_ids:
        j = dft_candidate(cid, spec, campaign, iteration)
        j.name = f"dft {cid}"
        j.update_metadata(stage_metadata(STAGE, campaign, iteration, candidate_id=cid))
        jobs.append(j)
    return Response(replace=Flow(jobs, output=[j.output for j in jobs], name="dft"))


@dataclass
class DftStageMaker(Maker):
    """Make the DFT stage for a list of candidate ids (resolved at run time).

    Parameters
    ----------
    name : str
        Job name.
    settings : DftSpec
        The stage's settings; a campaign passes its spec's ``dft:`` block (its ``budget`` is
        the campaign's to apply, not the stage's).
    """

    name: str = "dft stage"
    settings: DftSpec = field(default_factory=DftSpec)

    def make(
        self,
        candidate_ids: list[str] | Any,
        campaign: str | None = None,
        iteration: int | None = None,
    ) -> Job:
        """Return the fan-out job (``candidate_ids`` may be an upstream job's output)."""
        spec = self.settings.model_dump(include=set(DftSpec.model_fields))
        j = dft_fanout(
            candidate_ids, DftSpec.model_validate(spec).model_dump(), campaign, iteration
        )
        j.name = self.name
        j.update_metadata(stage_metadata(STAGE, campaign, iteration))
        return j
