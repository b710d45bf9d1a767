"""CampaignSpec: the YAML a user writes (workflows/*.yaml), validated with every error at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cspflow.errors import SpecError
from cspflow.schemas.dft import MP_OFFLINE_REFERENCES
from cspflow.schemas.dft import DftSpec as DftEngineSpec
from cspflow.schemas.generate import GenerateSettings
from cspflow.schemas.learn import TrainSettings
from cspflow.schemas.prerelax import PrerelaxSettings, RescreenSettings, SelectSettings

__all__ = [
    "CampaignSpec",
    "GenerateSpec",
    "PrerelaxSpec",
    "SelectSpec",
    "DftSpec",
    "LearnSpec",
    "StopSpec",
    "load_spec",
    "parse_spec",
]

#: 2: the MLIP relaxation default became BFGS with ``cell_factor`` 1; a version-1 spec (stored
#: by an earlier release) relaxes as it did, with ASE's cell scaling (``cell_factor`` None)
SCHEMA_VERSION = 2


def _check_formula_later(formula: str) -> str:
    return _check_formula(formula)


Formula = Annotated[str, AfterValidator(_check_formula_later)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class GenerateSpec(GenerateSettings):
    """The ``generate:`` block: the generate stage's settings plus the campaign's base seed."""

    seed: int = Field(0, ge=0, description="Base random seed; iteration i uses seed + i.")

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch_size" in data:
            raise ValueError(
                "batch_size was removed (it never had an effect: each composition is generated "
                "by one job); delete it"
            )
        return data


class PrerelaxSpec(PrerelaxSettings):
    """The ``prerelax:`` block: the prerelax stage's settings plus the batch size."""

    batch_size: int = Field(32, ge=1, description="Candidates per pre-relaxation job.")


class SelectSpec(SelectSettings):
    """The ``select:`` block: the select stage's settings."""


class DftSpec(DftEngineSpec):
    """The ``dft:`` block: the DFT stage's settings plus a budget."""

    budget: int | None = Field(None, ge=0, description="Total DFT relaxations allowed.")


class LearnSpec(_Strict):
    """The ``learn:`` block: retrain MACE or fine-tune CHGNet on the campaign's DFT data (see
    docs/learn.md)."""

    enabled: bool = False
    model: Literal["mace", "chgnet"] = Field(
        TrainSettings.model,
        description="mace: train MACE (from scratch or fine-tune foundation_model); chgnet: "
        "fine-tune CHGNet's universal weights (or a fine-tuned CHGNet foundation_model).",
    )
    every: int = Field(1, ge=1, description="Retrain every N iterations.")
    min_frames: int = Field(
        TrainSettings.min_frames, ge=1, description="Fewest DFT frames worth training on."
    )
    foundation_model: str | None = Field(
        TrainSettings.foundation_model,
        description="MACE model to fine-tune (PATH, mace:PATH, registry:ID or current).",
    )
    finetune: Literal["naive", "multihead"] = Field(
        TrainSettings.finetune, description="Fine-tuning mode when foundation_model is set."
    )
    replay_file: str | None = Field(
        TrainSettings.replay_file,
        description="extxyz replay data for multihead fine-tuning (the foundation's data).",
    )
    committee: int = Field(
        TrainSettings.committee, ge=1, le=8, description="Models trained with different seeds."
    )
    rescreen_top: int = Field(
        RescreenSettings.model_fields["top"].default, ge=0,
        description="Per formula, stored candidates relaxed again by a promoted model.",
    )  # fmt: skip
    train: dict[str, Any] = Field(
        default_factory=dict, description="Further TrainSettings (epochs, r_max, seed, ...)."
    )

    @field_validator("train")
    @classmethod
    def _train_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        from dataclasses import fields

        known = {f.name for f in fields(TrainSettings)}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return v

    @model_validator(mode="after")
    def _model_and_foundation(self) -> LearnSpec:
        if self.model == "chgnet" and (self.finetune == "multihead" or self.replay_file):
            raise ValueError(
                "learn.model chgnet fine-tunes CHGNet naively; multihead fine-tuning and "
                "replay_file are MACE's (set learn.model: mace or finetune: naive)"
            )
        fm = self.foundation_model or ""
        if self.model == "chgnet" and fm.startswith("mace:"):
            raise ValueError(
                f"learn.foundation_model {fm} is a MACE model but learn.model is chgnet; give a "
                "CHGNet model (chgnet, chgnet:PATH, registry:ID) or set learn.model: mace"
            )
        if self.model == "mace" and (fm == "chgnet" or fm.startswith("chgnet:")):
            raise ValueError(
                f"learn.foundation_model {fm} is a CHGNet model but learn.model is mace; set "
                "learn.model: chgnet to fine-tune CHGNet"
            )
        return self

    def train_settings(self) -> dict[str, Any]:
        """The TrainSettings fields of a learning round."""
        return {
            **self.train, "min_frames": self.min_frames, "committee": self.committee,
            "foundation_model": self.foundation_model, "finetune": self.finetune,
            "replay_file": self.replay_file, "model": self.model,
        }  # fmt: skip


class StopSpec(_Strict):
    max_iterations: int = Field(3, ge=1, le=1000)
    patience: int = Field(2, ge=1, description="Stop after N iterations without hull improvement.")
    dft_budget: int | None = Field(None, ge=0, description="Stop once this many DFT runs are done.")
    ground_state_confidence: float | None = Field(
        None, gt=0, lt=1,
        description="Stop once every composition's estimated probability that its lowest "
        "structure is the lowest there is (the rediscovery record's ground_state_confidence, "
        "cspflow.campaign.evolution.ground_state) reaches this; None: not a stop rule.",
    )  # fmt: skip


