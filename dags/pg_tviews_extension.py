"""
# pg_tviews extension update (0-1-to-0-2 migration and minor update)

Two DAGs from one factory: `pg_tviews_0_1_to_0_2_migration` (the seed's *0.1-to-0.2-migration.md*: 0.1.x with
x ≥ 5 → 0.2.x, breaking API changes) and `pg_tviews_minor_update` (*extension-minor-update.md*: within one
series, e.g. 0.1.5 → 0.1.6). Each task is a step of the guide; the logic is in `pgupgrade.extension`, and every
extension name comes from the profile in `include/config/extension_profiles.json`. Steps that do not apply to a
version (compatibility of removed functions, statistics) find nothing to do.

## Prerequisites
- The Airflow postgres connection of the cluster (`postgres_conn_id`, extra `pg_bindir`, `pg_datadir`, `os_user`).
- The target's extension files, per `extension_source`:
  - `installed`: already in `$(pg_config --sharedir)/extension` (the plan checks `pg_extension_update_paths`),
    and the control file's `default_version` still the installed version (a rollback's restore needs it);
  - `copy`: the Airflow Variable `pgupgrade_extension_source_dir` holds a JSON string, an absolute directory with
    `{version}` in it (e.g. `"/srv/pg_tviews/{version}"`) holding `pg_tviews.control`, `pg_tviews--*.sql` (and
    libraries `*.so`); the previous version's directory must exist too (for the rollback);
  - `command`: the Variable `pgupgrade_extension_install_command` holds a JSON argv list with `{version}`
    (e.g. `["/usr/bin/sudo", "/usr/local/sbin/install-pg-tviews", "{version}"]`), run as root; the rollback runs it
    with the previous version. Neither Variable can be set from the trigger conf.
- Free space for one custom-format dump per database (`backup_dir`, new or empty).
- The rollback DAG `pg_tviews_extension_rollback` unpaused (checked first).
- Applications in read-only mode, or able to live with stale TVIEWs while the triggers are off.

## Impact
No server restart. From *disable_triggers* to *enable_triggers* the TVIEWs are not maintained (writes to backing
tables do not reach the queue); the forced refresh afterwards rebuilds every TVIEW. `ALTER EXTENSION … UPDATE`
locks the extension's objects for the length of one transaction per database.

## Steps
1. **plan** — `check_rollback_dag`, `validate_params`, `acquire_lock` (per cluster), `plan`: databases (default:
   all with the extension), installed version (0.1.x ≥ 0.1.5 for the migration, same series for the minor
   update), update path, metadata rows with missing backing tables (refused), compatibility (views, functions,
   procedures using a removed or re-created function: `pg_depend` on rewrite rules and bodies, plus a word search
   of late-bound function bodies — bound ones always refuse because the update script cannot drop the function
   under them; with `strict_compat` every finding refuses), rollback readiness, backup space. `dry_run_gate`.
   A refusal writes a report with the findings; nothing was changed.
2. **prepare** — `backup` (`pg_dump -Fc` per database, `pg_restore -l` lists it: entry count recorded and the
   metadata table's `TABLE DATA` entry present; checksummed; row counts and write counters recorded),
   `document_state` (metadata rows, TVIEW columns and row counts, scan times: `state_before.json` in the run state
   and rows in `pgupgrade.extension_snapshot` in each database — kept as the audit trail; drop the schema
   `pgupgrade` when not wanted).
3. **stop** — `disable_triggers` (every trigger with the profile's prefix: previous `pg_trigger.tgenabled` saved
   first, then disabled, schema-qualified, one transaction per database), `wait_queue_empty` (sensor),
   `final_backup_check` (files unchanged, TOC readable).
4. **upgrade** — `install_files` (per `extension_source`), `update_extension`: per database ONE transaction with
   `ALTER EXTENSION pg_tviews UPDATE TO '<target>'` and `include/sql/upgrade-extension.sql` (every metadata row
   survived with its backing table, `source_hash` filled where NULL, removed functions gone; raises otherwise).
   Never `DROP EXTENSION … CASCADE`.
5. **verify** — `verify_extension`: version (catalog and `pg_tviews_version()`), new columns, new functions
   answer, removed functions and columns gone, metadata rows unchanged.
6. **reenable** — `enable_triggers` (exactly the triggers enabled before, in their mode; disabled ones stay so),
   `refresh_tviews` (force, positional arguments), `check_stats` (every TVIEW in `pg_tviews_stats()` with all
   values set), `validate_tviews` (`pg_tviews_validate()` returns no issues but those of TVIEWs whose trigger was
   disabled before the run).
7. **wrapup** — `performance` (scan time of each TVIEW vs before, `perf_threshold_pct`, `perf_action`),
   `final_checklist` (`checks.health`), `report` (JSON + Markdown).

## Rollback
Any failed task → `handover_lock` → `trigger_rollback` starts `pg_tviews_extension_rollback` (run id
`rollback__<run_id>`); `finish` then fails the run. The DAG-level failure callback triggers the same run id via
the REST API as a backstop. See the rollback DAG for what it does per database.

## Success criteria
Extension at the target in every database in scope; new columns and functions present, removed ones gone;
metadata rows unchanged; triggers exactly as before; every TVIEW refreshed with stats and no validate issues;
scan times within the threshold; report written.

## Schedule and alerts
Runs on the maintenance window of `include/config/windows.json` once unpaused (paused on creation). A scheduled
run only dispatches: it reads `include/config/clusters.json` when it runs and starts one run per cluster whose
entry names this DAG (`"dags": {"pg_tviews_minor_update": {"target_version": "0.1.6"}}`), run id
`window__<conn_id>__<window start>`. A cluster whose extension is already at the target ends green at
`dry_run_gate`, untouched. A run still going one window length after it was queued raises a deadline alert
(DeadlineAlert; needs `airflow triggerer`) through the `pgupgrade_notify` channels.

## Trigger
`airflow dags trigger pg_tviews_0_1_to_0_2_migration --conf '{"postgres_conn_id": "pg_main",
"backup_dir": "/backups/pg_tviews-0.2"}'`
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, TaskGroup

from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import dags as ad
from pgupgrade.airflow import failure, tasks
from pgupgrade.airflow import schedule as sched
from pgupgrade.extension import after, fields, plan, update

ROLLBACK_DAG_ID = fields.ROLLBACK_DAG_ID


def build(dag_id: str, spec: dict[str, Any], params: list[Any], description: str) -> DAG:
    def step(task_id: str, fn: Any, doc: str, **kw: Any) -> Any:
        return tasks.step_task(task_id, fn, fields=params, spec=spec, doc=doc, **kw)

    with ad.upgrade_dag(
        dag_id,
        description=description,
        doc_md=__doc__,
        tags=["extension", "pg_tviews"],
        fields=params,
        rollback_dag_id=ROLLBACK_DAG_ID,
    ) as dag:
        with TaskGroup("plan") as g_plan:
            _plan_task, gate = tasks.plan_phase(
                fields=params,
                spec=spec,
                rollback_dag_id=ROLLBACK_DAG_ID,
                make_plan=lambda ctx: plan.plan(ctx, airflow_context.admin_json_variable),
                plan_doc="Versions, update path, compatibility, metadata, rollback readiness, space; no side effects.",
                cross_checks=lambda p: fields.check_target(spec, p["target_version"]),
            )

        with TaskGroup("prepare") as g_prepare:
            bkp = step(
                "backup",
                update.take_backup,
                "pg_dump -Fc per database, listed with pg_restore -l (metadata TABLE DATA present), checksummed.",
            )
            doc = step(
                "document_state",
                update.document_state,
                "Metadata rows, TVIEW columns and row counts, scan times: JSON in the run state and a table per DB.",
            )
            bkp >> doc

        with TaskGroup("stop") as g_stop:
            dis = step(
                "disable_triggers",
                update.disable_triggers,
                "Saves every prefixed trigger's state, then disables the enabled ones.",
            )
            queue = tasks.sensor_task(
                "wait_queue_empty",
                update.queue_empty,
                fields=params,
                spec=spec,
                timeout_param="queue_wait_timeout_s",
                doc="The extension's queue is empty.",
            )
            final = step("final_backup_check", update.final_backup_check, "Backup files unchanged, TOC still readable.")
            dis >> queue >> final

        with TaskGroup("upgrade") as g_upgrade:
            inst = step(
                "install_files",
                update.install_target_files,
                "The target's files per extension_source (installed: nothing to do).",
            )
            upd = step(
                "update_extension",
                update.update_extension,
                "Per database one transaction: ALTER EXTENSION ... UPDATE + upgrade-extension.sql.",
            )
            inst >> upd

        with TaskGroup("verify") as g_verify:
            step(
                "verify_extension",
                update.verify_extension,
                "Version, new columns and functions, removed ones gone, metadata rows unchanged.",
            )

        with TaskGroup("reenable") as g_reenable:
            en = step(
                "enable_triggers",
                update.enable_triggers,
                "Exactly the triggers enabled before, in their mode.",
            )
            rf = step("refresh_tviews", after.refresh_tviews, "Every TVIEW refreshed with force.")
            st = step("check_stats", after.check_stats, "Stats populated for every TVIEW.")
            va = step("validate_tviews", after.validate_tviews, "validate function: no issues.")
            en >> rf >> st >> va

        with TaskGroup("wrapup") as g_wrapup:
            pf = step("performance", after.performance, "TVIEW scan times vs before.")
            chk = step("final_checklist", after.final_checklist, "checks.health per database.")
            rep = step("report", after.write_report, "JSON + Markdown report.")
            pf >> chk >> rep

        g_plan >> g_prepare >> g_stop >> g_upgrade >> g_verify >> g_reenable >> g_wrapup
        gate >> g_prepare
        failure.failure_tail(dag, ROLLBACK_DAG_ID, params)
        sched.scheduled_dispatch(params, before=g_plan)
    return dag


pg_tviews_0_1_to_0_2_migration = build(
    fields.MIGRATION_DAG_ID,
    {"kind": "series", "from_series": "0.1", "to_series": "0.2"},
    fields.FIELDS,
    "pg_tviews 0.1.x (≥ 0.1.5) → 0.2.x: backup, triggers off, ALTER EXTENSION UPDATE + migration, verify, rollback",
)
pg_tviews_minor_update = build(
    fields.MINOR_DAG_ID,
    {"kind": "minor"},
    fields.MINOR_FIELDS,
    "pg_tviews update within one series (e.g. 0.1.5 → 0.1.6): same runbook, automatic rollback",
)
