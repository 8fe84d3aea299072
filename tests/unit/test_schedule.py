"""Scheduled runs: the clusters file (plain ids and per-DAG defaults), the dispatch of one run per configured
cluster (deterministic run ids, window_end, conf validated like a trigger conf), the Airflow task that does it
only in scheduled runs, and the window's DeadlineAlert."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import pytest

from pgupgrade import preflight, schedule
from pgupgrade.errors import ConfigError
from pgupgrade.minor import fields as minor_fields

UTC = dt.UTC
START, END = dt.datetime(2026, 11, 29, 1, 0, tzinfo=UTC), dt.datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
MINOR_DEFAULTS = {"target_version": "15.20", "installer": "bindir", "new_bindir": "/opt/pg-15.20/bin"}
FILE = {
    "clusters": [
        "pg_reporting",
        {"conn_id": "pg_main", "dags": {"pg_minor_upgrade": MINOR_DEFAULTS, "pg15_to_pg16_upgrade": {}}},
        {"conn_id": "pg_other", "dags": {"pg_minor_upgrade": {**MINOR_DEFAULTS, "dry_run": True}}},
        {"conn_id": "pg_ext_only", "dags": {"pg_tviews_minor_update": {}}},
    ]
}


def entries() -> list[schedule.ClusterEntry]:
    return schedule.parse_entries(FILE, "clusters.json")


def test_dispatch_one_run_per_cluster_configured_for_the_dag() -> None:
    runs = schedule.dispatch(entries(), minor_fields.DAG_ID, minor_fields.FIELDS, START, END)
    assert [r["trigger_run_id"] for r in runs] == [
        "window__pg_main__2026-11-29T01:00:00+00:00",
        "window__pg_other__2026-11-29T01:00:00+00:00",
    ]
    assert runs[0]["conf"] == {
        **MINOR_DEFAULTS,
        "postgres_conn_id": "pg_main",
        "window_end": "2026-11-29T03:00:00+00:00",
    }
    assert runs[1]["conf"]["dry_run"] is True
    # same window, same ids: a second dispatch starts nothing new (TriggerDagRunOperator skips existing runs)
    assert schedule.dispatch(entries(), minor_fields.DAG_ID, minor_fields.FIELDS, START, END) == runs
    # a DAG nobody names: nothing; no window end known: no window_end in the conf
    assert schedule.dispatch(entries(), "pg16_to_pg17_upgrade", minor_fields.FIELDS, START, END) == []
    assert (
        "window_end"
        not in schedule.dispatch(entries(), minor_fields.DAG_ID, minor_fields.FIELDS, START, None)[0]["conf"]
    )


def test_bad_defaults_fail_the_dispatch_naming_cluster_and_field() -> None:
    bad = {"clusters": [{"conn_id": "pg_main", "dags": {"pg_minor_upgrade": {**MINOR_DEFAULTS, "jobs": 0}}}]}
    with pytest.raises(ConfigError) as err:
        schedule.dispatch(schedule.parse_entries(bad, "f"), minor_fields.DAG_ID, minor_fields.FIELDS, START, END)
    assert err.value.field == "clusters file: pg_main.dags.pg_minor_upgrade.jobs", err.value
    typo = {"clusters": [{"conn_id": "pg_main", "dags": {"pg_minor_upgrade": {"target_versoin": "15.20"}}}]}
    with pytest.raises(ConfigError, match="target_versoin"):
        schedule.dispatch(schedule.parse_entries(typo, "f"), minor_fields.DAG_ID, minor_fields.FIELDS, START, END)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (["pg_a"], "f"),
        ({"clusters": [{"dags": {}}]}, "f: clusters[0]"),
        ({"clusters": [{"conn_id": "pg_a", "dag": {}}]}, "f: clusters[0].dag"),
        ({"clusters": [{"conn_id": "pg_a", "dags": {"pg_minor_upgrade": "link"}}]}, "f: clusters[0].dags"),
        (
            {"clusters": [{"conn_id": "pg_a", "dags": {"pg_minor_upgrade": {"postgres_conn_id": "pg_b"}}}]},
            "f: clusters[0].dags.pg_minor_upgrade.postgres_conn_id",
        ),
    ],
)
def test_clusters_file_errors_name_the_entry(raw: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        schedule.parse_entries(raw, "f")
    assert err.value.field == field


def test_preflight_reads_both_entry_forms(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(FILE))
    monkeypatch.setenv(preflight.CLUSTERS_ENV, str(path))
    assert preflight.load_clusters() == ["pg_reporting", "pg_main", "pg_other", "pg_ext_only"]


def _context(run_type: str, dag_id: str = minor_fields.DAG_ID) -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(run_type=run_type),
        "dag": SimpleNamespace(dag_id=dag_id),
        "run_id": f"{run_type}__2026-11-29T01:00:00+00:00",
        "logical_date": START,
        "data_interval_start": START,
        "data_interval_end": END,
    }


def test_the_task_dispatches_only_in_scheduled_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgupgrade.airflow import schedule as sched
    from pgupgrade.airflow import windows as aw

    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(FILE))
    monkeypatch.setenv(preflight.CLUSTERS_ENV, str(path))
    monkeypatch.setenv("PGUPGRADE_STATE_DIR", str(tmp_path / "state"))
    for run_type, want in (("manual", 0), ("DagRunType.OPERATOR_TRIGGERED", 0), ("scheduled", 2)):
        ctx = _context(run_type)
        monkeypatch.setattr(sched, "get_current_context", lambda ctx=ctx: ctx)
        monkeypatch.setattr("airflow.sdk.get_current_context", lambda ctx=ctx: ctx)
        runs = sched.cluster_runs(minor_fields.FIELDS)
        assert len(runs) == want, run_type
        assert sched.is_scheduled(ctx) is (run_type == "scheduled")
    assert runs[0]["conf"]["window_end"] == END.isoformat()  # the window of the scheduled run
    assert aw.run_window_from_context() is not None


def test_deadline_alert_lasts_one_window_and_alerts_through_the_notifiers(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DagRunQueuedAtDeadline

    from pgupgrade.airflow import notifiers
    from pgupgrade.airflow import windows as aw

    path = tmp_path / "windows.json"
    path.write_text(json.dumps({"night": {"days": ["mon"], "start": "22:00", "end": "01:30", "timezone": "UTC"}}))
    (alert,) = aw.deadline_alerts("night", path)
    assert alert.interval == dt.timedelta(hours=3, minutes=30)
    assert isinstance(alert.reference, DagRunQueuedAtDeadline) and isinstance(alert.callback, AsyncCallback)
    assert alert.callback.path == "pgupgrade.airflow.notifiers.deadline_missed"
    assert alert.callback.kwargs == {"window": "night", "window_text": "Mon 22:00\u201301:30 (+1 day) UTC"}

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(notifiers, "send", lambda *a, **kw: sent.append((*a, kw)) or 1)
    context = {
        "dag_run": {"dag_id": "pg_minor_upgrade", "dag_run_id": "r1", "conf": {"postgres_conn_id": "pg_main"}},
        "deadline": {"deadline_time": "2026-11-29T03:00:00+00:00"},
    }
    out = asyncio.run(notifiers.deadline_missed(**alert.callback.kwargs, context=context))
    (event, dag_id, run_id, cluster, _ctx, kw) = sent[0]
    assert (event, dag_id, run_id, cluster) == ("deadline_missed", "pg_minor_upgrade", "r1", "pg_main")
    assert "pg_minor_upgrade run r1 on pg_main overran the maintenance window 'night'" in kw["detail"]["alert"]
    assert "1 channel(s)" in out


def test_no_deadline_alert_for_a_run_that_already_ended_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline of a failed run is not pruned: when the window's length is up the triggerer still calls the
    notifier, with the run's state as the scheduler saw it. A run that ended failed (alerted, rolled back) stays
    quiet; one that failed after the scheduler looked (asked again through the Task SDK) too."""
    import asyncio

    from pgupgrade.airflow import notifiers

    sent: list[Any] = []
    monkeypatch.setattr(notifiers, "send", lambda *a, **kw: sent.append(a) or 1)
    asked: list[tuple[str, str]] = []
    live = {"state": None}

    def live_state(dag_id: str, run_id: str) -> str | None:
        asked.append((dag_id, run_id))
        return live["state"]

    monkeypatch.setattr(notifiers, "_live_dagrun_state", live_state)

    def alert(state: str) -> str:
        context = {
            "dag_run": {
                "dag_id": "pg_minor_upgrade",
                "dag_run_id": "r1",
                "state": state,
                "end_date": "2026-11-29T00:10:00+00:00",
                "conf": {"postgres_conn_id": "pg_main"},
            },
            "deadline": {"deadline_time": "2026-11-29T03:00:00+00:00"},
        }
        return asyncio.run(notifiers.deadline_missed("night", "Mon 22:00-01:30", context=context))

    out = alert("failed")
    assert sent == [] and asked == [] and "already ended failed" in out
    live["state"] = "failed"  # running when the scheduler looked, failed by now
    assert "already ended failed" in alert("running") and sent == []
    live["state"] = "running"
    assert "overran the maintenance window 'night'" in alert("running") and len(sent) == 1
    live["state"] = None  # nobody to ask: the context's state decides
    assert "overran" in alert("running") and len(sent) == 2