class CampaignSpec(_Strict):
    """A campaign: what to search, how, and when to stop."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="before")
    @classmethod
    def _earlier_layouts(cls, data: Any) -> Any:
        """A spec stored by an earlier release keeps the settings it ran with: version 1 knew
        no ``prerelax.cell_factor`` and relaxed with ASE's cell scaling."""
        if not isinstance(data, dict) or data.get("schema_version", SCHEMA_VERSION) >= 2:
            return data
        pre = data.get("prerelax")
        pre = dict(pre) if isinstance(pre, dict) else {}
        pre.setdefault("optimizer", "FIRE")
        pre.setdefault("cell_factor", None)
        return {**data, "prerelax": pre, "schema_version": SCHEMA_VERSION}

    compositions: list[Formula] = Field(
        default_factory=list, description="Reduced formulas to search."
    )
    chemsys: list[str] | None = Field(None, description="Elements of the system (hull).")
    composition_grid: int | None = Field(
        None, ge=1, le=12, description="With chemsys: all formulas with at most this many atoms."
    )
    max_atoms: int = Field(16, ge=1, le=500)
    references: str | None = Field(
        None,
        description="Competing phases for the hull: a JSON file of pymatgen ComputedEntries, or "
        f"`{MP_OFFLINE_REFERENCES}` for the Materials Project entries pymatgen ships (VASP "
        "only). With dft.correction they are processed by the same scheme as the candidates.",
    )
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    prerelax: PrerelaxSpec = Field(default_factory=PrerelaxSpec)
    select: SelectSpec = Field(default_factory=SelectSpec)
    dft: DftSpec = Field(default_factory=DftSpec)
    learn: LearnSpec = Field(default_factory=LearnSpec)
    stop: StopSpec = Field(default_factory=StopSpec)

    @field_validator("chemsys")
    @classmethod
    def _elements(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from pymatgen.core.periodic_table import Element

        bad = [el for el in v if not Element.is_valid_symbol(el)]
        if bad:
            raise ValueError(f"unknown element(s) {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _what_to_search(self) -> CampaignSpec:
        if not self.compositions and not self.chemsys:
            raise ValueError("give compositions or chemsys")
        if self.chemsys and self.compositions:
            extra = {el for f in self.compositions for el in _elements_of(f)} - set(self.chemsys)
            if extra:
                raise ValueError(f"compositions use elements {sorted(extra)} outside chemsys")
        if self.references == MP_OFFLINE_REFERENCES and self.dft.engine != "vasp":
            raise ValueError(
                f"references {MP_OFFLINE_REFERENCES} are Materials Project VASP energies; they "
                f"never share a hull with dft.engine {self.dft.engine}: give references computed "
                "with the campaign's engine and settings"
            )
        if self.learn.enabled and self.dft.engine == "none":
            raise ValueError("learn.enabled needs DFT labels: set dft.engine (gpaw, cp2k, vasp)")
        for f in self.compositions:
            from pymatgen.core import Composition

            n = int(Composition(f).reduced_composition.num_atoms)
            if n > self.max_atoms:
                raise ValueError(
                    f"{f} needs {n} atoms per formula unit but max_atoms is {self.max_atoms}"
                )
        return self

    def system(self) -> str:
        """The chemical system (hull) as sorted elements joined by '-'."""
        els = set(self.chemsys or [])
        for f in self.compositions:
            els |= _elements_of(f)
        return "-".join(sorted(els))

    def formulas(self) -> list[str]:
        """Every reduced formula the campaign searches."""
        if self.compositions:
            return list(dict.fromkeys(self.compositions))
        return composition_grid(self.chemsys or [], self.composition_grid or 4)


def _elements_of(formula: str) -> set[str]:
    from pymatgen.core import Composition

    return {str(el) for el in Composition(formula).elements}


def _check_formula(formula: str) -> str:
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    try:
        comp = Composition(formula)
    except Exception:
        raise ValueError(f"{formula!r} is not a chemical formula") from None
    symbols = [getattr(el, "symbol", str(el)) for el in comp.elements]
    bad = [sym for sym in symbols if not Element.is_valid_symbol(sym)]
    if bad or not comp.elements:
        raise ValueError(f"{formula!r} has unknown element(s) {bad}")
    if any(abs(a - round(a)) > 1e-8 or a <= 0 for a in comp.values()):
        raise ValueError(f"{formula!r} must have positive integer amounts")
    return comp.reduced_formula


def composition_grid(elements: list[str], max_fu_atoms: int) -> list[str]:
    """All reduced formulas of ``elements`` with up to ``max_fu_atoms`` atoms (elements included)."""
    import itertools

    from pymatgen.core import Composition

    out: dict[str, None] = {}
    for counts in itertools.product(range(max_fu_atoms + 1), repeat=len(elements)):
        if 0 < sum(counts) <= max_fu_atoms:
            comp = Composition(dict(zip(elements, counts, strict=True)))
            out[comp.reduced_formula] = None
    return list(out)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_spec(data: Any, source: str = "spec") -> CampaignSpec:
    """Validate a spec mapping; raise SpecError listing every problem with its YAML path."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a campaign spec must be a YAML mapping of key: value")
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{_loc(err['loc'])}: {msg}")
        raise SpecError(f"{source}: {len(problems)} problem(s) in the campaign spec", problems,
                        source=source) from None  # fmt: skip


def load_spec(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign spec YAML file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read campaign spec {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise SpecError(f"{path}: malformed YAML{where}" + (f" ({problem})" if problem else "")
                        + "; fix the YAML syntax there") from None  # fmt: skip
    return parse_spec(data, str(path))
