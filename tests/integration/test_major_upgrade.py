"""Major upgrades through Airflow (dag.test) on real clusters: success paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import report_of, run, run_under_writes, upgrade_conf
from pgharness import APP_DB, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
OK = {"success", "skipped"}
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])


@pytest.mark.parametrize(("old_v", "new_v"), [("15.18", "16"), ("16", "17"), ("17", "18")])
def test_link_mode_upgrade_with_a_client_that_never_stops(pool, old_v, new_v):
    """Each hop in link mode while an application keeps inserting and reconnecting: the run is green, the new
    major answers on the old port with identical facts, and no acknowledged write is missing afterwards."""
    old = pool.new(old_v)
    conf = upgrade_conf(pool, old, new_v, transfer_mode="link", terminate_after_s=0)
    track_new(pool, old, conf)
    dag_id = f"pg{old_v.split('.')[0]}_to_pg{new_v}_upgrade"
    probe, dr, states = run_under_writes(old, dag_id, conf)
    assert dr.state == "success", {t: s for t, s in states.items() if s != "success"}
    assert {s for t, s in states.items() if t not in ("handover_lock", "trigger_rollback")} <= OK, states
    assert states["trigger_rollback"] == "skipped"
    assert len(probe.acked) > 10 and probe.errors > 0  # it wrote before and after, and was refused during
    assert probe.missing(old) == []
    # the new major answers on the old port and socket, with the data
    assert served_version(old) == int(new_v)
    with connect(old, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") == 1000
        assert scalar(conn, "SELECT count(*) FROM tv_order_totals") == 37
        assert scalar(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_user'") is True
    state = RunState.for_run(dag_id, dr.run_id, STATE)
    before, after = state.load("facts_before"), state.load("facts_after")
    assert before["databases"].keys() == after["databases"].keys()
    for db in before["databases"]:
        assert {t: v["rows"] for t, v in before["databases"][db]["tables"].items()} == {
            t: v["rows"] for t, v in after["databases"][db]["tables"].items()
        }
    rep = report_of(STATE, dag_id, dr.run_id)
    steps = {s["step"]: s for s in rep["steps"]}
    assert {"plan", "backup", "pg_upgrade", "validate_facts", "open_to_clients"} <= set(steps)
    assert all(s["seconds"] is not None for s in rep["steps"])
    assert rep["outage"]["seconds"] > 0 and rep["plan"]["transfer_mode"] == "link"
    print(
        f"{dag_id}: outage {rep['outage']['seconds']}s, server down {rep['server_down_seconds']}s, "
        f"client's longest gap {probe.longest_gap():.2f}s, {len(probe.acked)} writes acknowledged, 0 lost"
    )
    if old_v == "15.18":
        cleanup_after(old, conf, dr.run_id)


def cleanup_after(old: Cluster, conf: dict[str, object], run_id: str) -> None:
    """pg_major_upgrade_cleanup refuses without the exact confirmation and before the minimum age."""
    base = {
        "postgres_conn_id": conf["postgres_conn_id"],
        "upgrade_dag_id": "pg15_to_pg16_upgrade",
        "upgrade_run_id": run_id,
    }
    wrong, states = run("pg_major_upgrade_cleanup", {**base, "confirm_delete": "/somewhere/else", "min_age_hours": 0})
    assert wrong.state == "failed" and states["check"] == "failed"
    young, states = run("pg_major_upgrade_cleanup", {**base, "confirm_delete": old.datadir})  # default 24 h
    assert young.state == "failed" and states["check"] == "failed"
    assert Path(old.datadir, "PG_VERSION").exists()
    ok, states = run("pg_major_upgrade_cleanup", {**base, "confirm_delete": old.datadir, "min_age_hours": 0})
    assert ok.state == "success", states
    assert not Path(old.datadir).exists() and served_version(old) == 16