def test_compat_answers_the_encoded_alert_of_dag_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """dag.test()'s in-process copy of a DAG holds encoded alerts where the scheduler's holds ids: the lookup
    DagRun.update_state does after a successful run answers them from the encoding; ids go to Airflow's own."""
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel
    from airflow.serialization.definitions.deadline import SerializedReferenceModels
    from airflow.serialization.encoders import encode_deadline_alert

    from pgupgrade.airflow import compat
    from pgupgrade.airflow import windows as aw

    compat.install()
    compat.install()  # idempotent: one wrapper
    (alert,) = aw.deadline_alerts()
    encoded = encode_deadline_alert(alert)
    for given in (encoded, {"__var": encoded, "__type": "deadline_alert"}):
        row = DeadlineAlertModel.get_by_id(given, session=object())
        assert row.reference_class is SerializedReferenceModels.DagRunQueuedAtDeadline
        assert row.name == alert.name and row.callback_def == encoded["callback"]

    class Session:
        def scalar(self, statement: Any) -> str:
            return f"looked up {statement.compile().params}"

    found = DeadlineAlertModel.get_by_id("0190a3c4-0000-7000-8000-000000000000", session=Session())
    assert str(found).startswith("looked up")
    assert compat.encoded_alert({"id": "x"}) is None and compat.encoded_alert("x") is None
