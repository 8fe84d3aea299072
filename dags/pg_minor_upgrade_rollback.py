"""
# Rollback of a PostgreSQL minor-version upgrade

Triggered automatically (run id `rollback__<upgrade run id>`) when any task of `pg_minor_upgrade` fails, or by
hand after a successful run (`upgrade_run_id`): a minor release keeps the data format, so going back keeps
what clients wrote since.

## Prerequisites
The upgrade run's state directory (plan, journal, facts, backup manifest): the previous release — its bin
directory, Debian package versions or install command, and its `version()` — is read from there, never from
the Airflow connection (whose `pg_bindir` still names the old bin directory after an upgrade by bin
directory, while the cluster runs from the new one) nor from the conf. Unpaused on creation.

## Steps
1. `validate_params`, `take_lock` (taken over from the upgrade run).
2. `assess` — the path, from the upgrade run's journal, logged with its reason:
   - `nothing`: the upgrade run failed before its plan;
   - `never_stopped`: the server was never stopped → give logins back;
   - `previous_release`: stop the server if it runs (clients that were let in are blocked again, and a
     snapshot is taken first), then go back through the same installer — `bindir`: start with the recorded
     previous bin directory; `apt`: `apt-get install --allow-downgrades` of the recorded package versions;
     `command`: the admin's command for the previous version — check `postgres --version`, start.
3. `back_to_previous`, then `data_dir_starts` branches: the data directory started → `verify_previous`;
   it no longer starts → `restore_from_backup` (moved aside, never deleted; initdb with the previous binaries;
   backup restored — refused when data changed after the backup unless `accept_data_loss`).
4. `verify_previous` — `version()` equals the recorded one; facts equal the snapshot taken before the stop.
   `refresh_tviews`, `open_to_clients` (logins given back), `standbys_back` (every standby the upgrade
   switched, back on its previous release and streaming — after the primary, whose WAL it must replay).
5. `report`; `finish` releases the lock — or, when the rollback itself failed, keeps it marked *needs
   attention* so that no run touches the cluster until a person has looked.

## Success criteria
The recorded previous `version()` serves the data directory with the facts of the snapshot; TVIEWs refreshed;
logins given back.

## Trigger by hand
`airflow dags trigger pg_minor_upgrade_rollback --conf '{"upgrade_dag_id": "pg_minor_upgrade",
"upgrade_run_id": "<run id>", "postgres_conn_id": "pg_main"}'`
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TriggerRule, task

from pgupgrade import recovery
from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import dags as ad
from pgupgrade.airflow import failure, tasks
from pgupgrade.minor import fields, rollback, standbys

F = fields.ROLLBACK_FIELDS


def _step(task_id: str, fn: Any, doc: str, **kw: Any) -> Any:
    return tasks.step_task(task_id, fn, fields=F, doc=doc, **kw)


with ad.rollback_dag(
    fields.ROLLBACK_DAG_ID,
    description="Back to the minor release recorded by the upgrade run; restore only if the data no longer starts",
    doc_md=__doc__,
    tags=["upgrade", "minor"],
    fields=F,
) as dag:
    validate = task(task_id="validate_params")(lambda: airflow_context.validated(F) and "params valid")()
    lock = _step("take_lock", failure.take_over_lock, "Takes the cluster lock over from the upgrade run.")
    assess = _step("assess", rollback.assess, "Chooses the path from the upgrade run's journal.")
    back = _step(
        "back_to_previous",
        rollback.back_to_previous,
        "Stops the server, puts the recorded release back through the same installer, starts it.",
    )

    @task.branch(
        task_id="data_dir_starts",
        doc_md="verify_previous, or restore_from_backup when the data "
        "directory does not start on the previous release.",
    )
    def data_dir_starts() -> str:
        ctx = airflow_context.run_context(F)
        return "verify_previous" if rollback.data_dir_started(ctx) else "restore_from_backup"

    restore = _step(
        "restore_from_backup",
        rollback.restore_from_backup,
        "Data directory moved aside, initdb with the previous binaries, backup restored.",
    )
    verify = _step(
        "verify_previous",
        rollback.verify_previous,
        "version() equals the recorded one; facts equal the snapshot.",
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
    )
    refresh = _step("refresh_tviews", rollback.refresh_tviews, "Refresh every TVIEW (force).")
    opened = _step("open_to_clients", rollback.open_to_clients, "Logins given back.")
    standbys_back = _step(
        "standbys_back",
        standbys.standbys_back,
        "Every standby the upgrade switched, back on its previous release, streaming (after the primary).",
    )
    report = _step(
        "report",
        recovery.write_report,
        "JSON + Markdown report with the path and why.",
        trigger_rule=TriggerRule.ALL_DONE,
    )

    branch = data_dir_starts()
    validate >> lock >> assess >> back >> branch >> [verify, restore]
    restore >> verify >> refresh >> opened >> standbys_back >> report >> failure.rollback_finish(F)
