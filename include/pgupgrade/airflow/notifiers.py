"""Alerts through Airflow notifiers. Channels come from admin config — Airflow Variable ``pgupgrade_notify``:
``{"webhook_conn_id": "...", "smtp_conn_id": "smtp_default", "email_to": ["dba@example.com"]}`` — read when a run
needs them, never at parse time."""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk import BaseNotifier, Connection, Variable

from pgupgrade.notify import as_text, message
from pgupgrade.state import RunState

log = logging.getLogger(__name__)
NOTIFY_VARIABLE = "pgupgrade_notify"


class WebhookNotifier(BaseNotifier):
    """POSTs the alert as JSON to the URL of an http connection (host, optional port and schema path)."""

    template_fields = ("webhook_conn_id",)

    def __init__(self, webhook_conn_id: str, payload: dict[str, Any]) -> None:
        super().__init__()
        self.webhook_conn_id = webhook_conn_id
        self.payload = payload

    def notify(self, context: Any) -> None:
        import requests

        conn = Connection.get(self.webhook_conn_id)
        url = conn.host or ""
        if not url.startswith("http"):
            url = f"http://{url}"
        if conn.port:
            url = f"{url}:{conn.port}"
        if conn.schema:
            url = f"{url}/{conn.schema.lstrip('/')}"
        requests.post(url, json=self.payload, timeout=10).raise_for_status()


def _config() -> dict[str, Any]:
    raw = Variable.get(NOTIFY_VARIABLE, default=None)
    if not raw:
        return {}
    cfg = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return cfg if isinstance(cfg, dict) else {}


def notifiers_for(msg: dict[str, Any]) -> list[BaseNotifier]:
    cfg = _config()
    out: list[BaseNotifier] = []
    if cfg.get("webhook_conn_id"):
        out.append(WebhookNotifier(cfg["webhook_conn_id"], msg))
    if cfg.get("email_to"):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        out.append(
            SmtpNotifier(
                to=cfg["email_to"],
                smtp_conn_id=cfg.get("smtp_conn_id", "smtp_default"),
                subject=msg["subject"],
                html_content=f"<pre>{as_text(msg)}</pre>",
            )
        )
    return out


def send(event: str, dag_id: str, run_id: str, cluster: str | None, context: Any) -> int:
    """Sends one alert through every configured channel; a failing channel is logged, not raised."""
    if context is None:  # called from a task: the notifiers (SmtpNotifier) need the task's context
        from airflow.sdk import get_current_context

        context = get_current_context()
    msg = message(event, RunState.for_run(dag_id, run_id), cluster=cluster, run_link=_run_link(context))
    sent = 0
    for n in notifiers_for(msg):
        try:
            n.notify(context)
            sent += 1
        except Exception as exc:  # an alert channel must never break the run or its rollback
            log.warning("notifier %s failed: %s", type(n).__name__, exc)
    return sent


def _run_link(context: Any) -> str | None:
    try:
        ti = context.get("ti") or context.get("task_instance")
        return str(ti.log_url) if ti is not None else None
    except Exception:
        return None


def dag_callback(event: str) -> Any:
    """A DAG-level success/failure callback that alerts through the configured notifiers."""

    def _callback(context: dict[str, Any]) -> None:
        dag_run = context.get("dag_run")
        if dag_run is None:
            return
        conf = dag_run.conf or {}
        send(event, dag_run.dag_id, dag_run.run_id, conf.get("postgres_conn_id"), context)

    return _callback
