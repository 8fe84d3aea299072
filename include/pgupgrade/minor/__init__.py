"""The minor-version runbook ("PostgreSQL Minor Version Upgrade") and its rollback, one function per DAG task.

Phases: plan (no side effects) → pre-upgrade (backup, health check, versions recorded, queue empty) → stop
(block logins, wait for clients, facts snapshot, clean stop) → install (bindir | apt | command) and start →
validate (version, facts, health, TVIEWs refreshed, smoke test) → open to clients → report.

Modules, imported by what needs them (nothing is re-exported here):

- ``fields``: DAG ids, the admin Variable, ``Installer``, the params and their checks (what a DAG file needs at
  parse time; light);
- ``installers``: which binaries a cluster runs from, apt, the admin's command, other clusters on the binaries;
- ``plan``: the plan and its typed record ``MinorPlan`` (the release to go back to);
- ``prepare``: backup, pre-checks, apt prefetch, the queue empty — before the outage;
- ``cutover``: the outage-critical steps run in one task (``cutover_steps``);
- ``after``: TVIEWs refreshed, the report;
- ``rollback``: back to the recorded release, a restore only when the data directory no longer starts.

Every destructive step journals before it acts.
"""
