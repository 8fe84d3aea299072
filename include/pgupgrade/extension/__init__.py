"""Extension upgrade runbook (the seed's 0.1-to-0.2-migration.md and extension-minor-update.md): one function per
DAG task, ``fn(ctx)`` reading the run's typed plan (``ctx.plan(ExtensionPlan)``), and the rollback's functions.
Everything extension-specific comes from the ExtensionProfile.

Upgrade phases: plan (no side effects) → backup (``pg_dump -Fc`` per database, TOC verified) and documentation of
the current state → stop operations (the profile's triggers disabled, their previous state saved first; queue
empty; backup re-verified) → update (extension files per ``extension_source``; per database ONE transaction:
``ALTER EXTENSION … UPDATE`` + the profile's migration SQL) → verify → triggers back exactly as they were, forced
refresh, stats, validate → performance, checklist, report. Every destructive step journals before it acts.

Rollback: decided per database from the upgrade run's journal and the catalog (never from the conf): a database
whose update never committed only gets its triggers back; one that was updated is restored from the run's
backup (after the old extension files are back, so the dump's ``CREATE EXTENSION`` creates the old version).

Modules, by concern (none imports another runbook):

- ``fields``: DAG ids, the admin Variables, the DAGs' params, version rules (what the DAG files need at parse
  time; no database driver);
- ``source``: where the extension files come from and how one version's files are installed;
- ``catalog``: what one database's catalogs say about the extension (queries in ``include/sql/``), the profile's
  triggers, the compatibility scan;
- ``plan``: the typed plan (``ExtensionPlan``, ``RefusedPlan``, ``AtTargetPlan``) and the plan step;
- ``update``: backup, documentation, triggers off, the update, verify, triggers back;
- ``after``: refresh, statistics, validate, performance, final checklist, report;
- ``rollback``: the rollback DAG's decision (``RollbackPath``) and steps.
"""
