"""Imports every module of the library, for a process that forks workers which will need them: the
dag-processor parses each DAG file in a process forked from itself, and what it imported before the fork is not
imported again (``plugins/airflow_local_settings.py`` imports this module in every Airflow process)."""

from __future__ import annotations

import importlib
import pkgutil

import pgupgrade

for _info in pkgutil.walk_packages(pgupgrade.__path__, prefix="pgupgrade."):
    if _info.name != __name__:
        importlib.import_module(_info.name)
