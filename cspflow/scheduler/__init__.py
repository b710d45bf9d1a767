"""Scheduling on FireWorks: submission, workers, local runs and lost-run reconciliation.

- :mod:`cspflow.scheduler.launchpad`: :class:`~cspflow.scheduler.launchpad.CspflowLaunchPad`,
  stage routing, Flow -> Workflow and submission;
- :mod:`cspflow.scheduler.workers`: the FWorker, the rapidfire loop and the one worker command
  line and environment;
- :mod:`cspflow.scheduler.local`: ``campaign submit`` / ``campaign run`` on this machine (local
  workers, the run lock, model and DFT engine checks);
- :mod:`cspflow.scheduler.reconcile`: lost runs found and rerun.
"""

from __future__ import annotations
