"""The generate stage as a jobflow job: one batch per campaign iteration, registered in MongoDB."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobflow import Job, Maker, job

from cspflow.jobs import stage_metadata
from cspflow.schemas.campaign import CampaignSpec
from cspflow.schemas.generate import GenerateSettings

__all__ = ["GenerateMaker", "generate_candidates", "derive_seed"]

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
) -> dict[str, Any]:
    """Generate ``n`` new unique candidates and register them in the campaign database.

    Reads the database settings at run time (:func:`cspflow.settings.get_settings`). Mutation
    parents are the ``parent_pool`` lowest-energy stored candidates of the formula. Rerunning
    the job of a (campaign, iteration) that already holds ``n`` candidates generates nothing
    and returns their ids; a partial earlier run is topped up.

    Returns
    -------
    dict
        A :class:`~cspflow.schemas.candidate.GenerateSummary` as a dict (ids and counts only).
    """
    from cspflow.dedup.index import MongoIndex
    from cspflow.generate.batch import generate_batch, load_parents
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
    if weights and "template" in weights:
        from cspflow.generate.templates import with_stored_templates

        weights, source_options = with_stored_templates(
            db, target, dict(weights), n - len(done), source_options
        )
    context = SourceContext(
        constraints=Constraints(**(constraints or {})),
        parents=load_parents(db, target.formula, parent_pool)
        if (sources or {}).get("mutation")
        else [],
        time_limit=time_limit,
    )
    result = generate_batch(
        target,
        n - len(done),
        MongoIndex(db),
        sources=weights,
        seed=seed,
        context=context,
        source_options=source_options,
        campaign=campaign,
        iteration=iteration,
    )
    summary = result.summary
    assert summary is not None  # generate_batch always sets it
    summary.requested = n
    summary.candidate_ids = done + summary.candidate_ids
    return summary.model_dump()


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
            source_options={**s.source_options, "template": {**s.template.model_dump(),
                            **s.source_options.get("template", {})}},
        )  # fmt: skip
        j.name = self.name
        j.metadata.update(stage_metadata("generate", campaign, iteration))
        return j
