"""
# Rollback of a PostgreSQL major upgrade

Triggered automatically (run id `rollback__<upgrade run id>`) when any task of `pg15_to_pg16_upgrade`,
`pg16_to_pg17_upgrade` or `pg17_to_pg18_upgrade` fails, or by hand after a successful run while its backup
exists (clients have written to the new cluster: a person decides in the Airflow UI, or `accept_data_loss`).

## Prerequisites
The upgrade run's state directory (journal, plan, facts, backup manifest). Unpaused on creation.

## Steps
1. `validate_params`, `take_lock` (taken over from the failed upgrade run).
2. `assess` — refuses an upgrade run already rolled back (the old cluster serves clients again); else the path,
   from the upgrade run's journal and the old data directory, logged with its reason:
   - `old_running`: the old cluster was never stopped → give logins back;
   - `old_intact`: no transfer began, or copy/clone/dump-restore (old files never written) → stop the new
     cluster, start the old one;
   - `restore_pg_control`: link mode, `pg_control.old` present, the new cluster never started → rename it back,
     start the old one;
   - `restore_backup`: link mode after the new cluster started (or unknown), swap mode after the transfer began →
     move the old data directory aside (never deleted) and rebuild it: from the run's base backup plus the WAL
     segments the old data directory kept from the backup's start on (its replication slot), started privately
     first — crash recovery must replay past the old cluster's shutdown checkpoint (LSN recorded at `stop_old`),
     so every write up to the stop is back; without that WAL (e.g. the old directory deleted), initdb the old
     major and restore the logical backup, refused when data changed after it unless `accept_data_loss`.
     The rebuild copies the base backup (kept for a retry): refused first when its size is not free there.
     When clients wrote into the opened new cluster (whatever the way), their logins are given back and a person
     decides next — unless `accept_data_loss` answered beforehand.
3. `choose_path` — follows the path; when clients wrote into the opened new cluster, a person decides first in
   the Airflow UI (*Required actions*, or the REST API's `hitlDetails`; the new version serves meanwhile):
   **discard the writes and roll back** (the loss accepted, with who accepted it, goes to the report), or **keep
   the new version serving** — also taken when nobody answers within `decision_timeout_s`: `keep_new` ends the
   run failed with nothing changed (lock released). Under `airflow dags test` nobody can answer: `assess` refuses
   (as without this question) unless `accept_data_loss`.
4. `bring_back_old` or `restore_from_backup` (logins stay blocked), then `verify_old`: the old version serves
   with facts equal to the snapshot taken before the stop; the WAL-keeping slot is dropped; only then are
   logins given back.
5. `standbys_back` — every standby the upgrade stopped, back on the old major and proven streaming: restarted
   when its old data directory is intact (rsync'd but never started on the new major: `pg_control` renamed back;
   or not rsynced at all), else — it started on the new major, whose files are hard links of its old ones, or it
   does not stream again — re-cloned by `pg_basebackup` from the old primary, its own top-level files
   (configuration, `standby.signal`, logs) kept; the old primary's physical slots recreated first.
6. `report`; `finish` releases the lock — or, when the rollback itself failed, keeps it marked *needs
   attention* so no run touches the cluster until a person has looked.

## Trigger by hand
`airflow dags trigger pg_major_upgrade_rollback --conf '{"upgrade_dag_id": "pg15_to_pg16_upgrade",
"upgrade_run_id": "<run id>", "postgres_conn_id": "pg_main", "accept_data_loss": true}'`
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TriggerRule, task

from pgupgrade import decisions, recovery
from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import dags as ad
from pgupgrade.airflow import failure, hitl, tasks
from pgupgrade.major import rollback, standbys

F = [*recovery.FIELDS, decisions.DECISION_TIMEOUT]


def _step(task_id: str, fn: Any, doc: str, **kw: Any) -> Any:
    return tasks.step_task(task_id, fn, fields=F, doc=doc, **kw)


with ad.rollback_dag(
    "pg_major_upgrade_rollback",
    description="Brings the old major back: path decided from facts on disk",
    doc_md=__doc__,
    tags=["upgrade", "major"],
    fields=F,
) as dag:
    validate = task(task_id="validate_params")(lambda: airflow_context.validated(F) and "params valid")()
    lock = _step(
        "take_lock",
        lambda ctx: ctx.lock.acquire(
            ctx.dag_id,
            ctx.run_id,
            failure.dagrun_alive,
            heir_of=(ctx.params["upgrade_dag_id"], ctx.params["upgrade_run_id"]),
        ),
        "Takes the cluster lock over from the upgrade run.",
    )

    @task(task_id="assess", doc_md="Decides the path from the journal and the old data directory.")
    def assess() -> str:
        ctx = airflow_context.run_context(F)
        decision = tasks.journaled(
            ctx.state,
            "assess",
            lambda: rollback.decide(
                ctx.upgrade_run,
                ctx.cluster,
                ctx.host,
                accept_data_loss=ctx.params["accept_data_loss"],
                ask=hitl.can_ask(),
            ),
        )
        ctx.state.save("decision", decision)
        print(f"rollback path: {decision['path']} — {decision['why']}")
        return str(decision["path"])

    choose = hitl.DataLossDecision(
        task_id="choose_path",
        fields=F,
        path_task=lambda d: (
            "restore_from_backup" if d["path"] == rollback.RollbackPath.RESTORE_BACKUP else "bring_back_old"
        ),
        keep_task="keep_new",
        doc_md="Follows the path; a person decides first when clients wrote to the opened new cluster (discard "
        "their writes, or keep the new version serving: also the timeout's choice).",
    )
    keep = _step(
        "keep_new",
        lambda ctx: decisions.keep_new_serving(ctx.state),
        "The writes after opening are kept: the run ends failed, nothing changed; the new version serves on.",
    )

    back = _step(
        "bring_back_old",
        lambda ctx: rollback.bring_back_old(ctx.state.load("decision")["path"], ctx.upgrade_run, ctx.cluster, ctx.host),
        "Stops the new cluster, restores pg_control if needed, starts the old one (logins still blocked).",
    )
    restore = _step(
        "restore_from_backup",
        lambda ctx: recovery.restore_from_backup(
            ctx.upgrade_run,
            ctx.cluster,
            ctx.host,
            accept_data_loss=ctx.params["accept_data_loss"],
            opened_changes=decisions.opened_changes_to_weigh(ctx.state.load("decision")),
        ),
        "Old data directory moved aside; rebuilt from the base backup + its WAL, or initdb + logical backup.",
    )
    verify = _step(
        "verify_old",
        lambda ctx: rollback.verify_old(ctx.upgrade_run, ctx.cluster, ctx.host),
        "The old version serves with facts equal to the snapshot; then logins are given back.",
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
    )
    standbys_back = _step(
        "standbys_back",
        standbys.standbys_back,
        "Every standby the upgrade stopped, back on the old major and streaming: restarted when its old directory "
        "is intact, else re-cloned by pg_basebackup from the old primary; nothing without standbys.",
    )
    report = _step(
        "report",
        lambda ctx: recovery.write_report(ctx),
        "JSON + Markdown report with the path and why.",
        trigger_rule=TriggerRule.ALL_DONE,
    )

    finish = failure.rollback_finish(F, read_only=frozenset({"assess", "choose_path", "keep_new"}))
    validate >> lock >> assess() >> choose >> [back, restore, keep]
    [back, restore] >> verify >> standbys_back >> report >> finish
    keep >> report
