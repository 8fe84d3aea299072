"""
# Delete the old cluster after a major upgrade

The seed's last step ("only after verifying 16 is working well"), made safe. pg_upgrade has no option that
deletes the old cluster; it writes `delete_old_cluster.sh`, which this DAG runs.

## Prerequisites
A successful upgrade run (its journal says clients were let into the new cluster); the new cluster running;
no postmaster in the old data directory.

## Impact
None on the serving cluster. Afterwards the only way back to the old major is the backup (the rollback DAG then
restores it, with `accept_data_loss`).

## Steps
1. `validate_params`, `acquire_lock`.
2. `check` — the run finished an upgrade and was not rolled back; `confirm_delete` equals the old data
   directory exactly, or is left empty (a person approves next); the new cluster has served at least
   `min_age_hours` (default 24); the new cluster runs and the old one does not.
3. `approve_delete` — a person decides in the Airflow UI (*Required actions*, or the REST API's `hitlDetails`):
   **Approve** → delete; **Reject**, or no answer within `decision_timeout_s` → nothing is deleted (the delete
   is skipped, the run ends green). Not asked — it ends at once — when `confirm_delete` names the old data
   directory (automation). Who decided is journaled (`approve_delete` step; `old_cluster_deleted` in the upgrade
   run's journal).
4. `delete_old_cluster` — journals the deletion in the upgrade run's state first, then runs
   `delete_old_cluster.sh` (tablespace subdirectories included) and removes the old data directory.
5. `release_lock`.

## Rollback
Nothing to roll back: every check runs before anything is deleted.

## Success criteria
The old data directory is gone; the new cluster still serves.

## Trigger
`airflow dags trigger pg_major_upgrade_cleanup --conf '{"postgres_conn_id": "pg_main",
"upgrade_dag_id": "pg15_to_pg16_upgrade", "upgrade_run_id": "<run id>",
"confirm_delete": "/var/lib/postgresql/15/main"}'` (without `confirm_delete`: approve in the UI)
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, TriggerRule, task
from airflow.sdk.exceptions import AirflowFailException

from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import failure, hitl, tasks
from pgupgrade.major import cleanup, fields

F = fields.CLEANUP_FIELDS

with DAG(
    dag_id="pg_major_upgrade_cleanup",
    description="Deletes the old cluster after a verified major upgrade (explicit confirmation, minimum age)",
    doc_md=__doc__,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["postgresql", "upgrade", "major", "cleanup"],
    default_args={"owner": "dba", "retries": 0},
    params=airflow_context.airflow_params(F),
) as dag:
    validate = task(task_id="validate_params")(lambda: airflow_context.validated(F) and "params valid")()
    lock = tasks.step_task(
        "acquire_lock",
        lambda ctx: ctx.lock.acquire(ctx.dag_id, ctx.run_id, failure.dagrun_alive),
        fields=F,
        doc="Per-cluster lock.",
    )
    check = tasks.step_task(
        "check",
        lambda ctx: cleanup.cleanup_check(ctx, ask=hitl.can_ask()),
        fields=F,
        doc="Confirmation, minimum age, new running, old stopped.",
    )
    approve = hitl.DecisionApproval(
        task_id="approve_delete",
        fields=F,
        question=cleanup.delete_decision,
        doc_md="A person approves the deletion (not asked when confirm_delete names the old data directory); "
        "Reject or no answer in time: nothing deleted.",
    )
    delete = tasks.step_task(
        "delete_old_cluster", cleanup.delete_old_cluster, fields=F, doc="delete_old_cluster.sh, then rm."
    )

    @task(task_id="release_lock", trigger_rule=TriggerRule.ALL_DONE)
    def release_lock() -> str:
        ctx = airflow_context.run_context(F)
        ctx.lock.release(ctx.dag_id, ctx.run_id)
        failed = failure.failed_tasks()
        if failed:
            raise AirflowFailException(f"tasks failed: {', '.join(failed)}")
        return "done"

    validate >> lock >> check >> approve >> delete >> release_lock()
