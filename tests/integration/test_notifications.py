"""A failure before the stop (the queue never drains): the rollback DAG is triggered and gives the still-running old
cluster back; alerts go out through Airflow notifiers (our webhook notifier); the connection's password appears in
no log, report, state file or alert."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from pgupgrade.sql import connect

from airflow_helpers import assert_rolled_back, run, triggered_runs, upgrade_conf
from conftest import register_connection
from pgharness import APP_DB, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
SECRET = "S3cret-Pa55word-for-the-test"


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """The alerts our webhook notifier sends, as a receiver on the loopback got them (Variable pgupgrade_notify)."""
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received.clear()
    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": server.server_port, "schema": "hook"}),
    )
    monkeypatch.setenv("AIRFLOW_VAR_PGUPGRADE_NOTIFY", json.dumps({"webhook_conn_id": "alerts"}))
    try:
        yield Receiver.received
    finally:
        server.shutdown()


def test_failure_alerts_and_no_secret_anywhere(pool, monkeypatch, capfd, alerts):
    old = pool.new("15.18")
    with connect(old) as conn, conn.cursor() as cur:  # trust auth ignores it, but it is the connection's secret
        cur.execute("ALTER ROLE postgres PASSWORD %s", (SECRET,))
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('pending', 1)")  # the queue never drains
    secret_old = replace(old, password=SECRET)
    conf = upgrade_conf(pool, old, "16", queue_wait_timeout_s=1)
    conf["postgres_conn_id"] = register_connection(secret_old, "pg_with_password")
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed"
    assert states["stop.wait_queue_empty"] == "failed" and states["trigger_rollback"] == "success", states
    assert_rolled_back(old, "pg15_to_pg16_upgrade", dr.run_id, "old_running")
    events = [m["event"] for m in alerts]
    assert events == ["outage_start", "failure", "rollback"], events
    failure = alerts[1]
    assert failure["cluster"] == "pg_with_password" and failure["failed_step"] == "wait_queue_empty"
    assert "queue_wait_timeout_s" in failure["error"] and failure["dag_id"] == "pg15_to_pg16_upgrade"
    out, err = capfd.readouterr()
    assert SECRET not in out + err, "password in task logs"
    assert SECRET not in json.dumps(alerts), "password in an alert"
    for path in Path(os.environ["PGUPGRADE_STATE_DIR"]).rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), f"password in {path}"


def test_failure_after_opening_alerts_and_the_new_version_keeps_serving(pool, monkeypatch, alerts):
    """after_open_failure=alert (the default): analyze fails after the opening; the validated new version keeps
    serving, the alert goes out, the run is failed and no rollback run is created."""
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "analyze")
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", transfer_mode="link")
    track_new(pool, old, conf)
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed" and states["after.analyze"] == "failed", states
    assert states["trigger_rollback"] == "skipped", states
    assert not [r for r in triggered_runs("pg_major_upgrade_rollback") if r.run_id == f"rollback__{dr.run_id}"]
    assert served_version(old) == 16  # the new version serves on the old port
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('after-open', 1)")  # and takes writes
    events = [m["event"] for m in alerts]
    assert "failed_after_open" in events and "rollback" not in events, events
    alert = next(m for m in alerts if m["event"] == "failed_after_open")
    assert "keeps serving" in json.dumps(alert)
