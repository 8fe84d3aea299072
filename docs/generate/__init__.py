"""Generates the upgrade guides in docs/operations/upgrade/ so that they cannot drift from what runs.

    python docs/generate            # (re)write the pages
    python docs/generate --check    # write nothing; exit 1 and name the stale pages

Sources, per page:

- a guide with a DAG: the DAG as Airflow parses it (``DagBag(dag_folder="dags")``, no metadata database): its
  doc_md (the runbook's Prerequisites, Impact, Steps, Rollback, Success criteria, Trigger), its tasks in
  topological order grouped by TaskGroup with their doc_md, its params (``dag.params``: type, default, enum,
  description, section), the rollback DAG its ``trigger_rollback`` task starts, the plan's outage estimate
  (``pgupgrade.major.plan.estimate_outage`` and friends, evaluated, not retyped) and a trigger example built from the
  params' defaults;
- the compatibility pages: the catalogs of a throwaway PostgreSQL in which every version of the pg_tviews
  stand-in (tests/extension/pg_tviews) is created, plus probes run against it (calls, ALTER EXTENSION UPDATE
  next to dependent objects, a dump restored), all rolled back or thrown away;
- the prose pages (index, testing, troubleshooting): templates in docs/templates/ whose ``{{task:…}}`` and
  ``{{param:…}}`` references are resolved against the DAGs, so a renamed task or param fails the generator.

A page whose inputs are missing (a DAG not defined yet, no PostgreSQL installed) is not written and is listed as
"not generated"; ``--check`` fails only for pages that could be generated and differ from the files.

Modules, by the part of the guides they render:

- ``pages``: the list of pages, the header every page starts with; ``markup``: Markdown helpers;
- ``dags``: the DAGs as Airflow parses them, their task and parameter tables;
- ``guide``: a DAG's guide page and its sections (``estimates``: Estimated Time and the method's drivers;
  ``settings``: Configuration carried over);
- ``templates``: the prose pages, placeholders resolved;
- ``facts`` and ``probes``: what a scratch PostgreSQL says about every pg_tviews version (catalogue queries in
  ``include/sql/``); ``diffs``: the differences between two versions;
- ``compat`` (shared), ``api``, ``breaking``, ``sql_compat``: the compatibility pages;
- ``library``: the only module that names modules of the pgupgrade library;
- ``cli``: builds every page, ``--check``.
"""

from .markup import iter_headings
from .pages import GUIDES, PAGES

__all__ = ["GUIDES", "PAGES", "iter_headings"]
