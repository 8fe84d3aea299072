"""A rollback asked for by hand after a successful major upgrade (15.18 → 16, link mode) whose new cluster clients
already wrote to: refused, saying how many bytes of WAL would be lost, the new cluster serving on and the old
data directory untouched; with accept_data_loss the backup is restored, 15 serves again, and the report records
the loss that was accepted."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import report_of, run, upgrade_conf
from pgharness import APP_DB, Pool, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])
UPGRADE, ROLLBACK = "pg15_to_pg16_upgrade", "pg_major_upgrade_rollback"


def orders(cluster) -> int:  # type: ignore[no-untyped-def]
    with connect(cluster, APP_DB) as conn:
        return int(scalar(conn, "SELECT count(*) FROM orders"))


def test_rollback_after_success_states_the_wal_it_would_lose(pool: Pool) -> None:
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", transfer_mode="link")
    track_new(pool, old, conf)
    dr, states = run(UPGRADE, conf)
    assert dr.state == "success", states
    assert served_version(old) == 16  # the new cluster answers where the old one did
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer, amount) SELECT 'after-open', 1 FROM generate_series(1, 500)")
    rb_conf = {"postgres_conn_id": conf["postgres_conn_id"], "upgrade_dag_id": UPGRADE, "upgrade_run_id": dr.run_id}

    refused, rstates = run(ROLLBACK, rb_conf)
    assert refused.state == "failed" and rstates["assess"] == "failed", rstates
    assert rstates["restore_from_backup"] != "success" and rstates["bring_back_old"] != "success", rstates
    journal = RunState.for_run(ROLLBACK, refused.run_id, STATE).events()
    error = next(e["error"] for e in journal if e["event"] == "step" and e["step"] == "assess")
    wal = re.search(r"(\d+) bytes of WAL written since (opening|validation before opening)", error)
    assert wal and int(wal[1]) > 0 and "accept_data_loss=true" in error, error
    assert served_version(old) == 16 and orders(old) == 1500  # the new cluster serves on, writes and all
    with connect(old, APP_DB) as conn:  # logins given back after the check
        assert scalar(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_user'") is True
    assert Path(old.datadir, "PG_VERSION").read_text().strip() == "15"  # the old data directory is untouched
    assert not [p for p in Path(old.datadir).parent.iterdir() if p.name.startswith("data.failed-")]
    print(f"refused: {error}")

    ok, ostates = run(ROLLBACK, {**rb_conf, "accept_data_loss": True})
    assert ok.state == "success", ostates
    assert ostates["restore_from_backup"] == "success", ostates
    assert served_version(old) == 15 and orders(old) == 1000  # the backup's rows: the later ones are gone
    rep = report_of(STATE, ROLLBACK, ok.run_id)
    accepted = rep["accepted_data_loss"]
    assert rep["rollback_path"] == "restore_backup" and accepted["wal_bytes"] >= int(wal[1]), accepted
    assert "bytes of WAL" in accepted["what"] and accepted["changes"], accepted
