"""Alerts through Airflow notifiers. Channels come from admin config — Airflow Variable ``pgupgrade_notify``:
``{"webhook_conn_id": "...", "smtp_conn_id": "smtp_default", "email_to": ["dba@example.com"],
"slack_conn_id": "...", "slack_channel": "#dba", "slack_webhook_conn_id": "...", "apprise_conn_id": "...",
"apprise_tag": "all"}`` (every key optional) — read when a run needs them, never at parse time. Slack and Apprise
go through their Airflow providers (``apache-airflow-providers-slack`` / ``-apprise``) when those are installed;
configured but not installed, the alert goes out on the other channels and the log says which one is missing.

Besides the DAG callbacks: ``deadline_missed`` (the DeadlineAlert callback run by the triggerer when a run overruns
its maintenance window) and ``rollback_not_started`` (the loud alert when the automatic rollback could not be
started)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseNotifier, Connection, Variable

from pgupgrade.airflow.store import run_store
from pgupgrade.notify import as_text, message

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


def _slack_notifier(cfg: dict[str, Any], msg: dict[str, Any]) -> BaseNotifier:
    from airflow.providers.slack.notifications.slack import SlackNotifier

    kw = {"channel": cfg["slack_channel"]} if cfg.get("slack_channel") else {}
    return SlackNotifier(slack_conn_id=cfg["slack_conn_id"], text=as_text(msg), **kw)  # type: ignore[no-any-return]


def _slack_webhook_notifier(cfg: dict[str, Any], msg: dict[str, Any]) -> BaseNotifier:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    return SlackWebhookNotifier(  # type: ignore[no-any-return]
        slack_webhook_conn_id=cfg["slack_webhook_conn_id"], text=as_text(msg)
    )


APPRISE_TYPES = {"failure": "failure", "rollback_trigger_failed": "failure", "deadline_missed": "warning"}


def _apprise_notifier(cfg: dict[str, Any], msg: dict[str, Any]) -> BaseNotifier:
    from airflow.providers.apprise.notifications.apprise import AppriseNotifier
    from apprise import NotifyType

    kind = APPRISE_TYPES.get(msg["event"], "success" if msg["event"] in ("success", "rollback") else "info")
    return AppriseNotifier(  # type: ignore[no-any-return]
        apprise_conn_id=cfg["apprise_conn_id"],
        title=msg["subject"],
        body=as_text(msg),
        notify_type=getattr(NotifyType, kind.upper()),
        tag=cfg.get("apprise_tag", "all"),
    )


# config key → (provider package, factory): added when the key is set and the provider imports
PROVIDER_CHANNELS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, Any]], BaseNotifier]]] = {
    "slack_conn_id": ("apache-airflow-providers-slack", _slack_notifier),
    "slack_webhook_conn_id": ("apache-airflow-providers-slack", _slack_webhook_notifier),
    "apprise_conn_id": ("apache-airflow-providers-apprise", _apprise_notifier),
}


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
    for key, (package, factory) in PROVIDER_CHANNELS.items():
        if not cfg.get(key):
            continue
        try:
            out.append(factory(cfg, msg))
        except ImportError as exc:
            log.warning(
                "Variable %s sets %s=%r but the provider is not installed (pip install %s): this alert is not "
                "sent there (%s)",
                NOTIFY_VARIABLE,
                key,
                cfg[key],
                package,
                exc,
            )
    return out


def send(
    event: str,
    dag_id: str,
    run_id: str,
    cluster: str | None,
    context: Any,
    *,
    detail: dict[str, Any] | None = None,
    run_link: str | None = None,
) -> int:
    """Sends one alert through every configured channel; a failing channel is logged, not raised."""
    if context is None:  # called from a task: the notifiers (SmtpNotifier) need the task's context
        from airflow.sdk import get_current_context

        context = get_current_context()
    msg = message(
        event,
        run_store().run(dag_id, run_id),
        cluster=cluster,
        run_link=run_link or _run_link(context),
        detail=detail,
    )
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


def _ui_run_link(dag_id: str, run_id: str) -> str | None:
    try:
        from airflow.configuration import conf

        base = str(conf.get("api", "base_url", fallback="") or "").rstrip("/")
    except Exception:
        return None
    return f"{base}/dags/{dag_id}/runs/{run_id}" if base else None


def dag_callback(event: str) -> Any:
    """A DAG-level success/failure callback that alerts through the configured notifiers. The success of a
    scheduled run is not announced: it only dispatched the per-cluster runs, which announce their own."""

    def _callback(context: dict[str, Any]) -> None:
        dag_run = context.get("dag_run")
        if dag_run is None:
            return
        if event == "success" and str(getattr(dag_run, "run_type", "")).lower().endswith("scheduled"):
            return
        conf = dag_run.conf or {}
        send(event, dag_run.dag_id, dag_run.run_id, conf.get("postgres_conn_id"), context)

    return _callback


# -- the DeadlineAlert callback (runs in the triggerer) -----------------------------------------------------


async def deadline_missed(window: str, window_text: str, context: dict[str, Any] | None = None) -> str:
    """AsyncCallback of ``pgupgrade.airflow.windows.deadline_alerts``: the run is still going when its maintenance
    window (its length, counted from when the run was queued) is over. The triggerer calls it with a small context
    (``dag_run`` as the REST API shows it, ``deadline``); the channels are the synchronous notifiers, run in a
    thread (the Task SDK's Variable/Connection lookups work from there). A run that has already ended failed
    (its failure alert went out and its rollback took over) raises no overrun alert: the deadline of a failed run
    is not pruned, so the scheduler still fires it when the window's length is up."""
    import asyncio

    return await asyncio.to_thread(_deadline_alert, window, window_text, context or {})


def _live_dagrun_state(dag_id: str, run_id: str) -> str | None:
    """The run's state now, asked through the Task SDK (the triggerer answers it); None when nobody answers."""
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception as exc:  # no supervisor to ask: the context's state is all there is
        log.debug("cannot ask Airflow for the state of %s/%s: %s", dag_id, run_id, exc)
        return None
    return str(state).lower().rsplit(".", 1)[-1] if state else None


def run_ended_failed(dag_id: str, run_id: str, run: dict[str, Any]) -> bool:
    """Whether the run has ended failed: by the state the scheduler saw when the deadline passed (the context's
    ``dag_run``) or, that one still running, by its state now."""
    state = str(run.get("state") or "").lower()
    if state in ("failed", "success"):
        return state == "failed"
    return _live_dagrun_state(dag_id, run_id) == "failed"


def _deadline_alert(window: str, window_text: str, context: dict[str, Any]) -> str:
    run = dict(context.get("dag_run") or {})
    dag_id, run_id = str(run.get("dag_id")), str(run.get("dag_run_id") or run.get("run_id"))
    if run_ended_failed(dag_id, run_id, run):
        note = f"{dag_id} run {run_id} already ended failed (alerted, rollback triggered): no window-overrun alert"
        log.info(note)
        return note
    cluster = (run.get("conf") or {}).get("postgres_conn_id")
    deadline = (context.get("deadline") or {}).get("deadline_time")
    detail = {
        "alert": f"{dag_id} run {run_id} on {cluster or '?'} overran the maintenance window {window!r} "
        f"({window_text}): still {run.get('state') or 'running'} at the deadline {deadline}",
        "window": window,
        "deadline": str(deadline),
        "queued_at": str(run.get("queued_at")),
    }
    log.warning(detail["alert"])
    sent = send(
        "deadline_missed",
        dag_id,
        run_id,
        cluster,
        {"dag_run": run},
        detail=detail,
        run_link=_ui_run_link(dag_id, run_id),
    )
    return f"{detail['alert']}; sent through {sent} channel(s)"


# -- the automatic rollback did not start ----------------------------------------------------------------------


def rollback_not_started(
    dag_id: str, run_id: str, cluster: str | None, rollback_dag_id: str, rollback_run_id: str, reason: str, context: Any
) -> int:
    """The loud alert: the run failed, the automatic rollback did NOT start, and how to start it by hand."""
    conf = {"upgrade_dag_id": dag_id, "upgrade_run_id": run_id, "postgres_conn_id": cluster}
    conf_json = json.dumps(conf)
    detail = {
        "alert": f"THE AUTOMATIC ROLLBACK DID NOT START: {reason}. The cluster {cluster or '?'} is left as the "
        "failed run left it until someone starts the rollback.",
        "reason": reason,
        "rollback_dag_id": rollback_dag_id,
        "rollback_run_id": rollback_run_id,
        "manual_conf": conf,
        "start_by_hand_ui": f"unpause {rollback_dag_id} if paused, then Trigger DAG w/ config with {conf_json}",
        "start_by_hand_cli": f"airflow dags unpause {rollback_dag_id} && airflow dags trigger {rollback_dag_id} "
        f"--run-id {rollback_run_id} --conf '{conf_json}'",
    }
    log.error("%s\n%s\n%s", detail["alert"], detail["start_by_hand_ui"], detail["start_by_hand_cli"])
    return send("rollback_trigger_failed", dag_id, run_id, cluster, context, detail=detail)


def failed_after_open(dag_id: str, run_id: str, cluster: str | None, why: str, context: Any) -> int:
    """The loud alert: a step after opening failed; the validated new version keeps serving (no rollback)."""
    detail = {
        "alert": f"A STEP FAILED AFTER THE NEW VERSION OPENED on {cluster or '?'}: {why}. Clients are served by the "
        "validated new version; nothing was rolled back. Fix the failed step, or trigger the rollback DAG by hand "
        "(it keeps clients out while it compares and goes back, and asks before discarding their writes).",
        "reason": why,
    }
    log.error(detail["alert"])
    return send("failed_after_open", dag_id, run_id, cluster, context, detail=detail)
