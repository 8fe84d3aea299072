"""`airflow dags test` — the real CLI, in a process of its own — of a DAG carrying its deadline alert exits 0 after a
successful run and non-zero after a failed one (Airflow 3.3.2 needs pgupgrade.airflow.compat for the first, loaded
through plugins/airflow_local_settings.py; no environment variable leaves the alerts out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from airflow_helpers import UPGRADE, minor_conf
from pgharness import Pool, served

pytestmark = pytest.mark.usefixtures("airflow_home")


def dags_test(dag_id: str, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PGUPGRADE_DEADLINE_ALERTS"}
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", dag_id, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def last_run(dag_id: str) -> tuple[Any, int, int]:
    """The DAG's newest run, how many deadline alerts the DAG's serialized version carries, and how many
    deadlines the run has."""
    from airflow.models.dagrun import DagRun
    from airflow.models.deadline import Deadline
    from airflow.models.deadline_alert import DeadlineAlert
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        dr = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)).one()
        session.expunge(dr)
        alerts = session.scalar(
            select(func.count())
            .select_from(DeadlineAlert)
            .join(SerializedDagModel, SerializedDagModel.id == DeadlineAlert.serialized_dag_id)
            .where(SerializedDagModel.dag_id == dag_id, SerializedDagModel.dag_version_id == dr.created_dag_version_id)
        )
        deadlines = session.scalar(select(func.count()).select_from(Deadline).where(Deadline.dagrun_id == dr.id))
    return dr, int(alerts or 0), int(deadlines or 0)


def test_dags_test_exits_0_on_success_and_non_zero_on_failure(pool: Pool) -> None:
    old = pool.new("15.18", seed=False)
    ok = dags_test(UPGRADE, minor_conf(old, dry_run=True))
    tail = "\n".join((ok.stdout + ok.stderr).splitlines()[-30:])
    assert ok.returncode == 0, tail
    dr, alerts, deadlines = last_run(UPGRADE)
    assert dr.state == "success"
    # the run's DAG version carries the window-overrun alert, so DagRun.update_state went through the deadline
    # lookup that crashed; dag.test creates its run running, never queued, so the alert (counted from queued_at)
    # sets no deadline for it
    assert alerts == 1 and deadlines == 0

    # a refusal in the plan (target_version names another release than new_bindir holds): the run fails
    failed = dags_test(UPGRADE, minor_conf(old, dry_run=True, target_version="15.19"))
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert "DagRun failed" in out and "target_version 15.19 disagrees with new_bindir" in out, out[-3000:]
    dr, alerts, deadlines = last_run(UPGRADE)
    assert dr.state == "failed" and alerts == 1
    assert served(old)[0] == 150018
