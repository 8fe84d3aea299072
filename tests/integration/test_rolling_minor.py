"""Rolling minor upgrade (pgupgrade.minor.standbys) on real servers: a 15.18 primary and its streaming standby
(``pg_basebackup -R``, listed in the primary's connection extra ``standbys``), installer bindir 15.18 → 15.20 under
an application writing and reconnecting every 50 ms.

The standby is restarted on 15.20 first, while the primary serves (journal: standby switched before the primary's
stop), and streams again; then the primary's own outage. 0 acknowledged writes lost; a row written after opening
reaches the standby. A person then asks for the rollback: the primary back on 15.18, then the standby (last: it must
replay its primary's WAL), streaming again, every write kept.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from pgupgrade.sql import connect
from pgupgrade.state import RunState, state_root

from airflow_helpers import ROLLBACK, UPGRADE, minor_conf, report_of, run, run_under_writes
from conftest import register_connection
from pgharness import APP_DB, Pool, served, wait_replayed, wait_streaming

pytestmark = pytest.mark.usefixtures("airflow_home")


def _reaches(standby, marker: str) -> None:
    wait_replayed(standby, "SELECT count(*) FROM orders WHERE customer = %s", (marker,), timeout=30)


def test_standby_first_then_the_primary_and_back(pool: Pool) -> None:
    primary = pool.new("15.18", f"roll_p{os.getpid()}")
    standby = pool.standby(primary, f"{primary.name}_s1")
    wait_streaming(primary, {standby.name})
    register_connection(standby)
    primary = replace(primary, standbys=(standby.name,))
    conf = minor_conf(primary, terminate_after_s=0)  # the application never stops: cut off by the cutover

    probe, dr, states = run_under_writes(primary, UPGRADE, conf)
    assert dr.state == "success", states
    assert states["pre_upgrade.upgrade_standbys"] == "success", states
    assert len(probe.acked) > 10 and probe.lost(primary) == []
    assert served(primary)[0] == 150020 and served(standby)[0] == 150020
    journal = RunState.for_run(UPGRADE, dr.run_id, state_root())
    events = [e["event"] for e in journal.events() if e["event"] != "step"]
    assert events.index("standby_switch") < events.index("standby_switched") < events.index("old_stop_requested")
    switched = journal.first("standby_switched")
    assert switched["name"] == standby.name and switched["release"] == "15.20", switched
    wait_streaming(primary, {standby.name})
    with connect(primary, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('after-open', 1)")
    _reaches(standby, "after-open")
    rep = report_of(state_root(), UPGRADE, dr.run_id)
    print(
        f"rolling minor: standby switched in {switched['seconds']}s while the primary served; "
        f"primary outage {rep['outage']['seconds']}s; {len(probe.acked)} writes acknowledged, none lost"
    )

    rb, rb_states = run(ROLLBACK, {"postgres_conn_id": conf["postgres_conn_id"], "upgrade_run_id": dr.run_id})
    assert rb.state == "success", rb_states
    assert rb_states["standbys_back"] == "success", rb_states
    assert served(primary)[0] == 150018 and served(standby)[0] == 150018
    rb_journal = RunState.for_run(ROLLBACK, rb.run_id, state_root())
    back = rb_journal.first("standby_switched")
    assert back["name"] == standby.name and back["release"] == "15.18" and back["to"] == standby.bindir, back
    wait_streaming(primary, {standby.name})
    with connect(primary, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('after-rollback', 1)")
    _reaches(standby, "after-open")
    _reaches(standby, "after-rollback")
