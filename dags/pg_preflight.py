"""
# PostgreSQL upgrade preflight (every day, read-only)

Answers, for every configured cluster, *would the next maintenance window's upgrade go ahead?* — before the
night of the window, not inside it. It runs the read-only part of the runbooks and nothing else.

## Prerequisites
- The cluster list: Airflow postgres connection ids in `include/config/clusters.json`
  (`{"clusters": ["pg_main", ...]}`; another file through `PGUPGRADE_CLUSTERS_FILE` in the environment of the
  dag-processor and workers). Read from the file when the DAG is parsed: no Variable, no database.
- The same connections the upgrade DAGs use (`extra`: `pg_bindir`, `pg_datadir`, `os_user`, `service`, ...), and
  the new major installed beside the old one (or `pg_upgrade --check` cannot run).
- The maintenance window in `include/config/windows.json` (param `window`, default `default`).

## Impact
None on the clusters: it reads catalogs and settings, and runs `pg_upgrade --check` against a throwaway cluster
in a scratch directory next to the future data directory, which it removes. It takes **no cluster lock** (a
real upgrade starting meanwhile must not fail on it); a cluster whose lock is held by a run is reported *busy*
and not probed.

## Steps
1. **validate_params** — the trigger conf and params; returns the cluster list.
2. **check_cluster** (one mapped task per cluster) — the major plan exactly as the upgrade DAG computes it
   (`major.plan`: support matrix, blockers such as prepared transactions, standbys, slots and subscriptions
   without acknowledgement, `reg*` columns, health, extensions and libraries in the new installation, disk
   space, `pg_upgrade --check`, method and outage estimate); the estimate against the next window; the newest
   installed minor of the running major through the minor runbook's plan; the extension's version and queue.
3. **summary** — lists ready / not ready / busy with reasons; JSON + Markdown report under
   `<state>/reports/pg_preflight_checks/` (or `PGUPGRADE_REPORTS_DIR`).

## Rollback
Nothing to roll back: the DAG changes nothing.

## Success criteria
Every cluster *ready* (or already on the target major). With `fail_if_not_ready` (default) the run fails when
any cluster would not go ahead, so the failure shows in the UI and in failure alerts; the report names why.

## Trigger
Daily by schedule (paused on creation: unpause it). By hand: UI *Trigger DAG w/ config*, or
`airflow dags trigger pg_preflight_checks --conf '{"target_major": 17, "clusters": ["pg_main"]}'`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, TriggerRule, task

from pgupgrade import preflight
from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import preflight as apf

CLUSTERS = preflight.load_clusters()  # a file read only (include/config/clusters.json or $PGUPGRADE_CLUSTERS_FILE)
F = preflight.fields(CLUSTERS)

with DAG(
    dag_id=preflight.DAG_ID,
    description="Read-only: would the next window's upgrade of each cluster go ahead? Ready / not ready + why",
    doc_md=__doc__,
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    tags=["postgresql", "upgrade", "preflight"],
    default_args={"owner": "dba", "retries": 0},
    params=airflow_context.airflow_params(F),
    dagrun_timeout=dt.timedelta(hours=2),
) as dag:

    @task(task_id="validate_params", doc_md="Rejects bad conf, naming the field; returns the clusters to check.")
    def validate_params() -> list[str]:
        return list(airflow_context.validated(F)["clusters"])

    @task(
        task_id="check_cluster",
        map_index_template="{{ cluster }}",
        doc_md="Every read-only check of the major plan (and minor/extension picture) for one cluster.",
        execution_timeout=dt.timedelta(hours=1),
    )
    def check_cluster(postgres_conn_id: str) -> dict[str, Any]:
        return apf.check(F, postgres_conn_id)

    @task(
        task_id="summary",
        trigger_rule=TriggerRule.ALL_DONE,
        doc_md="Ready / not ready with reasons; JSON + Markdown report; fails if any is not ready (param).",
    )
    def summary(results: Any) -> dict[str, Any]:
        return apf.summary(F, results)

    summary(check_cluster.expand(postgres_conn_id=validate_params()))
