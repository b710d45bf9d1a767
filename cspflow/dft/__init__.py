"""The DFT stage: VASP and CP2K through atomate2 + custodian, GPAW through atomate2's ASE maker.

Modules, in the order a run uses them: :mod:`~cspflow.dft.presets` (named parameter sets and
the content hash), :mod:`~cspflow.dft.vasp`, :mod:`~cspflow.dft.cp2k`, :mod:`~cspflow.dft.gpaw`
(one Maker per engine), :mod:`~cspflow.dft.taskdoc` (the one reader of the engines' task
documents: result fields and ionic-step frames), :mod:`~cspflow.dft.stage` (the per-candidate
fan-out and the results on the candidate) and :mod:`~cspflow.dft.run` (structure files without a
campaign). Nothing heavy is imported here: ``from cspflow.dft.stage import DftStageMaker``.
"""
