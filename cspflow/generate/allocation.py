"""Adaptive allocation of ``random_symmetric``'s draws over (space group, formula units) arms:
a Thompson-sampling bandit whose prior is the space-group prior.

Arms. For a composition, every (group ``g``, formula units ``f``) with ``f`` a formula-unit
count that fits ``max_atoms`` and ``g`` a group that can hold that primitive cell
(:func:`cspflow.generate.sources.compatible_space_groups`); key ``"g:f"``. Prior probability
``pi(g, f) = P(g | f) / n_f``: the spec's space-group prior (with its uniform mix) under a
uniform draw of the ``n_f`` formula-unit counts.

Reward. A ``random_symmetric`` candidate of an earlier iteration is a success for the arm it
was drawn from when its relaxed MLIP energy per atom lies within ``window`` of the lowest
energy of its composition in the campaign (any source; the current lowest, so an arm that found
an old best that a later structure beat is charged a failure from then on); a failure when it
relaxed higher or failed; not counted while it is not relaxed. The arm is the *drawn* one: a
relaxation often leaves the group it started in, and what the allocation needs is which draws
lead to low minima, not which group they end in.

Posterior and allocation. Each arm's success probability ``theta_a`` has the prior
``Beta(m pi_a, m (1 - pi_a))`` (``m`` = ``strength``: the prior weighs as much as ``m``
relaxations of each arm, with the prior probability as their success rate) and the posterior
``Beta(m pi_a + s_a, m (1 - pi_a) + f_a)``. The next iteration's share of an arm is the
probability that it has the largest ``theta`` (Thompson sampling's allocation, estimated from
``draws`` posterior samples with a seeded generator), mixed with the prior
(``explore`` of the share): a success raises its arm's share many-fold, failures lower it
slowly, untried arms keep roughly their prior share.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cspflow.generate.composition import Target

__all__ = [
    "arm_key",
    "arm_prior",
    "arm_outcomes",
    "thompson_shares",
    "bandit_shares",
    "target_arms",
    "top_arms",
]


def arm_key(spacegroup: int, formula_units: int) -> str:
    """The key of an arm: ``"group:formula units"``."""
    return f"{int(spacegroup)}:{int(formula_units)}"


def arm_prior(
    target: Target, spacegroup_prior: str | dict[int, float], prior_mix: float
) -> dict[str, float]:
    """``pi(g, f)`` of every arm of ``target`` (module docstring), summing to 1."""
    from cspflow.generate.priors import spacegroup_probabilities
    from cspflow.generate.sources import compatible_space_groups

    out: dict[str, float] = {}
    counts = [f for f in target.fu_counts if compatible_space_groups(tuple(target.num_ions(f)))]
    for f in counts:
        ions = target.num_ions(f)
        groups = compatible_space_groups(tuple(ions))
        p = spacegroup_probabilities(groups, len(ions), spacegroup_prior, prior_mix, sum(ions))
        for g, pg in zip(groups, p, strict=True):
            out[arm_key(g, f)] = float(pg) / len(counts)
    return out


def arm_outcomes(docs: Iterable[dict[str, Any]], window: float) -> dict[str, tuple[int, int]]:
    """Successes and failures per arm of a composition's earlier candidates.

    Parameters
    ----------
    docs
        The composition's candidates (any source; ``source``, ``params.spacegroup``,
        ``params.formula_units``, ``status``, ``energy_per_atom.mlip``): every relaxed energy
        sets the lowest, the ``random_symmetric`` ones are scored.
    window
        eV/atom above the lowest energy that still counts as a success.

    Returns
    -------
    dict
        ``{"g:f": (successes, failures)}`` for the arms with a scored candidate.
    """
    docs = list(docs)
    energies = [
        float(e)
        for d in docs
        if d.get("status") != "failed"
        and (e := (d.get("energy_per_atom") or {}).get("mlip")) is not None
    ]
    best = min(energies) if energies else None
    out: dict[str, list[int]] = {}
    for d in docs:
        params = d.get("params") or {}
        if d.get("source") != "random_symmetric" or params.get("spacegroup") is None:
            continue
        if params.get("formula_units") is None:
            continue
        e = (d.get("energy_per_atom") or {}).get("mlip")
        failed = d.get("status") == "failed"
        if e is None and not failed:
            continue  # not relaxed yet
        row = out.setdefault(arm_key(params["spacegroup"], params["formula_units"]), [0, 0])
        if not failed and e is not None and best is not None and float(e) <= best + window:
            row[0] += 1
        else:
            row[1] += 1
    return {k: (s, f) for k, (s, f) in out.items()}


def thompson_shares(
    prior: dict[str, float],
    outcomes: dict[str, tuple[int, int]],
    strength: float,
    rng: np.random.Generator,
    draws: int = 4000,
    explore: float = 0.1,
) -> dict[str, float]:
    """Next shares of the arms: P(arm has the largest theta) under the Beta posteriors, mixed
    with the prior (module docstring).

    Parameters
    ----------
    prior
        ``pi`` per arm (summing to 1).
    outcomes
        ``(successes, failures)`` per arm (arms not in ``prior`` are ignored).
    strength
        ``m``: prior pseudo-relaxations per arm.
    rng
        Seeded generator of the posterior samples.
    draws
        Posterior samples.
    explore
        Share of the prior mixed in.

    Returns
    -------
    dict
        Share per arm of ``prior``, summing to 1.
    """
    keys = list(prior)
    if not keys:
        return {}
    pi = np.array([prior[k] for k in keys], dtype=float)
    pi = pi / pi.sum()
    s = np.array([outcomes.get(k, (0, 0))[0] for k in keys], dtype=float)
    f = np.array([outcomes.get(k, (0, 0))[1] for k in keys], dtype=float)
    alpha = np.maximum(strength * pi, 1e-6) + s
    beta = np.maximum(strength * (1.0 - pi), 1e-6) + f
    theta = rng.beta(alpha, beta, size=(draws, len(keys)))
    wins = np.bincount(np.argmax(theta, axis=1), minlength=len(keys)) / draws
    share = (1.0 - explore) * wins + explore * pi
    share = share / share.sum()
    return {k: float(x) for k, x in zip(keys, share, strict=True)}


def bandit_shares(
    target: Target,
    docs: Iterable[dict[str, Any]],
    spacegroup_prior: str | dict[int, float],
    prior_mix: float,
    window: float,
    strength: float,
    seed: int,
) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    """Shares of every arm of ``target`` after the candidates ``docs``, and their outcomes.

    The posterior samples come from ``numpy.random.default_rng(seed)``: the same candidates and
    seed give the same shares.
    """
    prior = arm_prior(target, spacegroup_prior, prior_mix)
    outcomes = arm_outcomes(docs, window)
    shares = thompson_shares(prior, outcomes, strength, np.random.default_rng(seed))
    return shares, outcomes


def target_arms(target: Target, weights: dict[str, float]) -> list[tuple[int, int, float]]:
    """``(formula units, group, weight)`` of the arms of ``weights`` that ``target`` can draw
    (a positive weight, a formula-unit count that fits, a group that holds the cell)."""
    from cspflow.generate.sources import compatible_space_groups

    out = []
    for key, w in weights.items():
        sg, fu = (int(x) for x in key.split(":"))
        if w > 0 and fu in target.fu_counts:
            if sg in compatible_space_groups(tuple(target.num_ions(fu))):
                out.append((fu, sg, float(w)))
    return out


def top_arms(
    shares: dict[str, float], outcomes: dict[str, tuple[int, int]] | None = None, n: int = 10
) -> dict[str, Any]:
    """A small record of the allocation: the ``n`` largest shares (4 decimals), the share of
    the rest, the number of arms, and the outcomes of the arms shown."""
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = dict(ranked[:n])
    rec: dict[str, Any] = {
        "arms": len(shares),
        "top": {k: round(v, 4) for k, v in shown.items()},
        "rest": round(float(sum(v for _, v in ranked[n:])), 4),
    }
    if outcomes is not None:
        rec["outcomes"] = {k: list(outcomes[k]) for k in shown if k in outcomes}
    return rec
