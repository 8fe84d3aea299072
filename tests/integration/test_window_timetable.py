"""The window reaches the task: a DAG scheduled by MaintenanceWindowTimetable, run by dag.test with a logical date
inside its window, gets data_interval = [window start, window end], and the guard judges the time left."""

from __future__ import annotations

import datetime as dt
import json
import textwrap

import pytest

pytestmark = pytest.mark.usefixtures("airflow_home")

DAG_FILE = textwrap.dedent(
    '''
    """Test DAG for the maintenance window timetable."""
    import datetime as dt
    from types import SimpleNamespace

    from airflow.sdk import DAG, task

    from pgupgrade.airflow import windows as aw

    with DAG(
        dag_id="window_guard_probe",
        schedule=aw.MaintenanceWindowTimetable.from_config("probe"),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        default_args={"owner": "dba"},
        params={"estimate_s": 60},
    ) as dag:

        @task(task_id="guard")
        def guard(params=None):
            w = aw.run_window_from_context()
            print("WINDOW", w)
            return aw.window_guard(SimpleNamespace(params={"window_end": ""}), params["estimate_s"])

        guard()
    '''
)


def test_guard_reads_the_window_of_the_run(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(hours=2)
    every_day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    spec = {"days": every_day, "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "timezone": "UTC"}
    (tmp_path / "windows.json").write_text(json.dumps({"probe": spec}))
    monkeypatch.setenv("PGUPGRADE_WINDOWS_FILE", str(tmp_path / "windows.json"))
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "window_guard_probe.py").write_text(DAG_FILE)
    bag = DagBag(dag_folder=str(tmp_path / "dags"))
    assert not bag.import_errors, bag.import_errors
    # dag.test() syncs only the configured bundle (the repo's dags/): write this DAG to the metadata DB first
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["window_guard_probe"]

    def guard_state(estimate_s: int) -> str:
        dr = dag.test(logical_date=now, run_conf={"estimate_s": estimate_s})
        assert (dr.data_interval_start, dr.data_interval_end) == (start, end)  # the run's window
        with create_session() as session:
            ti = session.query(TaskInstance).filter_by(dag_id=dag.dag_id, run_id=dr.run_id, task_id="guard").one()
            return str(ti.state)

    assert guard_state(30 * 60) == "success"  # 2 h left, 30 min estimate
    assert guard_state(3 * 3600) == "failed"  # 2 h left, 3 h estimate
