"""Running DAGs through Airflow in tests: dag.test() on the real dags folder."""

from __future__ import annotations

import copy
import json
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.minor import fields as minor_fields
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from pgharness import APP_DB, Pool, installation, served_version

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])
UPGRADE, ROLLBACK = minor_fields.DAG_ID, minor_fields.ROLLBACK_DAG_ID


@cache
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    for dag_id, dag in bag.dags.items():
        _DEFAULTS[dag_id] = copy.deepcopy({k: dag.params.get_param(k).value for k in dag.params})
    return bag


_DEFAULTS: dict[str, dict[str, Any]] = {}


def run(dag_id: str, conf: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """Runs one DAG run in-process; returns the DagRun and {task_id: state}."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    dag = dagbag().dags[dag_id]
    # the DAG as shipped, deadline alerts included (Airflow 3.3.2's dag.test() needs pgupgrade.airflow.compat,
    # installed by plugins/airflow_local_settings.py, to end a successful run of such a DAG); the alerts fire in
    # tests/e2e/test_operations.py, where a triggerer runs
    # dag.test() runs every task in this process and leaves a run's conf in the tasks' params: pass every
    # param explicitly (defaults as parsed) so one test's conf never leaks into the next run
    dr = dag.test(run_conf={**_DEFAULTS[dag_id], **conf})
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == dr.run_id)
        states = {ti.task_id: str(ti.state) for ti in tis}
    return dr, states


def run_under_writes(cluster: Any, dag_id: str, conf: dict[str, Any]) -> tuple[Any, Any, dict[str, str]]:
    """Runs the DAG while an application keeps inserting and reconnecting (a WriteProbe started half a second
    before, stopped half a second after); returns (probe, DagRun, {task_id: state})."""
    from pgharness import WriteProbe

    WriteProbe.create_table(cluster)
    probe = WriteProbe(cluster).start()
    try:
        time.sleep(0.5)
        dr, states = run(dag_id, conf)
        time.sleep(0.5)
    finally:
        probe.stop()
    return probe, dr, states


def triggered_runs(dag_id: str) -> list[Any]:
    """DagRuns of dag_id created by other runs (dag.test creates triggered runs but does not execute them)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).all()
        for r in runs:
            session.expunge(r)
        return runs


def run_triggered_rollback(rollback_dag_id: str, upgrade_run_id: str) -> tuple[Any, dict[str, str]]:
    """Executes the rollback run that the upgrade run triggered, with the conf it was triggered with."""
    wanted = f"rollback__{upgrade_run_id}"
    matches = [r for r in triggered_runs(rollback_dag_id) if r.run_id == wanted]
    assert matches, f"no triggered run {wanted} of {rollback_dag_id}"
    conf = dict(matches[0].conf or {})
    return run(rollback_dag_id, conf)


def report_of(state_root: Path, dag_id: str, run_id: str) -> dict[str, Any]:
    from pgupgrade.state import RunState

    paths = RunState.for_run(dag_id, run_id, state_root).load("report")
    return json.loads(Path(paths["json"]).read_text())


# -- trigger confs and checks shared by the integration tests ----------------------------------------------------
# (conftest is imported inside the functions: importing it sets AIRFLOW_HOME and PGUPGRADE_STATE_DIR, which must
# not happen in a fault_driver process that inherits its parent's)


def upgrade_conf(pool: Pool, old: Cluster, new_version: str, **over: object) -> dict[str, object]:
    from conftest import register_connection

    home = Path(old.datadir).parent
    return {
        "postgres_conn_id": register_connection(old),
        "new_bindir": installation(new_version).bindir,
        "new_datadir": str(home / f"data{new_version.split('.')[0]}"),
        "backup_dir": str(home / "backup"),
        **over,
    }


def minor_conf(old: Cluster, **over: Any) -> dict[str, Any]:
    from conftest import register_connection

    return {
        "postgres_conn_id": register_connection(old),
        "installer": "bindir",
        "target_version": "15.20",
        "new_bindir": installation("15.20").bindir,
        "backup_dir": str(Path(old.datadir).parent / "backup"),
        "min_free_gb": 1,
        **over,
    }


def plan_context(
    dag_id: str, params: dict[str, Any], cluster: Cluster, *, host: Any = None, resolve: Any = None, spec: Any = None
) -> Any:
    """The RunContext of a plan step, built without Airflow (``resolve``: a standby's connection id → its cluster
    and host, as the Airflow layer does it; ``host``: the local host unless given)."""
    from pgupgrade import profiles
    from pgupgrade.context import RunContext
    from pgupgrade.state import state_root

    from pgharness import HOST

    run_id = f"plan-only-{os.getpid()}-{time.monotonic_ns()}"
    return RunContext(
        dag_id=dag_id,
        run_id=run_id,
        params=params,
        cluster=cluster,
        host=host or HOST,
        state=RunState.for_run(dag_id, run_id, state_root()),
        profile=profiles.get("pg_tviews"),
        spec=spec or {},
        resolve=resolve,
    )


def minor_plan_context(cluster: Cluster, resolve: Any = None, **over: Any) -> Any:
    """The RunContext of a minor upgrade's plan step (``plan_context``)."""
    return plan_context(UPGRADE, minor_fields.validate_params(minor_conf(cluster, **over)), cluster, resolve=resolve)


def assert_rolled_back(old, upgrade_dag, upgrade_run, expected_path):
    dr, states = run_triggered_rollback("pg_major_upgrade_rollback", upgrade_run)
    assert dr.state == "success", states
    decision = RunState.for_run("pg_major_upgrade_rollback", dr.run_id, STATE).load("decision")
    assert decision["path"] == expected_path, decision
    assert served_version(old) == 15
    with connect(old, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") >= 1000
        assert scalar(conn, "SELECT pg_tviews_version()") == "0.1.5"
        assert scalar(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_user'") is True
    rep = report_of(STATE, "pg_major_upgrade_rollback", dr.run_id)
    assert rep["rollback_path"] == expected_path and rep["rollback_reason"]
    return rep
