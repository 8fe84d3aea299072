"""Which notifiers an alert goes through (Variable pgupgrade_notify): webhook and SMTP as before, Slack / Slack
webhook / Apprise through their providers when installed (stand-in provider modules here), a clear warning and no
crash when configured but not installed; the texts of the new events."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest

from pgupgrade import notify
from pgupgrade.airflow import notifiers
from pgupgrade.state import RunState

MSG: dict[str, Any] = {"event": "failure", "subject": "[pgupgrade] d on c FAILED", "run_id": "r1", "run_link": None}
MSG |= {"summary": {}, "failed_step": "plan", "error": "boom", "detail": {}}


class _Recorder:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod_name = ".".join(parts[:i])
        if mod_name not in sys.modules or i == len(parts):
            monkeypatch.setitem(sys.modules, mod_name, types.ModuleType(mod_name))
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)


def _with_config(monkeypatch: pytest.MonkeyPatch, cfg: dict[str, Any]) -> None:
    monkeypatch.setattr(notifiers, "_config", lambda: cfg)


def test_provider_notifiers_are_added_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    slack = type("SlackNotifier", (_Recorder,), {})
    hook = type("SlackWebhookNotifier", (_Recorder,), {})
    apprise = type("AppriseNotifier", (_Recorder,), {})
    _fake_module(monkeypatch, "airflow.providers.slack.notifications.slack", SlackNotifier=slack)
    _fake_module(monkeypatch, "airflow.providers.slack.notifications.slack_webhook", SlackWebhookNotifier=hook)
    _fake_module(monkeypatch, "airflow.providers.apprise.notifications.apprise", AppriseNotifier=apprise)
    _fake_module(monkeypatch, "apprise", NotifyType=types.SimpleNamespace(FAILURE="failure", INFO="info"))
    _with_config(
        monkeypatch,
        {
            "webhook_conn_id": "hook",
            "slack_conn_id": "slack_api",
            "slack_channel": "#dba",
            "slack_webhook_conn_id": "slack_hook",
            "apprise_conn_id": "apprise_default",
        },
    )
    got = notifiers.notifiers_for(MSG)
    assert [type(n).__name__ for n in got] == [
        "WebhookNotifier",
        "SlackNotifier",
        "SlackWebhookNotifier",
        "AppriseNotifier",
    ]
    assert got[1].kw["slack_conn_id"] == "slack_api" and got[1].kw["channel"] == "#dba"  # type: ignore[attr-defined]
    assert "failed step: plan" in got[1].kw["text"]  # type: ignore[attr-defined]
    assert got[2].kw["slack_webhook_conn_id"] == "slack_hook"  # type: ignore[attr-defined]
    kw = got[3].kw  # type: ignore[attr-defined]
    assert kw["apprise_conn_id"] == "apprise_default" and kw["title"] == MSG["subject"]
    assert kw["notify_type"] == "failure" and kw["tag"] == "all"


def test_configured_but_not_installed_warns_and_keeps_the_other_channels(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in (
        "airflow.providers.slack.notifications.slack",
        "airflow.providers.slack.notifications.slack_webhook",
        "airflow.providers.apprise.notifications.apprise",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError: not installed
    _with_config(monkeypatch, {"webhook_conn_id": "hook", "slack_conn_id": "s", "apprise_conn_id": "a"})
    with caplog.at_level(logging.WARNING, logger=notifiers.__name__):
        got = notifiers.notifiers_for(MSG)
    assert [type(n).__name__ for n in got] == ["WebhookNotifier"]
    text = caplog.text
    assert "slack_conn_id='s' but the provider is not installed (pip install apache-airflow-providers-slack)" in text
    assert "apprise_conn_id='a' but the provider is not installed" in text


def test_nothing_configured_nothing_added(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_config(monkeypatch, {})
    assert notifiers.notifiers_for(MSG) == []


def test_texts_of_the_new_events(tmp_path: Any) -> None:
    state = RunState.for_run("pg_minor_upgrade", "r1", tmp_path)
    late = notify.message("deadline_missed", state, cluster="pg_main", run_link=None, detail={"window": "default"})
    assert late["subject"] == "[pgupgrade] pg_minor_upgrade on pg_main overran the maintenance window"
    assert "window: default" in notify.as_text(late)
    loud = notify.message("rollback_trigger_failed", state, cluster="pg_main", run_link=None)
    assert "ROLLBACK DID NOT START" in loud["subject"]


def test_rollback_not_started_says_how_to_start_it_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(notifiers, "send", lambda *a, **kw: sent.append((*a, kw)) or 2)
    n = notifiers.rollback_not_started(
        "pg_minor_upgrade", "r1", "pg_main", "pg_minor_upgrade_rollback", "rollback__r1", "the DAG is paused", {}
    )
    assert n == 2
    event, dag_id, run_id, cluster, _ctx, kw = sent[0]
    assert (event, dag_id, run_id, cluster) == ("rollback_trigger_failed", "pg_minor_upgrade", "r1", "pg_main")
    detail = kw["detail"]
    assert detail["manual_conf"] == {
        "upgrade_dag_id": "pg_minor_upgrade",
        "upgrade_run_id": "r1",
        "postgres_conn_id": "pg_main",
    }
    assert "airflow dags trigger pg_minor_upgrade_rollback --run-id rollback__r1 --conf" in detail["start_by_hand_cli"]
    assert "DID NOT START" in detail["alert"]
