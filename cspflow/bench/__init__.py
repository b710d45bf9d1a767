"""CSP benchmark: how often an MLIP-only search finds known structures, and at what cost.

For each entry of a benchmark set (composition + reference structure file) an MLIP-only campaign
(``dft.engine: none``) runs through the real machinery (FireWorks + local workers) on a fresh
database of a dedicated embedded server in a temporary directory, which is removed afterwards.
The search is told the composition and ``max_atoms`` only: never the reference's space group,
cell or prototype (the set's ``prototype``/``spacegroup`` fields are documentation).

Modules, in the order a benchmark uses them:

- :mod:`~cspflow.bench.sets`: the set file (YAML), its entries, ``load_set``.
- :mod:`~cspflow.bench.options`: ``BenchOptions`` and the MLIP-only campaign spec of an entry.
- :mod:`~cspflow.bench.score`: scoring a campaign against its reference (``evaluate_run``),
  the summary, and the report documents.
- :mod:`~cspflow.bench.runner`: the benchmark's own server, one campaign per entry,
  ``run_benchmark``.
"""

from __future__ import annotations
