"""The generate stage as a jobflow job: one batch per campaign iteration, registered in MongoDB."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Job, Maker, job

from cspflow.jobs import stage_metadata
from cspflow.schemas.campaign import CampaignSpec
from cspflow.schemas.generate import GenerateSettings

__all__ = [
    "GenerateMaker",
    "generate_candidates",
    "derive_seed",
    "adapted_shares",
    "arm_allocation",
]

#: defaults of direct calls: the stage's settings, written once in the schema
_DEFAULTS = GenerateSettings()


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any values (same values, same seed, in every process)."""
    import hashlib

    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@job
def generate_candidates(
    composition: str,
    n: int,
    max_atoms: int,
    sources: dict[str, float] | None = None,
    seed: int = 0,
    campaign: str | None = None,
    iteration: int | None = None,
    constraints: dict[str, Any] | None = None,
    time_limit: float = _DEFAULTS.time_limit,
    parent_pool: int = _DEFAULTS.parent_pool,
    source_options: dict[str, dict[str, Any]] | None = None,
    spacegroup_prior: str | dict[int, float] = _DEFAULTS.spacegroup_prior,
    prior_mix: float = _DEFAULTS.prior_mix,
    wyckoff: str = _DEFAULTS.wyckoff,
    niche_distance: float = _DEFAULTS.niche_distance,
    adaptive: bool = False,
    min_share: float = _DEFAULTS.min_share,
    bandit: bool = False,
    bandit_window: float = _DEFAULTS.bandit_window,
    bandit_strength: float = _DEFAULTS.bandit_strength,
) -> dict[str, Any]:
    """Generate ``n`` new unique candidates and register them in the campaign database.

    Reads the database settings at run time (:func:`cspflow.settings.get_settings`). Mutation
    parents are the population: the ``parent_pool`` lowest-energy unique stored candidates of
    the formula, niched at ``niche_distance``. ``spacegroup_prior``, ``prior_mix`` and
    ``wyckoff`` go to ``random_symmetric``. With ``adaptive`` (campaigns), the source weights
    and mutation operator shares of iteration > 0 are adapted to the campaign's earlier
    iterations (:func:`cspflow.generate.evolve.adapt_weights`). With ``bandit`` (campaigns,
    iteration > 0), ``random_symmetric`` draws (space group, formula units) arms with the
    Thompson-sampling shares of :func:`cspflow.generate.allocation.bandit_shares`. Rerunning
    the job of a (campaign, iteration) that already holds ``n`` candidates generates nothing
    and returns their ids; a partial earlier run is topped up.

    Returns
    -------
    dict
        A :class:`~cspflow.schemas.candidate.GenerateSummary` as a dict (ids and counts only).
    """
    from cspflow.dedup.index import MongoIndex
    from cspflow.generate.batch import generate_batch, load_parents, parse_sources
    from cspflow.generate.composition import parse_target
    from cspflow.generate.constraints import Constraints
    from cspflow.generate.sources import SourceContext
    from cspflow.store import candidates, get_database

    target = parse_target(composition, max_atoms)
    db = get_database()
    done: list[str] = []
    if campaign is not None and iteration is not None:
        # A rerun of this iteration's job tops up to n instead of generating n more.
        done = candidates.ids_where(
            db, campaign=campaign, iteration=iteration, formula=target.formula
        )
    if len(done) >= n:
        from cspflow.schemas.candidate import GenerateSummary

        return GenerateSummary(
            campaign=campaign, iteration=iteration, formula=target.formula, requested=n,
            candidate_ids=done, n_new=0, seed=seed,
        ).model_dump()  # fmt: skip
    weights = sources or None
    options = {k: dict(v) for k, v in (source_options or {}).items()}
    rs = options.setdefault("random_symmetric", {})
    for key, value in (("spacegroup_prior", spacegroup_prior), ("prior_mix", prior_mix),
                       ("wyckoff", wyckoff)):  # fmt: skip
        rs.setdefault(key, value)
    parents = (
        load_parents(db, target.formula, parent_pool, niche_distance)
        if (sources or {}).get("mutation")
        else []
    )
    operator_weights: dict[str, float] = {}
    fu_shares: dict[str, float] = {}
    if adaptive and campaign is not None and iteration and sources:
        population = parents or load_parents(db, target.formula, parent_pool, niche_distance)
        shares = adapted_shares(
            db, campaign, iteration, target.formula, sources, options.get("mutation", {}),
            [p.candidate_id for p in population], min_share, target.fu_counts,
        )  # fmt: skip
        weights, operator_weights = shares["sources"], shares["operators"]
        if operator_weights:
            options.setdefault("mutation", {})["operators"] = operator_weights
        fu_shares = shares["formula_units"]
        if fu_shares:
            rs["fu_weights"] = fu_shares
    arm_record: dict[str, Any] = {}
    if bandit and campaign is not None and iteration and (sources or {}).get("random_symmetric"):
        from cspflow.generate.priors import check_prior

        arm_record = arm_allocation(
            db, campaign, iteration, target, check_prior(rs["spacegroup_prior"]),
            float(rs["prior_mix"]), bandit_window, bandit_strength, seed,
        )  # fmt: skip
        rs["arm_weights"] = arm_record.pop("shares")
    if weights and "template" in weights:
        from cspflow.generate.templates import with_stored_templates

        weights, options = with_stored_templates(db, target, dict(weights), n - len(done), options)
    context = SourceContext(
        constraints=Constraints(**(constraints or {})),
        parents=parents,
        time_limit=time_limit,
    )
    result = generate_batch(
        target,
        n - len(done),
        MongoIndex(db),
        sources=weights,
        seed=seed,
        context=context,
        source_options=options,
        campaign=campaign,
        iteration=iteration,
    )
    summary = result.summary
    assert summary is not None  # generate_batch always sets it
    summary.weights = {k: round(v, 4) for k, v in parse_sources(weights).items()}
    summary.operator_weights = operator_weights
    summary.formula_unit_weights = fu_shares
    summary.arm_weights = arm_record
    summary.requested = n
    summary.candidate_ids = done + summary.candidate_ids
    return summary.model_dump()


