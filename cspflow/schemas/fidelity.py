"""The fidelity of an energy: the level of theory that produced it (docs/fidelity.md).

Every energy cspflow stores carries a :class:`Fidelity`: the DFT results on a candidate, its
MLIP relaxation and re-screenings, its deduplication forms, hull versions, reference entries,
training sets and registry models. Two energies may share a hull, a training set or a
duplicate comparison only when their fidelity ``key`` is equal.

The key is short, stable and readable, and indexed where it is queried:

- DFT: ``engine:functional:preset:hash8`` (``gpaw:PBE:fast:1a2b3c4d``), with ``+d3bj`` for a
  dispersion correction and ``+mp2020`` for an energy-correction scheme appended; ``hash8`` is
  the first 8 hex digits of :attr:`Fidelity.settings_hash`, a hash of every setting that
  changes the energy (preset, functional, cut-offs, k-points, smearing, pseudopotentials or
  basis, spin, U values, dispersion, correction), not of those that only steer the
  optimiser (relax mode, fmax, steps).
- MLIP: ``mlip:MODEL_ID`` (``mlip:chgnet-0.3.0``, ``mlip:mace-0123456789ab``), ``+d3bj`` likewise.
- Unknown (documents of older releases whose settings are gone):
  ``unknown:dft:ENGINE:PRESET`` or ``unknown:mlip``; such a key never equals a known one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FIDELITY_SCHEMA_VERSION",
    "Fidelity",
    "FidelityLevel",
    "dft_fidelity",
    "mlip_fidelity",
    "unknown_fidelity",
    "settings_digest",
    "field_key",
]

FIDELITY_SCHEMA_VERSION = 1

FidelityLevel = Literal["dft", "mlip"]


class Fidelity(BaseModel):
    """The level of theory of one stored energy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="Short stable id; energies mix only when keys are equal.")
    level: FidelityLevel = Field(description="dft or mlip.")
    known: bool = Field(
        True, description="False for documents of older releases whose settings are unknown."
    )
    engine: str | None = Field(None, description="DFT code (vasp, cp2k, gpaw); None for MLIP.")
    functional: str | None = Field(None, description="Exchange-correlation functional (DFT).")
    preset: str | None = Field(None, description="cspflow preset the DFT settings came from.")
    settings_hash: str | None = Field(
        None, description="Hash of every DFT setting that changes the energy (16 hex digits)."
    )
    model_id: str | None = Field(None, description="MLIP model id (registry id or chgnet-X).")
    dispersion: str | None = Field(None, description="Dispersion correction (e.g. d3bj).")
    correction: str | None = Field(
        None, description="Energy-correction scheme applied to the energies (e.g. mp2020)."
    )
    schema_version: int = Field(FIDELITY_SCHEMA_VERSION, description="Layout version.")


def settings_digest(settings: dict[str, Any]) -> str:
    """A 16-hex-digit hash of a JSON-serialisable settings dict (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _suffix(dispersion: str | None, correction: str | None) -> str:
    return (f"+{dispersion.lower()}" if dispersion else "") + (
        f"+{correction.lower()}" if correction else ""
    )


def dft_fidelity(
    engine: str,
    functional: str,
    preset: str,
    energy_settings: dict[str, Any],
    dispersion: str | None = None,
    correction: str | None = None,
) -> Fidelity:
    """The fidelity of DFT energies from ``engine`` with these energy-relevant settings.

    ``energy_settings`` holds only what changes the energy (see the module docstring); the
    engine, functional, preset, dispersion and correction are hashed with it.
    """
    digest = settings_digest(
        {
            "engine": engine,
            "functional": functional,
            "preset": preset,
            "settings": energy_settings,
            "dispersion": dispersion,
            "correction": correction,
        }
    )
    key = f"{engine}:{functional}:{preset}:{digest[:8]}{_suffix(dispersion, correction)}"
    return Fidelity(
        key=key, level="dft", engine=engine, functional=functional, preset=preset,
        settings_hash=digest, dispersion=dispersion, correction=correction,
    )  # fmt: skip


def mlip_fidelity(model_id: str, dispersion: str | None = None) -> Fidelity:
    """The fidelity of energies from MLIP ``model_id`` (plus its dispersion correction)."""
    return Fidelity(
        key=f"mlip:{model_id}{_suffix(dispersion, None)}",
        level="mlip",
        model_id=model_id,
        dispersion=dispersion,
    )


def unknown_fidelity(
    level: FidelityLevel, engine: str | None = None, preset: str | None = None
) -> Fidelity:
    """An explicit unknown fidelity (older documents whose settings were not stored)."""
    parts = ["unknown", level] + [p for p in (engine, preset) if p]
    return Fidelity(key=":".join(parts), level=level, known=False, engine=engine, preset=preset)


def field_key(key: str) -> str:
    """``key`` usable as a MongoDB field name (no ``.``, no leading ``$``)."""
    return key.replace(".", "_").replace("$", "_")
