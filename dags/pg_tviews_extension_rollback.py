"""
# Rollback of a pg_tviews extension update

Triggered automatically (run id `rollback__<upgrade run id>`) when any task of `pg_tviews_0_1_to_0_2_migration`
or `pg_tviews_minor_update` fails; or by hand with the upgrade run's ids. There is no downgrade script from 0.2
to 0.1: going back means restoring the update run's backup, which only the databases whose update committed need.

## Prerequisites
The upgrade run's state directory (plan, journal, saved trigger states, backup manifest, documented state).
Unpaused on creation.

## Steps
1. `validate_params`, `take_lock` (taken over from the upgrade run).
2. `assess` — first starts the server if none runs (it died under the run; this DAG never stops it), then per
   database, from the upgrade run's journal and the catalog, logged with its reason:
   - the update never started, or its transaction never committed (the extension is still at the old version):
     only the triggers come back;
   - the update committed: restore from the backup — unless tables changed after the backup (row counts,
     checksums with `verify_content`, write statistics) and `accept_data_loss` is not set: then path
     `keep_new`, nothing is restored, the new version stays (step 6).
   - the upgrade run stopped in its plan: nothing to do.
3. `put_back_files` — FIRST the old version's files (copy/command: the admin configuration recorded in the plan,
   run for the old version; installed: nothing to do); then, for every database to restore, the control file's
   `default_version` must be its old version (the dump's `CREATE EXTENSION` has no version).
4. `restore_databases` — `pg_restore --clean --if-exists --single-transaction` of each updated database (all or
   nothing); `pg_tviews_version()` must answer the old version.
5. `restore_triggers` — exactly the triggers the run disabled get their previous mode back; triggers that were
   disabled before the run stay disabled.
6. `verify` — every database on its old version, triggers as before; restored ones with the backup's row
   counts and exactly the metadata rows documented before the update. Path `keep_new`: the kept version is
   checked as the update run checks it (version, new columns and functions, metadata rows, the validate
   function) with its triggers back, and the run fails all the same with the refusal and the verdict on the
   kept version, so the lock waits for a person (`accept_data_loss=true` restores and loses the later writes).
7. `report`; `finish` releases the lock — or, when the rollback failed, keeps it marked *needs attention* so that
   no run touches the cluster until a person has looked.

## Trigger by hand
`airflow dags trigger pg_tviews_extension_rollback --conf '{"upgrade_dag_id": "pg_tviews_0_1_to_0_2_migration",
"upgrade_run_id": "<run id>", "postgres_conn_id": "pg_main"}'`
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TriggerRule, task

from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import dags as ad
from pgupgrade.airflow import failure, tasks
from pgupgrade.extension import fields
from pgupgrade.extension import rollback as rb

F = fields.ROLLBACK_FIELDS


def _step(task_id: str, fn: Any, doc: str, **kw: Any) -> Any:
    return tasks.step_task(task_id, fn, fields=F, doc=doc, **kw)


with ad.rollback_dag(
    fields.ROLLBACK_DAG_ID,
    description="pg_tviews back to the version before a failed update: per database from the journal",
    doc_md=__doc__,
    tags=["extension", "pg_tviews"],
    fields=F,
) as dag:
    validate = task(task_id="validate_params")(lambda: airflow_context.validated(F) and "params valid")()
    lock = _step("take_lock", failure.take_over_lock, "Takes the cluster lock over from the upgrade run.")
    assess = _step("assess", rb.decide, "Per database: restore (update committed) or triggers only, with the reason.")
    files = _step(
        "put_back_files",
        lambda ctx: rb.put_back_files(ctx, rb.decision_of(ctx)),
        "The old version's files back first; default_version checked for every database to restore.",
    )
    restore = _step(
        "restore_databases",
        lambda ctx: rb.restore_databases(ctx, rb.decision_of(ctx)),
        "pg_restore --clean --if-exists --single-transaction of each updated database.",
    )
    triggers = _step(
        "restore_triggers",
        lambda ctx: rb.rollback_triggers(ctx, rb.decision_of(ctx)),
        "The triggers the run disabled back in their previous mode.",
    )
    verify = _step(
        "verify",
        lambda ctx: rb.verify_rolled_back(ctx, rb.decision_of(ctx)),
        "Old version, triggers as before; restored databases: row counts and metadata rows as before.",
    )
    report = _step(
        "report",
        rb.write_rollback_report,
        "JSON + Markdown report with the path and why.",
        trigger_rule=TriggerRule.ALL_DONE,
    )
    validate >> lock >> assess >> files >> restore >> triggers >> verify >> report >> failure.rollback_finish(F)
