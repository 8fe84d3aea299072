"""Running DAGs through Airflow in tests: dag.test() on the real dags folder."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@cache
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def run(dag_id: str, conf: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """Runs one DAG run in-process; returns the DagRun and {task_id: state}."""
    dag = dagbag().dags[dag_id]
    dr = dag.test(run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    return dr, states


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
