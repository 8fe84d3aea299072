"""Imported by every Airflow process at start-up (Airflow puts the plugins folder on ``sys.path`` and imports
``airflow_local_settings`` from it). It imports the pgupgrade library once, so that the dag-processor's parsing
processes, forked from a process that already holds it, spend their time on the DAG files' wiring instead of
importing the same library again for every file. It also installs the work-arounds for defects of the installed
Airflow (``pgupgrade.airflow.compat``: ``airflow dags test`` of a DAG with deadline alerts exits 0 after a successful
run). Defines no policy and exports nothing (``__all__``: Airflow copies every exported name into its settings
module).

Deployments that already have an ``airflow_local_settings`` add these two imports and the ``install()`` call to theirs.
"""

from __future__ import annotations

import pgupgrade.preload  # noqa: F401  (imports the library; see that module)
from pgupgrade.airflow import compat

compat.install()

__all__: list[str] = []
