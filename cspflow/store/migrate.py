"""Upgrade a database written by an earlier cspflow release, once, when it is first opened.

The layout version of a database is the document ``{"_id": "layout"}`` in ``cspflow_meta``.
:func:`upgrade` (called by :func:`cspflow.store.get_database` once per process and database)
reads it, and a database without it is brought to :data:`LAYOUT_VERSION`:

1. ``candidates`` (to :data:`~cspflow.schemas.candidate.CANDIDATE_SCHEMA_VERSION` 2):
   ``rescreen`` and ``rescreen_relaxed_by`` become entries of the append-only ``screenings``;
   ``relaxed.mlip.spacegroup`` (a symbol) becomes a number with the symbol in
   ``spacegroup_symbol``; a DFT result without ``relaxed.dft.campaign`` is named for the
   campaign that re-screened the candidate into its selection, else the candidate's own (the
   DFT budget then counts every result once).
2. ``fingerprints``: relaxed forms get the relaxed energy they were filed with, so the
   relaxed-minimum lookup (:func:`cspflow.dedup.index.find_relaxed_duplicate`) finds them.
3. ``fireworks``: serialized jobs name the module of their function, and functions moved
   between modules (:data:`cspflow.jobs.MOVED_JOB_PATHS`): every ``@module``/``@callable`` pair
   of a moved job is rewritten, so a campaign started by the earlier release resumes.

Layout 3 (docs/fidelity.md) gives every stored energy a fidelity:

4. ``candidates`` (to schema 3): ``relaxed.mlip`` and each ``screenings`` entry get the MLIP
   fidelity of their model (no dispersion existed before); ``relaxed.dft`` gets the DFT
   fidelity of the campaign that ran it, computed from that campaign's stored spec when the
   spec's engine and preset are the result's, else an explicit unknown fidelity
   (``unknown:dft:ENGINE:PRESET``, never equal to a known key); the result is also the one
   entry of ``relaxed.dft_by_fidelity``. DFT forms in ``fingerprints`` get that fidelity key.
5. ``hull``: a version gets the fidelity its candidate entries share (unknown when they mix
   fidelities, as hulls built before this release could); the unique index on
   (chemsys, version) is replaced by one on (chemsys, fidelity_key, version).
6. ``hull_references``: the fidelity of the campaign whose spec imported the file, else unknown.
7. ``models``: the DFT fidelity of the campaign that trained the model, else unknown; a model
   of unknown fidelity is never any campaign's current model.

Every step only touches documents still in the old form, so running it twice (or in two
processes at once) changes nothing the second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = ["LAYOUT_VERSION", "layout_version", "upgrade"]

#: 2: candidates at schema 2, fingerprints with relaxed energies, job paths of the redesign;
#: 3: a fidelity on every stored energy (candidates at schema 3, hulls, references, models)
LAYOUT_VERSION = 3
META = "cspflow_meta"
_DONE: set[tuple[str, str]] = set()  # (address, database) upgraded in this process


def layout_version(db: Database) -> int | None:
    """The layout version recorded in the database (None: written before versions existed)."""
    doc = db[META].find_one({"_id": "layout"})
    return int(doc["version"]) if doc else None


def upgrade(db: Database, *, force: bool = False) -> dict[str, int]:
    """Bring ``db`` to :data:`LAYOUT_VERSION` (a no-op when it is there); return what changed.

    Checked once per process and database: afterwards a call returns at once. ``force`` runs
    every step again whatever the recorded version (they only touch documents in an old form).
    """
    key = (repr(db.client.address), db.name)
    if key in _DONE and not force:
        return {}
    changed: dict[str, int] = {}
    version = layout_version(db)
    if force or version is None or version < LAYOUT_VERSION:
        from cspflow.store.migrate_fidelity import fingerprints, hulls, models, references

        changed = {
            "candidates": _candidates(db),
            "fingerprints": _fingerprints(db),
            "fireworks": _fireworks(db),
            "dft_fingerprints": fingerprints(db),
            "hull": hulls(db),
            "hull_references": references(db),
            "models": models(db),
        }
        db[META].update_one({"_id": "layout"}, {"$set": {"version": LAYOUT_VERSION}}, upsert=True)
    _DONE.add(key)
    return changed


def _symbol_number(symbol: Any) -> int | None:
    from pymatgen.symmetry.groups import SpaceGroup

    try:
        return int(SpaceGroup(str(symbol)).int_number)
    except Exception:
        return None


def _screenings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``screenings`` entries an old ``rescreen`` record and ``rescreen_relaxed_by`` mean."""
    from cspflow.schemas.candidate import ScreeningDoc

    old = doc.get("rescreen") or {}
    relaxed_by = list(doc.get("rescreen_relaxed_by") or [])
    owner = doc.get("campaign") or "unknown"
    out = []
    for model_id in relaxed_by:  # earlier rounds' relaxations (the record kept only the last)
        if model_id != old.get("model_id"):
            out.append(ScreeningDoc(campaign=old.get("by_campaign") or owner, model_id=model_id,
                                    relaxed=True))  # fmt: skip
    if old.get("model_id"):
        out.append(
            ScreeningDoc(
                campaign=old.get("campaign") or old.get("by_campaign") or owner,
                model_id=old["model_id"],
                single_point_energy_per_atom=old.get("single_point_energy_per_atom"),
                previous_model_id=old.get("previous_model_id"),
                previous_energy_per_atom=old.get("previous_energy_per_atom"),
                relaxed=old["model_id"] in relaxed_by or old.get("iteration") is not None,
                joins_iteration=old.get("iteration"),
            )
        )
    return [s.model_dump() for s in out]


