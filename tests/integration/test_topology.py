"""A primary and its streaming standbys in the plan (pgupgrade.topology), on real servers: a 15.18 primary with two
standbys made by ``pg_basebackup -R`` (each its own port, socket and cluster_name), listed in the primary's
connection extra ``standbys``.

- Through Airflow (the connections resolved by the tasks): the minor and the major DAGs' dry runs record the
  topology in the plan — both standbys proven (in recovery, the primary's system identifier, streaming under their
  names, replay lag) — and the minor plan warns that the standbys keep the old release.
- Bad input, refused by the plan with nothing stopped: a standby whose replay lags beyond max_standby_lag_mb, a
  "standby" that is another primary, one that does not answer; a standby left out of the list shows as unlisted.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from pgupgrade import plans, topology
from pgupgrade.cluster import Cluster, Service
from pgupgrade.errors import PlanError
from pgupgrade.minor import plan as minor_plan
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import STATE, UPGRADE, minor_conf, minor_plan_context, run, upgrade_conf
from conftest import register_connection
from pgharness import HOST, Pool, served, server_port, wait_streaming

pytestmark = pytest.mark.usefixtures("airflow_home")


@pytest.fixture(scope="module")
def replicated(pool: Pool) -> tuple[Cluster, Cluster, Cluster]:
    primary = pool.new("15.18", f"topo_p{os.getpid()}")
    s1, s2 = pool.standby(primary, f"{primary.name}_s1"), pool.standby(primary, f"{primary.name}_s2")
    wait_streaming(primary, {s1.name, s2.name})
    for s in (s1, s2):
        register_connection(s)
    return replace(primary, standbys=(s1.name, s2.name)), s1, s2


def _ctx(primary: Cluster, by_id: dict[str, Cluster], **over: Any) -> Any:
    return minor_plan_context(primary, lambda conn_id: (by_id[conn_id], HOST), **over)


def _all_running(*clusters: Cluster) -> None:
    assert all(Service(c, HOST).is_running() for c in clusters)


@pytest.mark.full  # CI: the topology is proven and used through the DAGs by test_rolling_minor and test_ha_major
def test_dry_runs_record_the_proven_topology(pool, replicated):
    primary, s1, s2 = replicated
    dr, states = run(UPGRADE, minor_conf(primary, dry_run=True))
    assert dr.state == "success", states
    plan = RunState.for_run(UPGRADE, dr.run_id, STATE).load("plan")
    topo = plan["topology"]
    assert topo["primary"] == primary.name and topo["version"] == "15.18" and topo["unlisted"] == []
    got = {s["name"]: s for s in topo["standbys"]}
    assert set(got) == {s1.name, s2.name}
    for s in (s1, s2):
        row = got[s.name]
        assert (row["streams_as"], row["receiver"], row["version"], row["problems"]) == (
            s.name,
            "streaming",
            "15.18",
            [],
        )
        assert row["datadir"] == s.datadir and 0 <= row["replay_lag_bytes"] < 64 * topology.MB
    # installer bindir: the standbys are upgraded first (tests/integration/test_rolling_minor.py), nothing to warn
    assert not [w for w in plan["warnings"] if "standby" in w], plan["warnings"]
    # the major plan proves them the same way and takes them along: link mode on the same host, a local rsync
    conf = upgrade_conf(pool, primary, "17", target_major=17, dry_run=True, transfer_mode="link")
    dr, states = run("pg_major_upgrade", conf)
    assert dr.state == "success", states
    major = RunState.for_run("pg_major_upgrade", dr.run_id, STATE).load("plan")
    assert {s["name"] for s in major["topology"]["standbys"]} == {s1.name, s2.name}
    routes = {r["name"]: (r["how"], r["ssh"], r["new_datadir"]) for r in major["standby_routes"]}
    assert routes == {s.name: ("rsync", None, f"{os.path.dirname(s.datadir)}/data17") for s in (s1, s2)}, routes
    _all_running(primary, s1, s2)


def test_unlisted_standby_is_reported(replicated):
    primary, s1, s2 = replicated
    p = plans.to_json(minor_plan.plan(_ctx(replace(primary, standbys=(s1.name,)), {s1.name: s1})))
    assert [s["name"] for s in p["topology"]["standbys"]] == [s1.name]
    assert [u["application_name"] for u in p["topology"]["unlisted"]] == [s2.name]
    # an installer that acts on the primary's host only leaves the standbys on the old release: the plan says so
    argv = ["/usr/local/sbin/pg-switch", "{major}", "{version}"]
    ctx = _ctx(primary, {s1.name: s1, s2.name: s2}, installer="command", new_bindir="", ack_other_clusters=True)
    p = plans.to_json(minor_plan.plan(ctx, install_command=argv))
    assert any("2 standby(s) keep running 15.18" in w for w in p["warnings"]), p["warnings"]


def test_standby_lagging_beyond_the_limit_is_refused(replicated):
    primary, s1, s2 = replicated
    with connect(s2) as conn:
        scalar(conn, "SELECT pg_wal_replay_pause()")
    try:
        with connect(primary) as conn, conn.cursor() as cur:  # ~4 MB of WAL the paused standby does not replay
            cur.execute("CREATE TABLE IF NOT EXISTS lag_filler AS SELECT g, repeat('x', 1000) AS pad FROM "
                        "generate_series(1, 1) g")  # fmt: skip
            cur.execute("INSERT INTO lag_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g")
        with pytest.raises(PlanError) as err:
            minor_plan.plan(_ctx(primary, {s1.name: s1, s2.name: s2}, max_standby_lag_mb=1))
        message = str(err.value)
        assert f"standby {s2.name}: its replay is" in message and "max_standby_lag_mb=1" in message, message
        assert s1.name not in message and "Nothing was stopped" in message
    finally:
        with connect(s2) as conn:
            scalar(conn, "SELECT pg_wal_replay_resume()")
    _all_running(primary, s1, s2)


def test_another_primary_or_a_silent_standby_is_refused(pool, replicated):
    primary, s1, _ = replicated
    stranger = pool.new("15.18", seed=False)
    gone = replace(s1, name=f"{s1.name}_gone", port=server_port())  # nothing listens there
    listed = replace(primary, standbys=(stranger.name, gone.name))
    with pytest.raises(PlanError) as err:
        minor_plan.plan(_ctx(listed, {stranger.name: stranger, gone.name: gone}))
    message = str(err.value)
    assert f"standby {stranger.name}: " in message and "not in recovery: not a standby" in message, message
    assert "system identifier" in message and f"standby {gone.name}: does not answer" in message, message
    _all_running(primary, s1, stranger)


def test_copy_upgrade_reclones_the_standbys_after_opening_and_the_rollback_restarts_them(pool, replicated):
    """Copy mode: the standbys cannot be rsynced (the new files are not hard links of the old ones), so each stops
    with its primary and is re-cloned by pg_basebackup from the new primary after opening (its primary_conninfo,
    read with postgres -C), its configuration carried; the rollback restarts them from their untouched old
    directories."""
    primary, s1, s2 = replicated
    conf = upgrade_conf(pool, primary, "16", transfer_mode="copy", terminate_after_s=0)
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "success", states
    journal = RunState.for_run("pg15_to_pg16_upgrade", dr.run_id, STATE)
    routes = {r["name"]: r for r in journal.load("plan")["standby_routes"]}
    assert {n: r["how"] for n, r in routes.items()} == {s1.name: "reclone", s2.name: "reclone"}, routes
    assert "copy mode" in routes[s1.name]["why"]
    recloned = [e["name"] for e in journal.events() if e["event"] == "standby_reclone"]
    assert sorted(recloned) == sorted([s1.name, s2.name])
    assert [served(c)[0] // 10000 for c in (primary, s1, s2)] == [16, 16, 16]
    # streaming under their own names: each one's cluster_name was carried into its re-cloned directory
    wait_streaming(primary, {s1.name, s2.name})
    rb, rb_states = run(
        "pg_major_upgrade_rollback",
        {"postgres_conn_id": primary.name, "upgrade_dag_id": "pg15_to_pg16_upgrade", "upgrade_run_id": dr.run_id,
         "accept_data_loss": True},
    )  # fmt: skip
    assert rb.state == "success", rb_states
    back = [e for e in RunState.for_run("pg_major_upgrade_rollback", rb.run_id, STATE).events()
            if e["event"] == "standby_back"]  # fmt: skip
    assert sorted((e["name"], e["how"]) for e in back) == [(s1.name, "restarted"), (s2.name, "restarted")], back
    assert [served(c)[0] // 10000 for c in (primary, s1, s2)] == [15, 15, 15]
    wait_streaming(primary, {s1.name, s2.name})
    for s in (s1, s2):
        assert HOST.run(["test", "-e", routes[s.name]["new_datadir"]], check=False).exit_code == 1
