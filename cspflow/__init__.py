"""cspflow: crystal structure prediction campaigns on HPC clusters.

Importing the package has no side effects; the stages live in their own modules
(generate, prerelax, dft, hull, learn, campaign) and the plumbing in store, db and scheduler.
"""

from __future__ import annotations

__version__ = "0.1.0"
