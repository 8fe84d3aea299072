"""Method choice and transfer modes: copy, dump/restore, auto → dump/restore, blockers refused in the plan."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import report_of, run, upgrade_conf
from pgharness import APP_DB, installation, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])


def _ok(dr, states):
    assert dr.state == "success", {t: s for t, s in states.items() if s != "success"}


@pytest.mark.parametrize("method", ["copy", "dump_restore"])
def test_15_to_17_copy_and_dump_restore(pool, method):
    old = pool.new("15.18")
    extra = {"transfer_mode": "copy"} if method == "copy" else {"method": "dump_restore"}
    conf = upgrade_conf(pool, old, "17", target_major=17, **extra)
    track_new(pool, old, conf)
    dr, states = run("pg_major_upgrade", conf)
    _ok(dr, states)
    assert states["upgrade.pg_upgrade" if method == "copy" else "upgrade.dump_restore"] == "success"
    assert states["upgrade.dump_restore" if method == "copy" else "upgrade.pg_upgrade"] == "skipped"
    assert served_version(old) == 17
    with connect(old, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") == 1000
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_metadata") == 2
    # copy and dump/restore leave the old cluster intact
    assert not Path(old.datadir, "global", "pg_control.old").exists()
    rep = report_of(STATE, "pg_major_upgrade", dr.run_id)
    assert rep["plan"]["method"] == ("pg_upgrade" if method == "copy" else "dump_restore")
    print(f"15.18→17.10 {method}: outage {rep['outage']['seconds']}s")


def test_auto_picks_dump_restore_for_reg_columns_and_says_why(pool):
    old = pool.new("15.18")
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE handlers (name text, fn regproc)")
        cur.execute("INSERT INTO handlers VALUES ('now', 'now'::regproc)")
    conf = upgrade_conf(pool, old, "16", method="auto")
    track_new(pool, old, conf)
    dr, states = run("pg15_to_pg16_upgrade", conf)
    _ok(dr, states)
    plan = RunState.for_run("pg15_to_pg16_upgrade", dr.run_id, STATE).load("plan")
    assert plan["method"] == "dump_restore" and "regproc" in plan["method_reason"], plan["method_reason"]
    with connect(old, APP_DB) as conn:
        assert scalar(conn, "SELECT fn::text FROM handlers") == "now"
    assert served_version(old) == 16


def test_missing_extension_library_fails_plan_before_anything_stops(pool):
    old = pool.new("15.18")
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTENSION pg_trgm")
    new16 = installation("16")
    # the new installation got pg_trgm's SQL files but not its library (a half-installed package)
    src = Path(installation("15.18").extension_dir)
    copied = [shutil.copy2(f, new16.extension_dir) for f in src.glob("pg_trgm*")]
    try:
        conf = upgrade_conf(pool, old, "16")
        dr, states = run("pg15_to_pg16_upgrade", conf)
    finally:
        for f in copied:
            os.unlink(f)
    assert dr.state == "failed" and states["plan.plan"] == "failed", states
    state = RunState.for_run("pg15_to_pg16_upgrade", dr.run_id, STATE)
    failure = next(e for e in state.events() if e["event"] == "step" and e["status"] == "failed")
    assert "pg_trgm" in failure["error"] and "library" in failure["error"], failure
    assert not state.happened("old_stop_requested") and not state.happened("logins_blocked")
    assert served_version(old) == 15 and not Path(conf["new_datadir"]).exists()


def test_dry_run_changes_nothing(pool):
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", dry_run=True)
    dr, states = run("pg15_to_pg16_upgrade", conf)
    _ok(dr, states)
    assert states["plan.plan"] == "success" and states["upgrade.pg_upgrade"] == "skipped"
    assert served_version(old) == 15
    assert not Path(conf["new_datadir"]).exists() and not Path(conf["backup_dir"]).exists()


def test_rehearsal_touches_nothing_in_production(pool):
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", rehearsal=True, dry_run=False)
    # stop the real run right after the rehearsal: the window has already ended
    conf["window_end"] = "2000-01-01T00:00:00+00:00"
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert states["prepare.rehearsal"] == "success" and states["stop.window_guard"] == "failed", states
    state = RunState.for_run("pg15_to_pg16_upgrade", dr.run_id, STATE)
    step = next(e for e in state.events() if e["event"] == "step" and e["step"] == "rehearsal")
    assert step["status"] == "success"
    assert served_version(old) == 15 and not Path(conf["new_datadir"]).exists()
    assert not state.happened("old_stop_requested")


@pytest.mark.full  # CI: tests/integration/test_rollback_after_success.py refuses and rolls back after writes
def test_manual_rollback_after_success_only_when_nothing_was_written(pool):
    """Rolling back by hand after a successful copy-mode upgrade: refused while the new cluster holds a write
    made after it opened (and the new cluster keeps serving), allowed once its facts equal those at opening."""
    from airflow_helpers import run as run_dag

    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "17", target_major=17, transfer_mode="copy")
    track_new(pool, old, conf)
    dr, states = run_dag("pg_major_upgrade", conf)
    _ok(dr, states)
    rb_conf = {
        "postgres_conn_id": conf["postgres_conn_id"],
        "upgrade_dag_id": "pg_major_upgrade",
        "upgrade_run_id": dr.run_id,
    }
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO customers VALUES ('after-open', 'FR')")
    refused, states = run_dag("pg_major_upgrade_rollback", rb_conf)
    assert refused.state == "failed" and states["assess"] == "failed", states
    assert served_version(old) == 17
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        assert scalar(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_user'") is True
        cur.execute("DELETE FROM customers WHERE name = 'after-open'")
        cur.execute("SELECT pg_tviews_drain_queue()")  # the extension queued both changes
    ok, states = run_dag("pg_major_upgrade_rollback", rb_conf)
    assert ok.state == "success", states
    assert RunState.for_run("pg_major_upgrade_rollback", ok.run_id, STATE).load("decision")["path"] == "old_intact"
    assert served_version(old) == 15
    with connect(old, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") == 1000
    again, states = run_dag("pg_major_upgrade_rollback", rb_conf)  # by mistake: 15 serves clients again
    assert again.state == "failed" and states["assess"] == "failed", states
    error = next(e["error"] for e in RunState.for_run("pg_major_upgrade_rollback", again.run_id, STATE).events()
                 if e["event"] == "step" and e["status"] == "failed")  # fmt: skip
    assert "was already rolled back" in error, error
    assert served_version(old) == 15


def test_cluster_already_at_the_target_ends_green_and_untouched(pool):
    """A scheduled run that finds its cluster already upgraded: green, a log line, nothing touched."""
    current = pool.new("16")
    with connect(current) as conn:
        started = scalar(conn, "SELECT pg_postmaster_start_time()")
    conf = upgrade_conf(pool, current, "16")
    dr, states = run("pg15_to_pg16_upgrade", conf)
    _ok(dr, states)
    assert states["plan.dry_run_gate"] == "success" and states["prepare.backup"] == "skipped", states
    assert RunState.for_run(dr.dag_id, dr.run_id, STATE).load("plan")["already_upgraded"] is True
    with connect(current) as conn:
        assert scalar(conn, "SELECT pg_postmaster_start_time()") == started
    assert served_version(current) == 16 and not Path(conf["backup_dir"]).exists()
