"""How a benchmark searches: its options and the MLIP-only campaign spec of one entry."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cspflow.bench.sets import PreparedEntry
from cspflow.errors import CspflowError

__all__ = [
    "BenchOptions",
    "check_options",
    "plan_iterations",
    "bench_campaign_spec",
    "parse_overrides",
]

#: sources a benchmark may use ("external" would read user files: it could be handed the answer)
BENCH_SOURCES = ("random_symmetric", "prototype", "mutation", "template")


class BenchOptions(BaseModel):
    """How every entry is searched."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("chgnet", description="MLIP spec: chgnet or mace:PATH.")
    sources: dict[str, float] = Field(
        default_factory=lambda: {"random_symmetric": 1.0}, description="Generator -> weight."
    )
    budget: int = Field(200, ge=1, description="Relaxations per entry and repeat.")
    per_iteration: int | None = Field(
        None, ge=1, description="Candidates per iteration (default: budget split in <= 20s)."
    )
    repeats: int = Field(1, ge=1, description="Independent runs per entry (different seeds).")
    seed: int = Field(0, ge=0, description="Base seed; repeat r uses seed + 1000 r.")
    top_k: int | None = Field(None, ge=1, description="Overrides the set's top_k.")
    max_steps: int = Field(300, ge=1, description="Per-candidate optimizer step limit.")
    until_found: bool = Field(
        False, description="End an entry's search after the iteration that put the reference "
        "in the top-k (USPEX-style: relaxations to success), instead of spending the budget.",
    )  # fmt: skip
    workers: int = Field(1, ge=1, description="Campaigns run at once (each its own workers).")
    spacegroup_prior: str = Field(
        "uniform", description="random_symmetric's space-group prior: uniform, aflow or pyxtal_mp."
    )
    bandit: bool = Field(
        False, description="Allocate random_symmetric's draws over (space group, formula units) "
        "by the Thompson-sampling bandit (generate.bandit).",
    )  # fmt: skip
    wyckoff: str = Field("pyxtal", description="Wyckoff choice: pyxtal or fewest_sites.")
    leave_out_reference: bool = Field(
        False, description="Remove the reference's own structure type(s) from the template "
        "library of its entry (anonymous StructureMatcher): a leave-one-out score.",
    )  # fmt: skip
    prerelax: dict[str, Any] = Field(
        default_factory=dict, description="Prerelax spec fields every campaign gets "
        "(optimizer, symmetry_stage, ...; prune.KEY nested), e.g. the faster engine settings.",
    )  # fmt: skip


def parse_overrides(text: str) -> dict[str, Any]:
    """``KEY=VALUE,...`` -> spec fields (VALUE as JSON, else the bare word; ``a.b=1`` nests).

    >>> parse_overrides("optimizer=BFGS,symmetry_stage=true,prune.window=0.2")
    {'optimizer': 'BFGS', 'symmetry_stage': True, 'prune': {'window': 0.2}}
    """
    import json

    out: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CspflowError(f"{item!r} is not KEY=VALUE (in {text!r})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word: FIRE, BFGS, ...
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def check_options(options: BenchOptions) -> None:
    """Reject sources and models a benchmark cannot use, before anything starts."""
    from cspflow.mlip import parse_model_spec

    bad = sorted(set(options.sources) - set(BENCH_SOURCES))
    if bad:
        raise CspflowError(
            f"unknown or unusable source(s) {bad} for a benchmark; choose from {list(BENCH_SOURCES)}"
        )
    if sum(options.sources.values()) <= 0 or any(w < 0 for w in options.sources.values()):
        raise CspflowError("source weights must be >= 0 and not all zero")
    from cspflow.schemas.generate import SPACEGROUP_PRIORS

    if options.spacegroup_prior not in SPACEGROUP_PRIORS:
        raise CspflowError(
            f"unknown space-group prior {options.spacegroup_prior!r}; "
            f"choose from {', '.join(SPACEGROUP_PRIORS)}"
        )
    if options.wyckoff not in ("pyxtal", "fewest_sites"):
        raise CspflowError(
            f"unknown wyckoff choice {options.wyckoff!r}; use pyxtal or fewest_sites"
        )
    if options.leave_out_reference and "template" not in options.sources:
        raise CspflowError(
            "--leave-out-reference needs the template source; add template to --sources"
        )
    if options.leave_out_reference and "prototype" in options.sources:
        raise CspflowError(
            "--leave-out-reference removes types from the template library only; drop prototype "
            "from --sources (the template library holds the built-in prototypes)"
        )
    from pydantic import ValidationError

    from cspflow.schemas.prerelax import PrerelaxSettings

    try:
        PrerelaxSettings.model_validate(options.prerelax)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CspflowError(f"--prerelax {where}: {first['msg']}") from None
    spec = parse_model_spec(options.model)
    if spec.kind == "registry":
        raise CspflowError(
            "registry models are not in the benchmark's own database; pass --model mace:PATH"
        )


def plan_iterations(
    budget: int, per_iteration: int | None = None, cap: int = 20
) -> tuple[int, int]:
    """Split a relaxation budget into (iterations, per_iteration) without exceeding it.

    Iterations hold at most ``cap`` candidates (so mutation has parents and progress shows);
    ``per_iteration * iterations <= budget``, short of it by less than ``iterations``.
    """
    if per_iteration is not None:
        per = min(per_iteration, budget)
        return max(1, budget // per), per
    n = -(-budget // cap)
    return n, budget // n


def bench_campaign_spec(
    name: str,
    entry: PreparedEntry,
    options: BenchOptions,
    seed: int,
    left_out: list[str] | None = None,
) -> Any:
    """The MLIP-only campaign for one entry: composition and max_atoms only, no DFT.

    ``left_out`` lists template ids the template source must not use (leave-one-out).
    """
    from cspflow.schemas.campaign import CampaignSpec

    iterations, per = plan_iterations(options.budget, options.per_iteration)
    return CampaignSpec.model_validate(
        {
            "name": name,
            "compositions": [entry.formula],
            "max_atoms": entry.max_atoms,
            "generate": {
                "per_iteration": per,
                "sources": dict(options.sources),
                "seed": seed,
                "spacegroup_prior": options.spacegroup_prior,
                "wyckoff": options.wyckoff,
                "bandit": options.bandit,
                "template": {"exclude": list(left_out or [])},
            },
            "prerelax": {
                **options.prerelax,
                "model": options.model,
                "max_steps": options.max_steps,
                "batch_size": max(per, 1),
            },  # fmt: skip
            "select": {"top_k": 0},
            "dft": {"engine": "none"},
            # no hull-improvement stop: the budget alone ends the search
            "stop": {"max_iterations": iterations, "patience": iterations},
        }
    )
