"""The campaign loop: one iteration as a Flow, the job that decides to continue or stop, and the
campaign's state.

Three layers (as in dpgen2):

- the loop, :mod:`~cspflow.campaign.loop`: :func:`~cspflow.campaign.loop.decide` ends every
  iteration; it records the iteration's summary and either stops or returns
  ``Response(addition=iteration_flow(next))`` (jobflow's fibonacci idiom);
- one iteration: :func:`~cspflow.campaign.loop.iteration_flow` = generate -> prerelax fan-out
  -> select -> DFT fan-out -> hull -> [learn -> rescreen] -> decide;
- the steps: the stage Makers of :mod:`cspflow.generate`, :mod:`cspflow.prerelax`,
  :mod:`cspflow.dft`, :mod:`cspflow.hull`, :mod:`cspflow.learn` and :mod:`cspflow.rescreen`.

:mod:`~cspflow.campaign.policy` holds the pure stop rules, :mod:`~cspflow.campaign.state` every
read and write of the ``campaigns`` collection. Names are imported lazily so ``import
cspflow.campaign`` stays cheap; jobs are serialised under :mod:`cspflow.campaign.loop`.
"""

from __future__ import annotations

from cspflow._lazy import lazy_exports

_EXPORTS = {
    "iteration_flow": "loop",
    "campaign_flow": "loop",
    "prerelax_fanout": "loop",
    "prerelax_model": "loop",
    "dft_gate": "loop",
    "decide": "loop",
    "learns_in": "policy",
    "stop_reason": "policy",
    "register_campaign": "state",
    "campaign_doc": "state",
    "stored_spec": "state",
    "iteration_summary": "state",
    "dft_runs": "state",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