def adapted_shares(
    db: Any,
    campaign: str,
    iteration: int,
    formula: str,
    sources: dict[str, float],
    mutation_options: dict[str, Any],
    population: list[str],
    min_share: float,
    fu_counts: list[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Source weights, mutation operator shares and ``random_symmetric``'s formula-unit shares
    of ``iteration``, adapted to the campaign's earlier iterations
    (:func:`cspflow.generate.evolve.adapt_weights`).

    Parameters
    ----------
    db
        The campaign database.
    campaign, iteration, formula
        Whose shares: the candidates of iterations before ``iteration`` of that formula count.
    sources
        Base source weights (the spec's).
    mutation_options
        The spec's ``source_options.mutation`` (base operator weights under ``operators``).
    population
        Ids of the formula's current population.
    min_share
        Floor of every share.
    fu_counts
        The formula-unit counts that fit ``max_atoms`` (None: no formula-unit shares).

    Returns
    -------
    dict
        ``{"sources": ..., "operators": ..., "formula_units": {"1": share, ...}}`` (empty
        where a source is not used).
    """
    from cspflow.generate.evolve import adapt_weights, formula_unit_stats, operator_stats
    from cspflow.generate.sources import Mutation
    from cspflow.store import candidate_stats

    docs = [
        d
        for d in candidate_stats.source_records(db, campaign, max_iteration=iteration - 1)
        if d.get("formula") == formula
    ]
    stats = operator_stats(docs, population=population)
    weights = adapt_weights(sources, stats, min_share)
    operator_weights: dict[str, float] = {}
    if sources.get("mutation"):
        base = mutation_options.get("operators") or Mutation().operators
        ops = {k: v for k, v in stats.items() if k.startswith("mutation:")}
        operator_weights = adapt_weights(dict(base), ops, min_share)
    fu_weights: dict[str, float] = {}
    if sources.get("random_symmetric") and fu_counts and len(fu_counts) > 1:
        fu_weights = adapt_weights(
            {str(f): 1.0 for f in fu_counts}, formula_unit_stats(docs, population), min_share
        )
    return {"sources": weights, "operators": operator_weights, "formula_units": fu_weights}


def arm_allocation(
    db: Any,
    campaign: str,
    iteration: int,
    target: Any,
    spacegroup_prior: str | dict[int, float],
    prior_mix: float,
    window: float,
    strength: float,
    seed: int,
) -> dict[str, Any]:
    """The bandit's arm shares for ``iteration`` from the campaign's earlier candidates of the
    target's formula (:func:`cspflow.generate.allocation.bandit_shares`).

    Returns
    -------
    dict
        :func:`cspflow.generate.allocation.top_arms`'s record plus ``shares`` (every arm).
    """
    from cspflow.generate.allocation import bandit_shares, top_arms
    from cspflow.store import candidate_stats

    docs = [
        d
        for d in candidate_stats.source_records(db, campaign, max_iteration=iteration - 1)
        if d.get("formula") == target.formula
    ]
    shares, outcomes = bandit_shares(
        target, docs, spacegroup_prior, prior_mix, window, strength, derive_seed(seed, "arms")
    )
    return {**top_arms(shares, outcomes), "shares": shares}


@dataclass
class GenerateMaker(Maker):
    """Make the generate job of a campaign iteration.

    Parameters
    ----------
    name
        Job name.
    settings
        The stage's :class:`~cspflow.schemas.generate.GenerateSettings` (``per_iteration`` new
        unique candidates, source weights, constraints, time limit, parent pool, source
        options); a campaign passes its spec's ``generate`` block.
    max_atoms
        Largest cell (a campaign passes its spec's ``max_atoms``).
    """

    name: str = "generate"
    settings: GenerateSettings = field(default_factory=GenerateSettings)
    max_atoms: int = CampaignSpec.model_fields["max_atoms"].default

    def make(
        self,
        composition: str,
        campaign: str | None = None,
        iteration: int | None = None,
        seed: int | None = None,
    ) -> Job:
        """Return the job for one iteration, with ``stage``/``campaign``/``iteration`` metadata.

        Without a seed, one is derived from (composition, campaign, iteration), so every
        iteration draws new structures and a rerun of the same iteration draws the same ones.
        """
        if seed is None:
            seed = derive_seed(composition, campaign, iteration)
        s = self.settings
        j = generate_candidates(
            composition,
            s.per_iteration,
            self.max_atoms,
            sources=dict(s.sources),
            seed=seed,
            campaign=campaign,
            iteration=iteration,
            constraints=dict(s.constraints),
            time_limit=s.time_limit,
            parent_pool=s.parent_pool,
            source_options={
                **s.source_options,
                "template": {**s.template.model_dump(), **s.source_options.get("template", {})},
            },
            spacegroup_prior=s.spacegroup_prior,
            prior_mix=s.prior_mix,
            wyckoff=s.wyckoff,
            niche_distance=s.niche_distance,
            adaptive=s.adaptive,
            min_share=s.min_share,
            bandit=s.bandit,
            bandit_window=s.bandit_window,
            bandit_strength=s.bandit_strength,
        )
        j.name = self.name
        j.metadata.update(stage_metadata("generate", campaign, iteration))
        return j
