"""The applications' own health check after the upgrade (Variable pgupgrade_app_health): an HTTP endpoint polled
until it answers as expected."""

from __future__ import annotations

import logging
import time
from typing import Any

from pgupgrade.airflow.context import admin_json_variable
from pgupgrade.airflow.tasks import step_task
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError
from pgupgrade.params import Field

log = logging.getLogger(__name__)


APP_HEALTH_VARIABLE = "pgupgrade_app_health"


def app_health_config() -> dict[str, Any] | None:
    """The admin-configured application health check (Airflow Variable pgupgrade_app_health, JSON
    ``{"url": "http://...", "timeout_s": 60, "interval_s": 1, "expect_status": 200}``), never from trigger conf.
    None when not configured."""
    cfg = admin_json_variable(APP_HEALTH_VARIABLE)
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(APP_HEALTH_VARIABLE, "must be a JSON object with at least a url")
    url = cfg.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{APP_HEALTH_VARIABLE}.url", f"must be an http:// or https:// URL, got {url!r}")
    out: dict[str, Any] = {"url": url}
    for key, default in (("timeout_s", 60.0), ("interval_s", 1.0)):
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{APP_HEALTH_VARIABLE}.{key}", f"must be a positive number, got {value!r}")
        out[key] = float(value)
    status = cfg.get("expect_status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ConfigError(f"{APP_HEALTH_VARIABLE}.expect_status", f"must be an HTTP status code, got {status!r}")
    out["expect_status"] = status
    unknown = sorted(set(cfg) - {"url", "timeout_s", "interval_s", "expect_status"})
    if unknown:
        raise ConfigError(APP_HEALTH_VARIABLE, f"unknown keys: {', '.join(unknown)}")
    return out


def poll_app_health(url: str, timeout_s: float, interval_s: float, expect_status: int) -> str:
    """GETs url every interval_s until it answers expect_status; raises CheckFailed when it still does not
    after timeout_s (the last status or connection error in the message)."""
    import requests

    from pgupgrade.errors import CheckFailed

    started = time.monotonic()
    deadline = started + timeout_s
    attempts = 0
    last = "no answer"
    while True:
        attempts += 1
        try:
            resp = requests.get(url, timeout=max(1.0, min(10.0, deadline - time.monotonic())), allow_redirects=False)
            if resp.status_code == expect_status:
                took = time.monotonic() - started
                return f"application healthy: {url} answered {resp.status_code} ({attempts} attempt(s), {took:.1f}s)"
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
        log.info("app health: %s answered %s (attempt %d), want %d", url, last, attempts, expect_status)
        if time.monotonic() + interval_s > deadline:
            raise CheckFailed(
                f"application unhealthy: {url} still answered {last} (want {expect_status}) after "
                f"{attempts} attempt(s) in {time.monotonic() - started:.1f}s ({APP_HEALTH_VARIABLE}.timeout_s="
                f"{timeout_s:g})"
            )
        time.sleep(interval_s)


def app_health_task(*, fields: list[Field], spec: dict[str, Any] | None, doc: str | None = None) -> Any:
    """Task ``app_health``: polls the admin-configured application health URL after the applications were started.
    Not configured: succeeds with a message saying so. Still unhealthy at the timeout: fails, so the run fails
    and its rollback is triggered."""

    def _run(rc: RunContext) -> str:
        cfg = app_health_config()
        if cfg is None:
            msg = f"no application health check configured (Variable {APP_HEALTH_VARIABLE}): skipped"
            log.info(msg)
            return msg
        msg = poll_app_health(cfg["url"], cfg["timeout_s"], cfg["interval_s"], cfg["expect_status"])
        log.info(msg)
        return msg

    return step_task(
        "app_health",
        _run,
        fields=fields,
        spec=spec,
        doc=doc
        or f"Polls the admin-configured application health URL (Variable {APP_HEALTH_VARIABLE}); fails the run "
        "(→ rollback) when it is still unhealthy at its timeout_s; skipped with a message when not configured.",
    )
