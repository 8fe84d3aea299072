"""The DAG objects every runbook shares: what an upgrade DAG and a rollback DAG are, in one place.

An upgrade DAG is paused on creation, armed on the maintenance-window timetable, alerts when a run overruns its
window, runs one at a time, and on failure triggers its rollback DAG and alerts. A rollback DAG is unpaused (it
must run the moment an upgrade triggers it), unscheduled, and alerts when it has brought the old version back.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from airflow.sdk import DAG

from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import failure, notifiers
from pgupgrade.airflow import windows as aw
from pgupgrade.params import Field

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DEFAULT_ARGS = {"owner": "dba", "retries": 0}


def upgrade_dag(
    dag_id: str, *, description: str, doc_md: str | None, tags: list[str], fields: list[Field], rollback_dag_id: str
) -> DAG:
    return DAG(
        dag_id=dag_id,
        description=description,
        doc_md=doc_md,
        schedule=aw.MaintenanceWindowTimetable.from_config(),  # include/config/windows.json, read at parse time
        start_date=START,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=True,
        deadline=aw.deadline_alerts(),
        tags=["postgresql", *tags],
        default_args=DEFAULT_ARGS,
        params=airflow_context.airflow_params(fields),
        on_failure_callback=[cast(Any, failure.rollback_callback(rollback_dag_id)), notifiers.dag_callback("failure")],
        on_success_callback=notifiers.dag_callback("success"),
    )


def rollback_dag(dag_id: str, *, description: str, doc_md: str | None, tags: list[str], fields: list[Field]) -> DAG:
    return DAG(
        dag_id=dag_id,
        description=description,
        doc_md=doc_md,
        schedule=None,
        start_date=START,
        catchup=False,
        is_paused_upon_creation=False,
        tags=["postgresql", *tags, "rollback"],
        default_args=DEFAULT_ARGS,
        params=airflow_context.airflow_params(fields),
        on_success_callback=notifiers.dag_callback("rollback"),
        on_failure_callback=notifiers.dag_callback("failure"),
    )
