"""Operations under the real Airflow 3.3 scheduler (one stack for the module): failure alerts reach a real SMTP
server and a webhook, the trigger form in the UI (headless Debian chromium) rejects a bad value, an application
that stays unhealthy after the start fails the run and triggers the rollback, and a run that overruns its
maintenance window (a 20-second window in this stack) raises the DeadlineAlert and — its rollback DAG paused —
the loud "rollback did not start" alert."""

from __future__ import annotations

import email
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar

from airflow_stack import AirflowStack, chrome, free_port, ui_login
from pgharness import APP_DB, connection_env, installation

pytestmark = pytest.mark.scheduler
UPGRADE_DAG = "pg15_to_pg16_upgrade"
GENERIC_DAG = "pg_major_upgrade"
FAIL_RUN = "ops-fail"  # pg15_to_pg16_upgrade: the queue never drains
UNHEALTHY_RUN = "ops-unhealthy-app"  # pg_major_upgrade to 16: the application stays unhealthy after the start
ROLLBACK_DAG = "pg_major_upgrade_rollback"
MINOR_DAG, MINOR_ROLLBACK_DAG = "pg_minor_upgrade", "pg_minor_upgrade_rollback"
WINDOW_RUN = "ops-window-overrun"  # pg_minor_upgrade: a client never leaves; runs past the 20 s window, then fails
WINDOW_S = 20


def _version(cluster: Cluster) -> int:
    with connect(cluster) as conn:
        return int(scalar(conn, "SHOW server_version_num")) // 10000