def _candidates(db: Database) -> int:
    from pymongo import UpdateOne

    from cspflow.schemas.candidate import CANDIDATE_SCHEMA_VERSION
    from cspflow.schemas.prerelax import MLIP_RELAX_SCHEMA_VERSION
    from cspflow.store.migrate_fidelity import fidelity_sets

    coll = db["candidates"]
    ops = []
    spec_fidelities: dict[str, dict[str, Any] | None] = {}
    for doc in coll.find({"schema_version": {"$ne": CANDIDATE_SCHEMA_VERSION}}):
        sets: dict[str, Any] = {"schema_version": CANDIDATE_SCHEMA_VERSION}
        unset: dict[str, str] = {}
        if "rescreen" in doc or "rescreen_relaxed_by" in doc:
            sets["screenings"] = list(doc.get("screenings") or []) + _screenings(doc)
            unset = {"rescreen": "", "rescreen_relaxed_by": ""}
        relaxed = doc.get("relaxed") or {}
        mlip = relaxed.get("mlip")
        if mlip and mlip.get("schema_version") != MLIP_RELAX_SCHEMA_VERSION:
            symbol = mlip.get("spacegroup")
            if isinstance(symbol, str):
                sets["relaxed.mlip.spacegroup"] = _symbol_number(symbol)
                sets["relaxed.mlip.spacegroup_symbol"] = symbol
            sets["relaxed.mlip.schema_version"] = MLIP_RELAX_SCHEMA_VERSION
        dft = relaxed.get("dft")
        if dft and not dft.get("campaign"):
            rescreen = doc.get("rescreen") or {}
            sets["relaxed.dft.campaign"] = rescreen.get("campaign") or doc.get("campaign")
        sets.update(fidelity_sets(db, doc, sets, spec_fidelities))
        update: dict[str, Any] = {"$set": sets}
        if unset:
            update["$unset"] = unset
        ops.append(UpdateOne({"_id": doc["_id"]}, update))
    if ops:
        coll.bulk_write(ops, ordered=False)
    return len(ops)


def _fingerprints(db: Database) -> int:
    from pymongo import UpdateOne

    ops = []
    query = {"level": {"$in": ["mlip", "dft"]}, "energy_per_atom": None}
    for fdoc in db["fingerprints"].find(query, {"candidate_id": 1, "level": 1}):
        cand = db["candidates"].find_one(
            {"candidate_id": fdoc["candidate_id"]}, {"energy_per_atom": 1}
        )
        energy = ((cand or {}).get("energy_per_atom") or {}).get(fdoc["level"])
        if energy is not None:
            ops.append(UpdateOne({"_id": fdoc["_id"]}, {"$set": {"energy_per_atom": energy}}))
    if ops:
        db["fingerprints"].bulk_write(ops, ordered=False)
    return len(ops)


#: fields of the previous release's bound Makers that are not settings
_MAKER_KEYS = {"@module", "@class", "@version", "name"}
#: renamed settings of those Makers (old -> new)
_RENAMED = {"n_uncertain": "uncertain_k"}


def _bound_settings(bound: dict[str, Any]) -> dict[str, Any]:
    return {_RENAMED.get(k, k): v for k, v in bound.items() if k not in _MAKER_KEYS}


def _upgrade_job(job: dict[str, Any], moved: dict[tuple[str, str], tuple[str, str]]) -> bool:
    """Point one serialized jobflow job at this release's function; True when it changed.

    A job of a Maker method (``PrerelaxMaker.run_batch``) carried the Maker in ``@bound``; its
    fields become the new function's ``settings`` argument.
    """
    function = job.get("function")
    if not isinstance(function, dict):
        return False
    key = (function.get("@module"), function.get("@callable"))
    if key not in moved:
        return False
    bound = function.get("@bound")
    module, name = moved[key]
    if (module, name) == key and not bound:
        return False  # the same function in the same place
    job["function"] = {"@module": module, "@callable": name, "@bound": None}
    if isinstance(bound, dict):
        settings = _bound_settings(bound)
        if name == "prerelax_job":
            job["function_args"] = [*list(job.get("function_args") or [])[:1], settings]
        else:
            job["function_kwargs"] = {**(job.get("function_kwargs") or {}), "settings": settings}
    if (job.get("metadata") or {}).get("stage") == "control" and name == "decide":
        job["metadata"]["stage"] = "decide"
    return True


def _upgrade_spec(obj: Any, moved: dict[tuple[str, str], tuple[str, str]]) -> int:
    """Upgrade every serialized job inside a firework spec; return how many changed."""
    n = 0
    if isinstance(obj, dict):
        if "function" in obj and _upgrade_job(obj, moved):
            n += 1
        for value in obj.values():
            n += _upgrade_spec(value, moved)
    elif isinstance(obj, list):
        for value in obj:
            n += _upgrade_spec(value, moved)
    return n


def _fireworks(db: Database) -> int:
    from cspflow.jobs import MOVED_JOB_PATHS

    changed = 0
    for fw in db["fireworks"].find({}, {"spec": 1}):
        spec = fw.get("spec") or {}
        if _upgrade_spec(spec, MOVED_JOB_PATHS):
            if spec.get("stage") == "control" and _is_decide(spec):
                spec["stage"] = "decide"  # `campaign extend` finds the decide job by stage
            db["fireworks"].update_one({"_id": fw["_id"]}, {"$set": {"spec": spec}})
            changed += 1
    return changed


def _is_decide(spec: dict[str, Any]) -> bool:
    return any(
        ((t.get("job") or {}).get("function") or {}).get("@callable") == "decide"
        for t in spec.get("_tasks") or []
    )
