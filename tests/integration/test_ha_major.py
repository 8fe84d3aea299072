"""Major upgrade 15 → 16 (link mode) of a primary and its two streaming standbys (physical slots), each on its own
host: the namespace hosts of tests/topology.py (127.0.0.2-4, own sshd, own /tmp and home), reached by this worker
over SSH only. The rsync runs on the primary's host and logs in to each standby host over SSH with the postgres
user's own key (known_hosts set up as a DBA would).

0. A standby host without rsync: the plan step refuses, naming it; nothing stopped.
1. A failure injected right after the rsync (``configure_new``, the new primary never started): the rollback
   renames pg_control back on the primary and on each standby and restarts them: 15 on all three, both streaming
   again, the data as before.
2. The upgrade through: 16 on all three, both standbys streaming from the new primary through their recreated
   slots, a row written after opening on both. A rollback then asked by hand (``accept_data_loss``): the primary
   rebuilt from its base backup; the standbys started on 16 (their old files, hard links, changed), so each is
   re-cloned from the restored primary: 15 on all three, streaming, the data as before the upgrade.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from pgupgrade import facts
from pgupgrade.cluster import Cluster
from pgupgrade.errors import PlanError
from pgupgrade.major.standbys import HOLD_SLOT
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState, state_root

from airflow_helpers import plan_context, run
from conftest import register_connection
from pgharness import APP_DB, installation, served_version, wait_replayed, wait_streaming
from topology import SecondHost

pytestmark = pytest.mark.usefixtures("airflow_home")

MAJOR, ROLLBACK = "pg15_to_pg16_upgrade", "pg_major_upgrade_rollback"


@dataclass
class Ha:
    hosts: list[SecondHost]  # primary's, then one per standby
    primary: Cluster
    standbys: list[Cluster]

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.standbys}


@pytest.fixture(scope="module")
def ha() -> Iterator[Ha]:
    started_at = time.monotonic()
    hosts = [SecondHost(hostname=f"dbhost{n}", address=f"127.0.0.{n}", ssh_conn_id=f"dbhost{n}_ssh") for n in (2, 3, 4)]
    started: list[SecondHost] = []
    env: dict[str, str] = {}
    try:
        for h in hosts:
            started.append(h.start())
            env |= h.connection_env()
        os.environ.update(env)
        for h in hosts[1:]:
            h.trust_ssh_from(hosts[0])
        primary = hosts[0].new_cluster("15.18", "ha_p")
        with connect(primary, APP_DB) as conn, conn.cursor() as cur:  # rows no extension queue tracks
            cur.execute("CREATE TABLE ha_marks (marker text PRIMARY KEY)")
        standbys = [h.standby(primary, f"ha_s{i}") for i, h in enumerate(hosts[1:], 1)]
        wait_streaming(primary, {s.name for s in standbys})
        for s in standbys:
            register_connection(s)
        primary = replace(primary, standbys=tuple(s.name for s in standbys))
        register_connection(primary)
        print(f"primary + 2 standbys on 3 hosts in {time.monotonic() - started_at:.1f}s")
        yield Ha(hosts, primary, standbys)
    finally:
        for h in reversed(started):
            h.stop()
        for k in env:
            os.environ.pop(k, None)


def _conf(ha: Ha, tag: str, **over: Any) -> dict[str, Any]:
    home = os.path.dirname(ha.primary.datadir)
    return {
        "postgres_conn_id": ha.primary.name,
        "transfer_mode": "link",
        "terminate_after_s": 0,
        "new_datadir": f"{home}/data16{tag}",
        "new_bindir": installation("16").bindir,
        "backup_dir": f"{home}/backup{tag}",
        **over,
    }


def _rollback(ha: Ha, run_id: str, **over: Any) -> tuple[Any, dict[str, str]]:
    return run(
        ROLLBACK, {"postgres_conn_id": ha.primary.name, "upgrade_dag_id": MAJOR, "upgrade_run_id": run_id, **over}
    )


def _rows(cluster: Cluster) -> tuple[int, int]:
    with connect(cluster, APP_DB) as conn:
        return int(scalar(conn, "SELECT count(*) FROM orders")), int(scalar(conn, "SELECT count(*) FROM ha_marks"))


def _write_reaches_standbys(ha: Ha, marker: str, timeout: float = 60) -> None:
    with connect(ha.primary, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO ha_marks VALUES (%s)", (marker,))
    for s in ha.standbys:
        wait_replayed(s, "SELECT count(*) FROM ha_marks WHERE marker = %s", (marker,), timeout)


def _same_data(ha: Ha, before: dict[str, Any]) -> None:
    diffs = facts.compare(before, facts.snapshot(ha.primary), same_extension_versions=True)
    assert diffs == [], diffs
    rows = _rows(ha.primary)
    for s in ha.standbys:
        assert _rows(s) == rows, s.name


def _linked_files(host: SecondHost, datadir: str) -> int:
    """Files of datadir with more than one name (hard links)."""
    return len(host.run(["find", datadir, "-type", "f", "-links", "+1"]).splitlines())


def test_plan_refuses_a_standby_host_without_rsync_nothing_stopped(ha: Ha) -> None:
    """The major plan step as the DAG runs it (connections resolved the Airflow way, each host over SSH)."""
    from pgupgrade.airflow.connections import cluster_from_conn_id, host_for
    from pgupgrade.major.fields import FIELDS
    from pgupgrade.major.plan import plan
    from pgupgrade.params import validate

    def resolve(conn_id: str) -> tuple[Cluster, Any]:
        c = cluster_from_conn_id(conn_id)
        return c, host_for(c)

    primary = cluster_from_conn_id(ha.primary.name)
    params = dict(validate(FIELDS, _conf(ha, "x")))
    ctx = plan_context(MAJOR, params, primary, host=host_for(primary), resolve=resolve,
                       spec={"from_major": 15, "to_major": 16})  # fmt: skip
    third = ha.hosts[2]
    third.run(["mount", "--bind", "/dev/null", "/usr/bin/rsync"])  # in that host's mount namespace only
    try:
        with pytest.raises(PlanError) as refused:
            plan(ctx)
    finally:
        third.run(["umount", "/usr/bin/rsync"])
    assert f"standby {ha.standbys[1].name}: rsync is not installed on {third.address}" in str(refused.value)
    assert str(refused.value).endswith("Nothing was stopped.")
    assert [served_version(c) for c in (ha.primary, *ha.standbys)] == [15, 15, 15]
    wait_streaming(ha.primary, ha.names, timeout=5)


def test_failure_right_after_the_rsync_restarts_every_old_node(ha: Ha, monkeypatch: pytest.MonkeyPatch) -> None:
    before = facts.snapshot(ha.primary)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "configure_new")
    dr, states = run(MAJOR, _conf(ha, "a"))
    assert dr.state == "failed", states
    journal = RunState.for_run(MAJOR, dr.run_id, state_root())
    events = journal.events()
    stopped = {e["name"]: e["checkpoint_lsn"] for e in events if e["event"] == "standby_stopped"}
    primary_at = journal.first("old_stopped")["checkpoint_lsn"]
    assert stopped == {s.name: primary_at for s in ha.standbys}, (stopped, primary_at)  # equal checkpoints
    synced = {e["name"]: e for e in events if e["event"] == "standby_synced"}
    assert set(synced) == ha.names, synced
    assert not journal.happened("new_started")
    plan = journal.load("plan")
    routes = {r["name"]: r for r in plan["standby_routes"]}
    for s, h in zip(ha.standbys, ha.hosts[1:], strict=True):
        assert routes[s.name]["how"] == "rsync", routes
        new = routes[s.name]["new_datadir"]
        assert h.run(["cat", f"{new}/PG_VERSION"]).strip() == "16"
        assert h.host.run(["test", "-e", f"{new}/standby.signal"], check=False).exit_code == 0
        # the relation files pg_upgrade linked on the primary arrived as hard links to the standby's own old ones
        assert _linked_files(h, new) == _linked_files(ha.hosts[0], plan["new"]["datadir"]) > 10
    print(
        "rsync to 2 standby hosts: "
        + ", ".join(f"{n} {e['seconds']}s ({e['rsync'].get('Total bytes sent', '?')} sent)" for n, e in synced.items())
    )
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")

    rb, rb_states = _rollback(ha, dr.run_id)
    assert rb.state == "success", rb_states
    back = {e["name"]: e for e in RunState.for_run(ROLLBACK, rb.run_id, state_root()).events()
            if e["event"] == "standby_back"}  # fmt: skip
    assert {n: e["how"] for n, e in back.items()} == {s.name: "restarted" for s in ha.standbys}, back
    for s, h in zip(ha.standbys, ha.hosts[1:], strict=True):
        assert h.host.run(["test", "-e", routes[s.name]["new_datadir"]], check=False).exit_code == 1
    assert [served_version(c) for c in (ha.primary, *ha.standbys)] == [15, 15, 15]
    wait_streaming(ha.primary, ha.names)
    _same_data(ha, before)
    _write_reaches_standbys(ha, "after-rollback-a")
    print("after the rollback: " + ", ".join(f"{n} restarted in {e['seconds']}s" for n, e in back.items()))


def test_upgrade_with_two_standbys_then_a_rollback_reclones_them(ha: Ha) -> None:
    before = facts.snapshot(ha.primary)
    dr, states = run(MAJOR, _conf(ha, "b"))
    assert dr.state == "success", states
    assert states["after.standby"] == states["after.release_standby_wal"] == "success", states
    assert [served_version(c) for c in (ha.primary, *ha.standbys)] == [16, 16, 16]
    wait_streaming(ha.primary, ha.names)
    with connect(ha.primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT slot_name, active FROM pg_replication_slots ORDER BY 1")
        slots = dict(cur.fetchall())
    assert slots == {s.name: True for s in ha.standbys}, slots  # recreated and used; the hold slot dropped
    assert HOLD_SLOT not in slots
    _write_reaches_standbys(ha, "after-open-b")
    journal = RunState.for_run(MAJOR, dr.run_id, state_root())
    synced = [e["seconds"] for e in journal.events() if e["event"] == "standby_synced"]
    streaming = [e["seconds"] for e in journal.events() if e["event"] == "standby_streaming"]
    print(f"upgrade with 2 standbys: rsync {synced}s, standbys streaming after {streaming}s")

    rb, rb_states = _rollback(ha, dr.run_id, accept_data_loss=True)
    assert rb.state == "success", rb_states
    back = {e["name"]: e for e in RunState.for_run(ROLLBACK, rb.run_id, state_root()).events()
            if e["event"] == "standby_back"}  # fmt: skip
    assert {n: e["how"] for n, e in back.items()} == {s.name: "recloned" for s in ha.standbys}, back
    assert [served_version(c) for c in (ha.primary, *ha.standbys)] == [15, 15, 15]
    wait_streaming(ha.primary, ha.names)
    _same_data(ha, before)  # the row written after opening is gone with the new cluster, on every node
    _write_reaches_standbys(ha, "after-rollback-b")
    print("after the rollback: " + ", ".join(f"{n} re-cloned in {e['seconds']}s" for n, e in back.items()))