class _Http:
    """A local HTTP server in a thread: records JSON POSTs, answers GETs with a fixed status."""

    def __init__(self, get_status: int = 200) -> None:
        self.posts: list[dict[str, Any]] = []
        self.gets = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append(json.loads(body or b"{}"))
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                outer.gets += 1
                self.send_response(get_status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"unhealthy\n" if get_status >= 400 else b"ok\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Mailbox:
    """aiosmtpd handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.original_content or envelope.content))
        return "250 Message accepted for delivery"


def _mail_text(msg: email.message.Message) -> str:
    parts = [str(msg["Subject"])]
    for part in msg.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload.decode(part.get_content_charset() or "utf-8", errors="replace"))
    return "\n".join(parts)


@dataclass
class Ops:
    stack: AirflowStack
    state_dir: Path
    failing: Cluster
    healthy: Cluster
    webhook: _Http
    app: _Http
    mailbox: _Mailbox
    pool: Any
    window: Cluster


@pytest.fixture(scope="module")
def ops(pool: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    from aiosmtpd.controller import Controller

    meta = pool.new("17", "ops_meta", seed=False)
    failing = pool.new("15.18", "ops_failing")
    healthy = pool.new("15.18", "ops_unhealthy_app")
    window = pool.new("15.18", "ops_window")
    windows_file = tmp_path_factory.mktemp("ops-windows") / "windows.json"
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]  # deadline = the window's length: 20 s
    windows_file.write_text(
        json.dumps({"default": {"days": days, "start": "00:00:00", "end": f"00:00:{WINDOW_S}", "timezone": "UTC"}})
    )
    held = ExitStack()  # a client session that never leaves: the window run's wait_no_clients keeps waiting
    held.enter_context(connect(window, APP_DB))
    with connect(failing, APP_DB) as conn, conn.cursor() as cur:  # a queue that never drains → sensor fails
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('pending', 1)")
    state_dir = tmp_path_factory.mktemp("ops") / "state"
    webhook, app, mailbox = _Http(), _Http(get_status=503), _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    stack: AirflowStack | None = None
    try:
        env = dict([connection_env(failing), connection_env(healthy), connection_env(window)])
        env |= {
            "PGUPGRADE_STATE_DIR": str(state_dir),
            "PGUPGRADE_WINDOWS_FILE": str(windows_file),
            "AIRFLOW_CONN_OPS_SMTP": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "pgupgrade@example.com"},
                }
            ),
            "AIRFLOW_CONN_OPS_WEBHOOK": json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": webhook.port, "schema": "alerts"}
            ),
            "AIRFLOW_VAR_PGUPGRADE_NOTIFY": json.dumps(
                {"webhook_conn_id": "ops_webhook", "smtp_conn_id": "ops_smtp", "email_to": ["dba@example.com"]}
            ),
            "AIRFLOW_VAR_PGUPGRADE_APP_HEALTH": json.dumps(
                {"url": f"http://127.0.0.1:{app.port}/health", "timeout_s": 3, "interval_s": 0.5}
            ),
        }
        stack = AirflowStack(meta, env).start()
        stack.wait_for_dags([UPGRADE_DAG, GENERIC_DAG, ROLLBACK_DAG, MINOR_DAG, MINOR_ROLLBACK_DAG])
        for dag_id in (UPGRADE_DAG, GENERIC_DAG, ROLLBACK_DAG, MINOR_DAG, MINOR_ROLLBACK_DAG):
            stack.unpause(dag_id)
        # the upgrade runs start now and go on side by side (three DAGs, three clusters) while the tests look at them
        stack.trigger(UPGRADE_DAG, _conf(failing, queue_wait_timeout_s=1), FAIL_RUN)
        stack.trigger(GENERIC_DAG, _conf(healthy, target_major=16, after_open_failure="rollback"), UNHEALTHY_RUN)
        stack.trigger(MINOR_DAG, _minor_conf(window), WINDOW_RUN)
        # the window run checked its rollback DAG is active; now an operator pauses it (before the run fails)
        _wait(lambda: _task_state(stack, MINOR_DAG, WINDOW_RUN, "plan.check_rollback_dag") == "success", 240, "check")
        stack.pause(MINOR_ROLLBACK_DAG)
        yield Ops(stack, state_dir, failing, healthy, webhook, app, mailbox, pool, window)
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.home, ignore_errors=True)
        held.close()
        smtp.stop()
        webhook.stop()
        app.stop()


def _conf(cluster: Cluster, **over: Any) -> dict[str, Any]:
    home = Path(cluster.datadir).parent
    return {
        "postgres_conn_id": cluster.name,
        "backup_dir": str(home / "backup"),
        "new_datadir": str(home / "data16"),
        "new_bindir": installation("16").bindir,
        **over,
    }


def _minor_conf(cluster: Cluster) -> dict[str, Any]:
    return {
        "postgres_conn_id": cluster.name,
        "installer": "bindir",
        "target_version": "15.20",
        "new_bindir": installation("15.20").bindir,
        "backup_dir": str(Path(cluster.datadir).parent / "backup"),
        "min_free_gb": 1,
        "connection_wait_timeout_s": 30,
    }


def _task_state(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> str | None:
    try:
        return stack.task_states(dag_id, run_id).get(task_id)
    except Exception:  # the run is not there yet
        return None


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not seen within {timeout}s")


def _assert_rollback_triggered(ops: Ops, dag_id: str, run_id: str, cluster: Cluster) -> dict[str, Any]:
    rb_id = f"rollback__{run_id}"
    _wait(lambda: ops.stack.run_state(ROLLBACK_DAG, rb_id) is not None, 60, f"rollback run {rb_id}")
    run = ops.stack.api("GET", f"/dags/{ROLLBACK_DAG}/dagRuns/{rb_id}")
    want = {"upgrade_dag_id": dag_id, "upgrade_run_id": run_id, "postgres_conn_id": cluster.name}
    assert run["conf"] == want, run["conf"]
    return dict(run)


def test_trigger_form_in_the_ui_rejects_a_bad_value(ops: Ops, tmp_path: Path) -> None:
    """Headless chromium logs into the UI, opens the trigger form of pg15_to_pg16_upgrade, finds the documented
    fields, fills the form validly, then types a bad value (Parallel jobs = 0, minimum 1): the form refuses it and
    no run is created (checked over REST)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    artifacts = Path(os.environ.get("PGUPGRADE_TEST_ARTIFACTS") or tmp_path)  # screenshot + page source
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "trigger-form-rejected.png"
    before = _run_ids(ops)
    driver = chrome()
    try:
        wait = WebDriverWait(driver, 30)
        ui_login(driver, ops.stack.base)

        driver.get(f"{ops.stack.base}/dags/{UPGRADE_DAG}")
        wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Trigger']"))).click()
        wait.until(ec.presence_of_element_located((By.ID, "element_postgres_conn_id")))
        dialog = driver  # the form is the only one on the page (Chakra renders it in a portal)
        text = str(driver.find_element(By.TAG_NAME, "body").get_attribute("textContent"))  # collapsed sections too
        for title in ("Cluster connection", "pg_upgrade transfer mode", "Dry run", "Parallel jobs", "Backup directory"):
            assert title in text, f"{title!r} not in the trigger form:\n{text}"
        submit = dialog.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")
        print(f"trigger button enabled with the defaults: {submit.is_enabled()}")
        # string params whose default is "" count as missing in the UI form: give them values
        home = Path(ops.failing.datadir).parent
        for section, name, value in (
            ("Backup", "backup_dir", str(home / "ui-backup")),
            ("New cluster", "new_bindir", installation("16").bindir),
            ("New cluster", "new_datadir", str(home / "ui-data16")),
            ("Outage", "window_end", "2099-01-01T00:00:00+00:00"),
        ):
            _open_section(driver, section)
            _type_into(driver, dialog.find_element(By.ID, f"element_{name}"), value)
        time.sleep(0.5)
        valid_enabled = submit.is_enabled()
        print(f"trigger button enabled with valid values: {valid_enabled}")

        _open_section(driver, "Run")
        inc = dialog.find_element(By.ID, "number-input:element_jobs:inc")
        jobs = dialog.find_element(By.ID, inc.get_attribute("aria-controls"))
        _type_into(driver, jobs, "0")
        time.sleep(0.5)
        clamped = jobs.get_attribute("value")
        print(f"Parallel jobs after typing 0 (minimum 1): {clamped!r}")  # the number input clamps on blur
        assert clamped != "0" or not submit.is_enabled(), "jobs = 0 accepted by the form"
        _type_into(driver, jobs, "")  # a required integer left empty: the form must refuse it
        time.sleep(0.5)
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        flagged = driver.find_element(By.CSS_SELECTOR, "button[data-part=item-trigger][id$=':trigger:Run']")
        assert not submit.is_enabled(), "the Trigger button stays enabled with Parallel jobs empty"
        assert "This field is required" in driver.find_element(By.TAG_NAME, "body").text, "no error shown"
        assert valid_enabled, "the form was not valid before the bad value (see the printed states)"
        print(f"Run section header: {flagged.text!r}; Trigger disabled: {not submit.is_enabled()}")
    except Exception:
        driver.save_screenshot(str(shot))
        (artifacts / "trigger-form.html").write_text(driver.page_source)
        print(f"screenshot: {shot}; page source: {artifacts / 'trigger-form.html'}")
        raise
    finally:
        driver.quit()
    assert _run_ids(ops) == before, "the UI created a run with jobs = 0"


def _run_ids(ops: Ops) -> set[str]:
    return {r["dag_run_id"] for r in ops.stack.api("GET", f"/dags/{UPGRADE_DAG}/dagRuns")["dag_runs"]}


def test_failure_alerts_by_mail_and_webhook_and_rollback(ops: Ops) -> None:
    """A forced failure (a queue that never drains) triggered over REST: the failure mail reaches a real SMTP
    server, the webhook gets the JSON, both name the failed step, and the rollback DAG runs by itself."""
    run_id, started = FAIL_RUN, time.monotonic()
    assert ops.stack.wait_run(UPGRADE_DAG, run_id, timeout=300) == "failed"
    print(f"upgrade run failed after {time.monotonic() - started:.0f}s more")
    states = ops.stack.task_states(UPGRADE_DAG, run_id)
    assert states["stop.wait_queue_empty"] == "failed" and states["trigger_rollback"] == "success", states

    _assert_rollback_triggered(ops, UPGRADE_DAG, run_id, ops.failing)
    assert ops.stack.wait_run(ROLLBACK_DAG, f"rollback__{run_id}", timeout=300) == "success"
    print(f"rollback run succeeded after {time.monotonic() - started:.0f}s more")
    assert _version(ops.failing) == 15

    def failure_hook() -> dict[str, Any] | None:
        return next((p for p in ops.webhook.posts if p["run_id"] == run_id and p["event"] == "failure"), None)

    _wait(lambda: failure_hook() is not None, 60, "failure webhook")  # dag-level callback: in the dag-processor
    hook = failure_hook()
    assert hook is not None
    assert hook["failed_step"] == "wait_queue_empty" and hook["cluster"] == ops.failing.name, hook
    assert hook["dag_id"] == UPGRADE_DAG and "queue_wait_timeout_s" in (hook["error"] or "")

    def failure_mail() -> str | None:
        texts = [_mail_text(m) for m in ops.mailbox.messages]
        return next((t for t in texts if "FAILED" in t and ops.failing.name in t and run_id in t), None)

    _wait(lambda: failure_mail() is not None, 60, "failure mail")
    print(f"failure webhook and mail seen after {time.monotonic() - started:.0f}s more")
    mail = failure_mail()
    assert mail is not None and "wait_queue_empty" in mail, mail
    assert f"[pgupgrade] {UPGRADE_DAG} on {ops.failing.name} FAILED" in mail


def test_unhealthy_application_after_start_triggers_rollback(ops: Ops) -> None:
    """A successful-so-far 15.18 → 16 run: the application health URL (Variable pgupgrade_app_health) answers 503
    until its timeout, so app_health fails, the run fails and — the run asked for it (after_open_failure=rollback;
    the default alerts and keeps the new version serving) — the rollback run is triggered."""
    run_id, conf, started = (
        UNHEALTHY_RUN,
        _conf(ops.healthy, target_major=16, after_open_failure="rollback"),
        time.monotonic(),
    )
    assert ops.stack.wait_run(GENERIC_DAG, run_id, timeout=400) == "failed"
    print(f"upgrade run failed after {time.monotonic() - started:.0f}s more")
    states = ops.stack.task_states(GENERIC_DAG, run_id)
    assert states["after.start_applications"] == "success", states
    assert states["after.app_health"] == "failed" and states["trigger_rollback"] == "success", states
    assert states["report"] == "upstream_failed", states
    assert ops.app.gets >= 2, "the health URL was not polled"

    _assert_rollback_triggered(ops, GENERIC_DAG, run_id, ops.healthy)
    state = ops.stack.wait_run(ROLLBACK_DAG, f"rollback__{run_id}", timeout=300)
    served = _version(ops.healthy)
    if served == 16:  # the new cluster still serves on the old port: let the pool stop it at the end
        ops.pool.track(replace(ops.healthy, bindir=str(conf["new_bindir"]), datadir=str(conf["new_datadir"])))
    print(f"rollback run {state}; the cluster serves PostgreSQL {served}")
    if state == "success":
        assert served == 15


def _open_section(driver: Any, section: str) -> None:
    """Opens one section (accordion item) of the trigger form; its inputs are not interactable while closed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    button = driver.find_element(By.CSS_SELECTOR, f"button[data-part=item-trigger][id$=':trigger:{section}']")
    if button.get_attribute("aria-expanded") != "true":
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        button.click()
        WebDriverWait(driver, 10).until(lambda d: button.get_attribute("aria-expanded") == "true")
    time.sleep(0.3)


def _type_into(driver: Any, element: Any, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(value)
    element.send_keys(Keys.TAB)


def test_window_overrun_alert_and_loud_alert_when_the_rollback_cannot_start(ops: Ops) -> None:
    """pg_minor_upgrade on a cluster a client never leaves, in a stack whose maintenance window lasts 20 s: the run
    is still waiting for clients when the DeadlineAlert fires (the triggerer sends the webhook "overran the
    maintenance window"); then wait_no_clients gives up, the run fails with logins blocked and triggers its
    rollback — but the rollback DAG was paused after the run started: the webhook gets "rollback_trigger_failed"
    naming the run and the conf to start it by hand. Unpausing the DAG (what the alert says to do) starts the
    queued rollback, which gives the logins back."""
    started = time.monotonic()

    def hook(event: str) -> dict[str, Any] | None:
        return next((p for p in ops.webhook.posts if p["run_id"] == WINDOW_RUN and p["event"] == event), None)

    _wait(lambda: hook("deadline_missed") is not None, 120, "deadline webhook")
    late = hook("deadline_missed")
    assert late is not None and late["dag_id"] == MINOR_DAG and late["cluster"] == ops.window.name, late
    assert "overran the maintenance window" in late["subject"] and "overran" in late["detail"]["alert"], late
    print(f"deadline alert after {time.monotonic() - started:.0f}s: {late['detail']['alert']}")

    assert ops.stack.wait_run(MINOR_DAG, WINDOW_RUN, timeout=240) == "failed"
    states = ops.stack.task_states(MINOR_DAG, WINDOW_RUN)
    assert states["stop.wait_no_clients"] == "failed" and states["trigger_rollback"] == "success", states
    rb_id = f"rollback__{WINDOW_RUN}"
    assert ops.stack.run_state(MINOR_ROLLBACK_DAG, rb_id) == "queued"  # created, but its DAG is paused
    _wait(lambda: hook("rollback_trigger_failed") is not None, 60, "rollback_trigger_failed webhook")
    loud = hook("rollback_trigger_failed")
    assert loud is not None, loud
    want = {"upgrade_dag_id": MINOR_DAG, "upgrade_run_id": WINDOW_RUN, "postgres_conn_id": ops.window.name}
    assert loud["detail"]["manual_conf"] == want and loud["detail"]["rollback_run_id"] == rb_id, loud
    assert "DID NOT START" in loud["subject"] and "paused" in loud["detail"]["reason"], loud
    assert f"airflow dags trigger {MINOR_ROLLBACK_DAG} --run-id {rb_id}" in loud["detail"]["start_by_hand_cli"]
    print(f"rollback_trigger_failed after {time.monotonic() - started:.0f}s: {loud['detail']['reason']}")

    ops.stack.unpause(MINOR_ROLLBACK_DAG)  # the documented way out: the queued rollback run starts
    assert ops.stack.wait_run(MINOR_ROLLBACK_DAG, rb_id, timeout=180) == "success"
    with connect(ops.window, APP_DB) as conn:
        assert scalar(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_user'") is True
        assert int(scalar(conn, "SHOW server_version_num")) == 150018
    print(f"rollback done after {time.monotonic() - started:.0f}s")
