"""Every client kept out, whatever role it uses: an application role over the Unix socket and the tool's own
superuser over TCP keep reconnecting every 50 ms through a whole link upgrade; the run succeeds, no acknowledged
write is missing, none was acknowledged between the restart before the facts snapshot and the opening, and the
catalog never changed (no role lost LOGIN)."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pgupgrade.gates import GATE_MARK
from pgupgrade.sql import connect
from pgupgrade.state import RunState

from airflow_helpers import run, upgrade_conf
from pgharness import APP_DB, WriteProbe, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])


def _monotonic(iso: str) -> float:
    """A journal time (wall clock) on the probes' monotonic clock."""
    return dt.datetime.fromisoformat(iso).timestamp() - (time.time() - time.monotonic())


def test_superuser_and_application_clients_kept_out_from_snapshot_to_opening(pool):
    old = pool.new("15.18", settings={"listen_addresses": "'127.0.0.1'"})
    over_tcp = replace(old, host="127.0.0.1")
    WriteProbe.create_table(old)
    WriteProbe.create_table(old, "postgres", user="postgres")
    conf = upgrade_conf(pool, old, "17", target_major=17, transfer_mode="link", terminate_after_s=1)
    new = track_new(pool, old, conf)
    app = WriteProbe(old).start()  # app_user, Unix socket
    admin = WriteProbe(over_tcp, "postgres", user="postgres").start()  # the tool's own superuser, TCP
    try:
        time.sleep(0.5)
        dr, states = run("pg_major_upgrade", conf)
        time.sleep(1.5)  # both reconnect to the new cluster
    finally:
        app.stop()
        admin.stop()
    assert dr.state == "success", states
    events = RunState.for_run(dr.dag_id, dr.run_id, STATE).events()
    at = {e["event"]: _monotonic(e["at"]) for e in events if e["event"] in ("old_private_started", "new_public_start")}
    # the opening: the validated new cluster starts where clients reach it (recorded just before)
    closed, opened = at["old_private_started"], at["new_public_start"]
    snapshot = next(e for e in events if e["event"] == "step" and e["step"] == "snapshot_facts")
    assert _monotonic(snapshot["at"]) >= closed  # the facts are taken with every client already out
    for probe, cluster in ((app, replace(new, dbname=APP_DB)), (admin, replace(new, host="127.0.0.1"))):
        assert probe.lost(cluster) == []
        inside = [(i, t) for i, t in probe.acked if closed < t < opened]
        assert inside == [], inside
        assert any(t > opened for _, t in probe.acked), "the client did not come back after the opening"
        assert any(t < closed for _, t in probe.acked)
    with connect(new) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname = 'app_user' AND rolcanlogin")
        assert cur.fetchone(), "the gate changed the catalog"
        cur.execute("SELECT current_setting('hba_file')")
        new_hba = Path(cur.fetchone()[0]).read_text()
    assert GATE_MARK not in new_hba
    assert GATE_MARK in Path(old.config_dir, "pg_hba.conf").read_text()  # the old cluster keeps clients out
