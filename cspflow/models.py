"""The MLIP model registry: the ``models`` collection and the GridFS bucket of model files.

A record (:class:`~cspflow.schemas.learn.ModelDoc`) is one document of ``models``; its file
lives in GridFS (bucket :data:`MODEL_BUCKET`, ``file_id``). :func:`fetch_registry_model` copies
a file to a local cache once, which is what ``registry:ID`` model specs of :mod:`cspflow.mlip`
load. The learn stage (:mod:`cspflow.learn.round`) registers and promotes models here; the
``cspflow model`` commands list, show and export them.

No torch import here: loading a model is :mod:`cspflow.mlip`'s job.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cspflow.errors import CspflowError
from cspflow.schemas.learn import ModelDoc
from cspflow.settings import get_settings

if TYPE_CHECKING:
    from pymongo.database import Database

__all__ = [
    "MODEL_BUCKET",
    "register_model",
    "model_id_for",
    "current_model",
    "current_model_spec",
    "learned_committee",
    "get_model",
    "list_models",
    "lineage",
    "fetch_model",
    "fetch_registry_model",
    "export_model",
    "registry_kind",
]

#: GridFS bucket of model files (:func:`fetch_registry_model` reads this bucket).
MODEL_BUCKET = "models"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_id_for(path: Path, kind: str, sha: str | None = None) -> str:
    """The registry id a model file gets: ``<kind>-<sha256[:12]>`` (``sha``: its digest, if known)."""
    return f"{kind}-{(sha or _sha256(path))[:12]}"


def register_model(db: Database, path: Path, doc: dict[str, Any]) -> ModelDoc:
    """Store a model file in GridFS and its record in ``models``; return the record.

    The id is ``<kind>-<sha256[:12]>`` of the file (``doc["kind"]``: ``mace``, the default,
    or ``chgnet``; what ``mace:PATH`` / ``chgnet:PATH`` report as model id as well);
    registering the same file again returns the stored record.
    """
    import gridfs

    path = Path(path)
    sha = _sha256(path)
    model_id = doc.get("model_id") or model_id_for(path, doc.get("kind") or "mace", sha)
    existing = db["models"].find_one({"model_id": model_id}, {"_id": 0})
    if existing is not None:
        return ModelDoc.model_validate(existing)
    bucket = gridfs.GridFSBucket(db, bucket_name=MODEL_BUCKET)
    filename = f"{model_id}.model"
    with open(path, "rb") as fh:
        file_id = bucket.upload_from_stream(filename, fh, metadata={"model_id": model_id})
    fidelity: Any = doc.get("fidelity")
    if fidelity is not None and not isinstance(fidelity, dict):
        fidelity = fidelity.model_dump()  # a Fidelity
    record = ModelDoc.model_validate(
        {
            **doc,
            "fidelity": fidelity,
            "fidelity_key": (fidelity or {}).get("key"),
            "model_id": model_id,
            "file_id": file_id,
            "filename": filename,
            "sha256": sha,
            "created_at": doc.get("created_at") or _now(),
        }  # fmt: skip
    )
    db["models"].insert_one(record.model_dump())
    return record


def current_model(db: Database, chemsys: str, fidelity: str | None = None) -> dict | None:
    """The promoted registry model of ``chemsys`` registered last, or None.

    With ``fidelity`` (a fidelity key) only models trained on labels of that fidelity count:
    a model trained on LDA labels is never the current model of a PBE campaign.
    """
    query: dict[str, Any] = {"chemsys": chemsys, "promoted": True}
    if fidelity is not None:
        query["fidelity_key"] = fidelity
    return db["models"].find_one(query, {"_id": 0}, sort=[("created_at", -1)])


def current_model_spec(
    db: Database, chemsys: str, default: str | None = None, fidelity: str | None = None
) -> str | None:
    """``registry:ID`` of the current model of ``chemsys`` (at ``fidelity``), else ``default``."""
    doc = current_model(db, chemsys, fidelity)
    return f"registry:{doc['model_id']}" if doc else default


def learned_committee(db: Database, chemsys: str, fidelity: str | None = None) -> list[str]:
    """``registry:ID`` specs of the committee a learning round trained for ``chemsys``.

    The committee of the current (promoted) model at ``fidelity`` when it has one: the models
    whose energies rank the candidates now. Else, when no committee was promoted, the newest
    round's committee (trained on the most data, even if its primary was not promoted). The
    primary comes first, then its members in registration order. Empty: no round trained one.
    """
    doc = current_model(db, chemsys, fidelity)
    if doc is None or not doc.get("committee"):
        query: dict[str, Any] = {"chemsys": chemsys, "committee_of": None,
                                 "committee.0": {"$exists": True}}  # fmt: skip
        if fidelity is not None:
            query["fidelity_key"] = fidelity
        doc = db["models"].find_one(query, {"_id": 0}, sort=[("created_at", -1)])
    if doc is None:
        return []
    return [f"registry:{m}" for m in [doc["model_id"], *doc["committee"]]]


def get_model(db: Database, model_id: str) -> dict:
    """The registry record of ``model_id`` (a unique prefix is enough).

    Raises
    ------
    CspflowError
        When no model, or more than one, matches.
    """
    import re

    doc = db["models"].find_one({"model_id": model_id}, {"_id": 0})
    if doc is not None:
        return doc
    matches = list(
        db["models"].find({"model_id": {"$regex": f"^{re.escape(model_id)}"}}, {"_id": 0}).limit(3)
    )
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CspflowError(f"model id {model_id!r} is ambiguous; give more characters")
    raise CspflowError(
        f"no model {model_id!r} in the model registry; list them with `cspflow model list`"
    )


def list_models(
    db: Database, chemsys: str | None = None, campaign: str | None = None
) -> list[dict]:
    """Registry records, newest first (without file ids)."""
    query: dict[str, Any] = {}
    if chemsys:
        query["chemsys"] = chemsys
    if campaign:
        query["campaign"] = campaign
    return list(db["models"].find(query, {"_id": 0, "file_id": 0}).sort("created_at", -1))


def lineage(db: Database, model_id: str, limit: int = 50) -> list[str]:
    """``model_id`` and its ancestors (``parent`` links), newest first.

    The chain ends at a model without parent or at a parent outside the registry (a spec such
    as ``chgnet``), which is listed last.
    """
    chain = [model_id]
    doc = db["models"].find_one({"model_id": model_id}, {"parent": 1})
    while doc and doc.get("parent") and len(chain) < limit:
        chain.append(doc["parent"])
        doc = db["models"].find_one({"model_id": doc["parent"]}, {"parent": 1})
    return chain


def registry_kind(model_id: str, db: Database | None = None) -> str:
    """The architecture of registry model ``model_id``: its record's ``kind`` (``mace`` for
    records written before CHGNet fine-tuning, which have none)."""
    if db is None:
        from cspflow.store import get_database

        db = get_database()
    doc = db["models"].find_one({"model_id": model_id}, {"kind": 1})
    return str((doc or {}).get("kind") or "mace")


def fetch_model(model_id: str, db: Database | None = None, cache_dir: Path | None = None) -> Path:
    """A local path to registry model ``model_id`` (copied from GridFS once, then cached).

    The same cache ``registry:ID`` uses (:func:`fetch_registry_model`).
    """
    return fetch_registry_model(model_id, db=db, cache_dir=cache_dir)


def export_model(db: Database, model_id: str, dest: Path) -> Path:
    """Copy a registry model file to ``dest`` (a file path or an existing directory)."""
    doc = get_model(db, model_id)
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{doc['model_id']}.model"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fetch_model(doc["model_id"], db=db), dest)
    return dest


def fetch_registry_model(
    model_id: str, db: Database | None = None, cache_dir: Path | None = None
) -> Path:
    """Return a local path to registry model ``model_id``, copying it from GridFS once.

    The ``models`` collection holds ``{"model_id": ..., "file_id": <GridFS id in bucket
    "models">, "filename": ...}``; files are cached under ``<data_dir>/models``.

    Raises
    ------
    CspflowError
        When no model with that id is registered, or its file is missing from GridFS.
    """
    import gridfs

    if db is None:
        from cspflow.store import get_database

        db = get_database()
    doc = db["models"].find_one({"model_id": model_id})
    if doc is None:
        raise CspflowError(
            f"no model {model_id!r} in the model registry; list them with `cspflow model list` "
            "or pass --model mace:PATH"
        )
    cache_dir = Path(cache_dir or get_settings().data_dir / "models")
    path = cache_dir / f"{model_id}.model"
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    bucket = gridfs.GridFSBucket(db, bucket_name="models")
    tmp = path.with_suffix(".part")
    try:
        with open(tmp, "wb") as fh:
            bucket.download_to_stream(doc["file_id"], fh)
    except (KeyError, gridfs.errors.NoFile):
        tmp.unlink(missing_ok=True)
        raise CspflowError(
            f"registry model {model_id!r} has no file in GridFS; register it again"
        ) from None
    tmp.replace(path)
    return path
