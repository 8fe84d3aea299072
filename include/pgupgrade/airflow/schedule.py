"""Scheduled runs of the upgrade DAGs (the MaintenanceWindowTimetable creates one when a window opens).

A scheduled run acts on no cluster itself: ``cluster_runs`` reads the clusters file (``pgupgrade.schedule``) at
run time and ``trigger_cluster_runs`` starts one run of the same DAG per cluster configured for it, with the
cluster's defaults as conf and the window's end as ``window_end``; ``manual_only`` then skips the rest of the
scheduled run. In every other run (manual, REST, triggered — including the per-cluster runs) ``cluster_runs``
returns nothing, the trigger is skipped and ``manual_only`` lets the run go on.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import get_current_context, task

from pgupgrade import schedule
from pgupgrade.airflow import tasks
from pgupgrade.airflow.store import run_store
from pgupgrade.airflow.windows import run_window_from_context
from pgupgrade.params import Field

log = logging.getLogger(__name__)


def is_scheduled(context: Any) -> bool:
    run_type = getattr(context.get("dag_run"), "run_type", "")
    return str(run_type).lower().rsplit(".", 1)[-1] == "scheduled"


def cluster_runs(fields: list[Field]) -> list[dict[str, Any]]:
    """In a scheduled run: ``[{"trigger_run_id", "conf"}]`` for the clusters configured for this DAG (journaled as
    step ``cluster_runs``); otherwise ``[]``."""
    ctx = get_current_context()
    if not is_scheduled(ctx):
        log.info("not a scheduled run: nothing to dispatch, this run acts on its own conf")
        return []
    from pgupgrade import preflight

    dag_id, run_id = ctx["dag"].dag_id, ctx["run_id"]
    logical = ctx.get("logical_date") or ctx.get("data_interval_start")
    assert logical is not None, "a scheduled run has a logical date"
    window = run_window_from_context()
    path = preflight.clusters_path()

    def _dispatch() -> list[dict[str, Any]]:
        entries = schedule.read_entries(path)
        return schedule.dispatch(entries, dag_id, fields, logical, window.end if window else None)

    runs: list[dict[str, Any]] = tasks.journaled(run_store().run(dag_id, run_id), "cluster_runs", _dispatch)
    for r in runs:
        log.info("window run %s with conf %s", r["trigger_run_id"], r["conf"])
    if not runs:
        log.info("no cluster in %s names %s: nothing to do in this window", path, dag_id)
    return runs


def scheduled_dispatch(fields: list[Field], before: Any) -> Any:
    """Adds ``cluster_runs`` → ``trigger_cluster_runs`` (one mapped TriggerDagRunOperator per cluster) and the
    gate ``manual_only`` upstream of ``before`` (the first task group). Call it inside the DAG, after
    ``failure.failure_tail``: the dispatch tasks are then no upstream of the failure tail, and a failed dispatch
    fails the scheduled run by itself (they are leaves)."""

    runs = task(
        task_id="cluster_runs",
        retries=0,
        doc_md="Scheduled runs only: reads the clusters file now and lists one run per cluster configured for this "
        "DAG (conf = its defaults + postgres_conn_id + window_end); other runs: nothing.",
    )(lambda: cluster_runs(fields))()
    TriggerDagRunOperator.partial(
        task_id="trigger_cluster_runs",
        trigger_dag_id="{{ dag.dag_id }}",
        skip_when_already_exists=True,
        wait_for_completion=False,
        retries=0,
        doc_md="Starts the listed runs (run id window__<conn_id>__<logical date>; an existing one is kept).",
    ).expand_kwargs(runs)

    @task.short_circuit(
        task_id="manual_only",
        retries=0,
        doc_md="Ends a scheduled run here (its clusters got runs of their own); any other run goes on.",
    )
    def manual_only() -> bool:
        if is_scheduled(get_current_context()):
            log.info("scheduled run: the per-cluster runs do the work; skipping the rest of this run")
            return False
        return True

    gate = manual_only()
    gate >> before
    return gate
