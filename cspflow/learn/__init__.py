"""Active learning: training sets from the campaign's DFT data, MACE training, evaluation, rounds.

- :mod:`cspflow.learn.dataset`: labelled frames from the DFT task documents, the held-out
  split, the training set, extxyz files, E0 fit.
- :mod:`cspflow.learn.replay`: replay frames of multi-head fine-tuning (never frames the new set
  holds) and the forgetting check on the parent's held-out frames.
- :mod:`cspflow.learn.train`: the ``mace_run_train`` command line and :func:`train_mace`.
- :mod:`cspflow.learn.evaluate`: held-out errors of a model and the promotion rule.
- :mod:`cspflow.learn.round`: one learning round (:func:`~cspflow.learn.round.learn`), the
  learn job and :class:`~cspflow.learn.round.LearnMaker`.

The model registry these rounds write to is :mod:`cspflow.models`; the training settings are
:class:`cspflow.schemas.learn.TrainSettings`.

Training data are the converged DFT results on ``candidates.relaxed.dft`` of a chemical system
(its subsystems included): the final frame of each relaxation and a sample of its ionic steps,
read from the engine's task document in the JobStore (``task_uuid``). The held-out split is
fixed by a hash of the candidate id, so every frame of one relaxation is on the same side and a
candidate never changes side between rounds: metrics of successive models are comparable.

No torch or MACE import here: training runs ``mace_run_train`` in a subprocess, and models are
loaded and evaluated through :mod:`cspflow.mlip`.
"""

from __future__ import annotations
