"""The distributed topology, one shared stack for every case (one file: pytest-xdist's loadfile keeps them on one
worker process, so the stack starts once). First the topology itself: the second database host is a host of its
own (its /tmp, its sshd, its PostgreSQL on 127.0.0.2) and a DAG run under the CeleryExecutor is spread over both
workers, each in its own namespace as the non-root ``airflow`` user. Then upgrades where they run in production:
the cluster on another host (reached by SSH as postgres and by TCP), two workers that share nothing but the
control database. Every upgrade case asserts from the task instances' hostnames which workers took part, and
reads the run's journal from the control database (no worker's disk holds it)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pgupgrade.cluster import Cluster, service_for
from pgupgrade.sql import connect, scalar

from pgharness import (
    APP_DB,
    Pool,
    WriteProbe,
    connection_env,
    control_store,
    data_checks_out,
    installation,
    served_version,
)
from topology import WORKER_USER, DistributedAirflow, SecondHost, control_database

pytestmark = pytest.mark.distributed
UPGRADE, ROLLBACK, MINOR, MINOR_ROLLBACK = (
    "pg15_to_pg16_upgrade",
    "pg_major_upgrade_rollback",
    "pg_minor_upgrade",
    "pg_minor_upgrade_rollback",
)
PREFLIGHT = "pg_preflight_checks"
DRILLS: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def second_host() -> Iterator[SecondHost]:
    """Host ``dbhost2`` (127.0.0.2): ``new_cluster(version)`` makes a started cluster there; its SSH connection
    (``second_host.ssh_conn_id``) is in the environment of every process of ``distributed_airflow``."""
    started = time.monotonic()
    host = SecondHost().start()
    print(f"second host {host.hostname} up in {time.monotonic() - started:.1f}s")
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def control_cluster(pool: Pool) -> Cluster:
    """The control database's own cluster (on 127.0.0.1, TCP): a test may stop it without stopping Airflow."""
    cluster = pool.new("17", "distributed_control", seed=False, settings={"listen_addresses": "'127.0.0.1'"})
    return replace(cluster, host="127.0.0.1")


@pytest.fixture(scope="module")
def distributed_airflow(pool: Pool, second_host: SecondHost, control_cluster: Cluster) -> Iterator[DistributedAirflow]:
    """api-server, scheduler, dag-processor, triggerer as root here; celery workers ``worker-a`` and
    ``worker-b`` as the ``airflow`` user in their own namespaces; broker redis; metadata on 127.0.0.1 (TCP); the
    control database (database pgupgrade_control of ``control_cluster``) and fault drills (Variable
    pgupgrade_inject_failure) in every process's environment. Connections a test needs go through
    ``distributed_airflow.add_connection`` (REST)."""
    started = time.monotonic()
    meta = pool.new("17", "distributed_meta", seed=False, settings={"listen_addresses": "'127.0.0.1'"})
    env = {**second_host.connection_env(), **control_database(control_cluster), "PGUPGRADE_FAULT_DRILLS": "1"}
    assert second_host.keydir is not None
    stack = DistributedAirflow(replace(meta, host="127.0.0.1"), env, shared=[second_host.keydir]).start()
    print(f"distributed airflow up in {time.monotonic() - started:.1f}s (logs in {stack.home})")
    try:
        yield stack
    finally:
        stack.stop()  # its home (logs of every component and task) stays, as the other e2e stacks' homes do


def test_second_host_is_a_host_of_its_own(second_host: SecondHost) -> None:
    name = f"only-on-dbhost2-{uuid.uuid4().hex[:8]}"
    second_host.run(["sh", "-c", f"echo there > /tmp/{name}"])
    assert second_host.run(["cat", f"/tmp/{name}"]) == "there\n"
    assert not Path("/tmp", name).exists()  # its /tmp is not this machine's

    res = subprocess.run(second_host.ssh_argv("hostname; id -un; cat", f"/tmp/{name}"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["dbhost2", "postgres", "there"]
    root = subprocess.run(
        [*second_host.ssh_argv("true")[:-2], f"root@{second_host.address}", "true"], capture_output=True, text=True
    )
    assert root.returncode != 0  # no root login

    cluster = second_host.new_cluster("15.18", seed=False)
    assert cluster.host == "127.0.0.2" and cluster.ssh_conn_id == second_host.ssh_conn_id
    with connect(cluster) as conn:  # over TCP
        assert scalar(conn, "SELECT inet_server_addr()::text") == "127.0.0.2/32"
        assert scalar(conn, "SHOW server_version") == "15.18 (Debian 15.18-0+deb12u1)"
        assert scalar(conn, "SHOW data_directory") == cluster.datadir
    assert not Path(cluster.datadir).exists()  # its data lives on that host only
    refused = subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", str(cluster.port)], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0  # listens on 127.0.0.2 only
    assert json.loads(second_host.connection_env()[f"AIRFLOW_CONN_{second_host.ssh_conn_id.upper()}"])["login"] == (
        "postgres"
    )


def test_workers_are_hosts_of_their_own(distributed_airflow: DistributedAirflow) -> None:
    stack = distributed_airflow
    for name in ("worker-a", "worker-b"):
        res = stack.worker_run(
            name,
            [
                "python",
                "-c",
                "import os, socket, pgupgrade, airflow; "
                "print(socket.gethostname(), os.getuid() != 0, os.environ['PGUPGRADE_STATE_DIR'], "
                "sorted(os.listdir(os.environ['PGUPGRADE_STATE_DIR'])))",
            ],
        )
        assert res.stdout.split(maxsplit=3)[:3] == [name, "True", f"/home/{WORKER_USER}/pgupgrade-state"], res.stdout
        assert stack.worker_run(name, ["id", "-un"]).stdout.strip() == WORKER_USER
        assert not Path(f"/home/{WORKER_USER}").exists()  # its home exists in its namespace only


def test_preflight_spread_over_two_workers(distributed_airflow: DistributedAirflow, second_host: SecondHost) -> None:
    """The preflight DAG (validate_params → check_cluster per cluster → summary) against two clusters on the
    second host: every task runs on a celery worker, the two mapped checks side by side on the two workers,
    each reaching the cluster over TCP and SSH only."""
    stack = distributed_airflow
    clusters = [second_host.new_cluster("15.18", seed=False) for _ in range(2)]
    for c in clusters:
        _, value = connection_env(c)
        stack.add_connection(c.name, json.loads(value))
    stack.wait_for_dags([PREFLIGHT])
    stack.unpause(PREFLIGHT)
    conf = {
        "clusters": [c.name for c in clusters],
        "target_major": 16,
        "check_minor": False,
        "fail_if_not_ready": False,
    }
    run_id = stack.trigger(PREFLIGHT, conf, f"distributed-preflight-{uuid.uuid4().hex[:6]}")
    state = stack.wait_run(PREFLIGHT, run_id, timeout=300)
    tis = stack.task_instances(PREFLIGHT, run_id)
    hosts = stack.task_hostnames(PREFLIGHT, run_id)
    print(json.dumps({"state": state, "hosts": hosts}, indent=1))
    assert state == "success", [(t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tis]
    assert all(t["state"] == "success" for t in tis), tis
    assert set(hosts.values()) == {"worker-a", "worker-b"}, hosts
    assert {hosts["check_cluster[0]"], hosts["check_cluster[1]"]} == {"worker-a", "worker-b"}, hosts
    summary = stack.api(
        "GET",
        f"/dags/{PREFLIGHT}/dagRuns/{run_id}/taskInstances/summary/xcomEntries/return_value",
        params={"deserialize": "true", "stringify": "false"},
    )["value"]
    print(summary)
    # every check reached its cluster (SSH as postgres, PostgreSQL over TCP) and pg_upgrade --check 15.18 → 16
    # passed on dbhost2: ready
    assert sorted(summary["ready"]) == sorted(c.name for c in clusters), (summary, second_host.sshd_log[-3000:])


def register(stack: DistributedAirflow, cluster: Cluster, conn_id: str | None = None) -> str:
    _, value = connection_env(cluster, conn_id)
    conn_id = conn_id or cluster.name
    stack.add_connection(conn_id, json.loads(value))
    return conn_id


def drill(stack: DistributedAirflow, run_id: str, steps: list[str]) -> None:
    """Fails these steps in that run (Variable pgupgrade_inject_failure; the stack enables fault drills)."""
    DRILLS[run_id] = steps
    body = {"key": "pgupgrade_inject_failure", "value": json.dumps(DRILLS)}
    try:
        stack.api("PATCH", "/variables/pgupgrade_inject_failure", json=body)
    except Exception:
        stack.api("POST", "/variables", json=body)


def under_writes(
    stack: DistributedAirflow, second_host: SecondHost, kind: str, fail: list[str] | None = None
) -> tuple[Cluster, str, WriteProbe]:
    """A seeded 15.18 cluster on the second host, registered, with an application writing to it over TCP; a run
    id for its upgrade (whose steps ``fail`` fail by fault drill)."""
    old = second_host.new_cluster("15.18")
    register(stack, old)
    run_id = f"dist-{kind}-{uuid.uuid4().hex[:6]}"
    if fail:
        drill(stack, run_id, fail)
    WriteProbe.create_table(old)
    return old, run_id, WriteProbe(old).start()


def journal(control: Cluster, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return control_store(control, "pgupgrade_control").run(dag_id, run_id).events()


def major_conf(cluster: Cluster, **over: Any) -> dict[str, Any]:
    home = os.path.dirname(cluster.datadir)
    return {
        "postgres_conn_id": cluster.name,
        "transfer_mode": "link",
        "terminate_after_s": 0,
        "new_datadir": f"{home}/data16-{uuid.uuid4().hex[:6]}",
        "new_bindir": installation("16").bindir,
        "backup_dir": f"{home}/backup-{uuid.uuid4().hex[:6]}",
        **over,
    }


def workers_of(stack: DistributedAirflow, *runs: tuple[str, str]) -> set[str]:
    return {h for dag_id, run_id in runs for h in stack.task_hostnames(dag_id, run_id).values() if h}


def ready(stack: DistributedAirflow, *dag_ids: str) -> None:
    stack.wait_for_dags(list(dag_ids))
    for d in dag_ids:
        stack.unpause(d)


def test_link_upgrade_of_a_cluster_on_another_host(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    stack = distributed_airflow
    ready(stack, UPGRADE, ROLLBACK)
    old, run_id, probe = under_writes(stack, second_host, "link")  # an application writes over TCP all along
    try:
        stack.trigger(UPGRADE, major_conf(old), run_id)
        state = stack.wait_run(UPGRADE, run_id, timeout=900)
    finally:
        probe.stop()
    states = stack.task_states(UPGRADE, run_id)
    assert state == "success", states
    assert workers_of(stack, (UPGRADE, run_id)) == {"worker-a", "worker-b"}
    assert served_version(old) == 16  # on the old port, on that host
    data_checks_out(old)
    assert probe.lost(old) == [], "acknowledged writes lost"
    events = [e["event"] for e in journal(control_cluster, UPGRADE, run_id)]
    assert events.index("old_stopped") < events.index("transfer_started") < events.index("opened")
    print(f"link upgrade on the second host: client-observed write gap {probe.longest_gap():.2f}s")


def test_failure_after_the_new_cluster_started_rolls_back_with_every_write(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    stack = distributed_airflow
    ready(stack, UPGRADE, ROLLBACK)
    old, run_id, probe = under_writes(stack, second_host, "fail", fail=["health_check"])
    try:
        stack.trigger(UPGRADE, major_conf(old), run_id)
        assert stack.wait_run(UPGRADE, run_id, timeout=900) == "failed"
        rb = f"rollback__{run_id}"
        assert stack.wait_run(ROLLBACK, rb, timeout=900) == "success", stack.task_states(ROLLBACK, rb)
    finally:
        probe.stop()
    events = [e["event"] for e in journal(control_cluster, UPGRADE, run_id)]
    assert "new_started" in events and "opened" not in events
    assert workers_of(stack, (UPGRADE, run_id), (ROLLBACK, rb)) == {"worker-a", "worker-b"}
    assert served_version(old) == 15
    data_checks_out(old)
    assert probe.acked and probe.lost(old) == [], "acknowledged writes lost"


def test_two_runs_on_one_cluster_exactly_one_proceeds(
    distributed_airflow: DistributedAirflow, second_host: SecondHost
) -> None:
    """Two DAGs at once on one cluster, through two connection ids that name it differently: one lock."""
    stack = distributed_airflow
    ready(stack, UPGRADE, MINOR, ROLLBACK, MINOR_ROLLBACK)
    c = second_host.new_cluster("15.18", seed=False)
    a, b = register(stack, c), register(stack, c, f"{c.name}_alias")
    runs = [
        (UPGRADE, f"dist-lock-a-{uuid.uuid4().hex[:6]}", major_conf(c, postgres_conn_id=a, dry_run=True)),
        (
            MINOR,
            f"dist-lock-b-{uuid.uuid4().hex[:6]}",
            {
                "postgres_conn_id": b,
                "installer": "bindir",
                "target_version": "15.20",
                "new_bindir": installation("15.20").bindir,
                "dry_run": True,
                "min_free_gb": 1,
            },
        ),
    ]
    for dag_id, run_id, conf in runs:  # back to back: the scheduler starts both in its next loop
        stack.trigger(dag_id, conf, run_id)
    lock_states = []
    for dag_id, run_id, _ in runs:
        stack.wait_run(dag_id, run_id, timeout=600)
        lock_states.append(stack.task_states(dag_id, run_id).get("plan.acquire_lock"))
    assert sorted(s or "" for s in lock_states) == ["failed", "success"], lock_states


def test_connection_to_another_clusters_datadir_is_refused_before_any_action(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    stack = distributed_airflow
    ready(stack, UPGRADE, ROLLBACK)
    target, other = second_host.new_cluster("15.18", seed=False), second_host.new_cluster("15.18", seed=False)

    wrong = register(stack, replace(target, datadir=other.datadir), f"{target.name}_wrong_datadir")
    run_id = f"dist-wrong-{uuid.uuid4().hex[:6]}"
    stack.trigger(UPGRADE, major_conf(target, postgres_conn_id=wrong), run_id)
    assert stack.wait_run(UPGRADE, run_id, timeout=600) == "failed"
    states = stack.task_states(UPGRADE, run_id)
    assert states["plan.acquire_lock"] == "failed" and states.get("trigger_rollback") != "success", states
    side_effects = [e for e in journal(control_cluster, UPGRADE, run_id) if e["event"] != "step"]
    assert side_effects == [], side_effects
    time.sleep(15)  # the DAG's failure callback (dag-processor) would have triggered a rollback by now
    assert stack.run_state(ROLLBACK, f"rollback__{run_id}") is None  # nothing changed: no way back to run
    for c in (target, other):
        assert served_version(c) == 15
        assert service_for(c, second_host.host).is_running()


def test_control_database_away_during_pg_upgrade(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    """The control database stops while pg_upgrade runs and a later step fails: the journal goes to the
    database host's spool, the run fails without losing its record; once the control database is back the
    rollback (triggered by hand, as the alert says) reads the spooled events and brings 15 back with every
    acknowledged write."""
    stack = distributed_airflow
    ready(stack, UPGRADE, ROLLBACK)
    old, run_id, probe = under_writes(stack, second_host, "ctl", fail=["validate_facts"])
    control = service_for(control_cluster)
    try:
        stack.trigger(UPGRADE, major_conf(old), run_id)
        deadline = time.monotonic() + 600
        while "old_stop_requested" not in [e["event"] for e in journal(control_cluster, UPGRADE, run_id)]:
            assert time.monotonic() < deadline and stack.run_state(UPGRADE, run_id) not in ("failed", "success")
            time.sleep(0.2)
        control.stop("immediate")
        try:
            assert stack.wait_run(UPGRADE, run_id, timeout=900) == "failed"
        finally:
            control.start()
        rb = f"rollback__{run_id}"
        if stack.run_state(ROLLBACK, rb) is None:
            stack.trigger(
                ROLLBACK, {"upgrade_dag_id": UPGRADE, "upgrade_run_id": run_id, "postgres_conn_id": old.name}, rb
            )
        assert stack.wait_run(ROLLBACK, rb, timeout=900) == "success", stack.task_states(ROLLBACK, rb)
    finally:
        probe.stop()
    events = journal(control_cluster, UPGRADE, run_id)
    spooled = [e["event"] for e in events if e.get("spooled")]
    assert "transfer_started" in [e["event"] for e in events], events
    assert spooled and "old_stop_requested" not in spooled, spooled  # written while the control database was away
    assert served_version(old) == 15
    data_checks_out(old)
    assert probe.lost(old) == [], "acknowledged writes lost"
    with connect(old, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") >= 1000
    print(f"spooled on the database host and reconciled: {spooled}")


def test_one_outage_slot_the_second_run_waits_with_its_clients_served(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    """Variable pgupgrade_max_concurrent_outages = 1 and two upgrades of two clusters triggered together: the
    second gates its clients only after the first opened (its clients write all along until then)."""
    stack = distributed_airflow
    ready(stack, UPGRADE, ROLLBACK)
    first, second = second_host.new_cluster("15.18"), second_host.new_cluster("15.18")
    for c in (first, second):
        register(stack, c)
    WriteProbe.create_table(second)
    probe = WriteProbe(second).start()
    stack.api("POST", "/variables", json={"key": "pgupgrade_max_concurrent_outages", "value": "1"})
    runs = [(first, f"dist-slot-1-{uuid.uuid4().hex[:6]}"), (second, f"dist-slot-2-{uuid.uuid4().hex[:6]}")]
    try:
        for c, run_id in runs:
            stack.trigger(UPGRADE, major_conf(c), run_id)
        for _, run_id in runs:
            assert stack.wait_run(UPGRADE, run_id, timeout=900) == "success", stack.task_states(UPGRADE, run_id)
    finally:
        probe.stop()
        stack.api("DELETE", "/variables/pgupgrade_max_concurrent_outages")
    j1, j2 = ({e["event"]: e["at"] for e in reversed(journal(control_cluster, UPGRADE, run_id))} for _, run_id in runs)
    early_j, late_j = sorted((j1, j2), key=lambda j: j["outage_slot_taken"])
    assert late_j["outage_slot_taken"] >= early_j["opened"], (early_j, late_j)
    assert late_j["logins_blocked"] > early_j["opened"]  # its clients were served while it waited
    assert probe.lost(second) == []


def test_worker_killed_inside_the_cutover_rollback_from_the_control_database(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    """SIGKILL to the whole worker (its namespace: celery, the task process, its SSH link) once pg_upgrade has
    started: the scheduler fails the task after the heartbeat timeout, the run's failure tail hands the lock to
    the rollback, which decides from the journal in the control database (the dead worker's disk is gone) and
    brings 15 back with every acknowledged write."""
    stack = distributed_airflow
    ready(stack, UPGRADE, ROLLBACK)
    old, run_id, probe = under_writes(stack, second_host, "kill")
    killed = None
    try:
        stack.trigger(UPGRADE, major_conf(old), run_id)
        deadline = time.monotonic() + 600
        while "transfer_started" not in [e["event"] for e in journal(control_cluster, UPGRADE, run_id)]:
            assert time.monotonic() < deadline and stack.run_state(UPGRADE, run_id) not in ("failed", "success")
            time.sleep(0.1)
        killed = stack.task_hostnames(UPGRADE, run_id)["upgrade.pg_upgrade"]
        stack.kill_worker(killed)
        started = time.monotonic()
        assert stack.wait_run(UPGRADE, run_id, timeout=600) == "failed"
        detected_s = time.monotonic() - started
        stack.start_worker(killed)  # the stack keeps two workers for the tests after this one
        stack.wait_workers_ready()
        rb = f"rollback__{run_id}"
        assert stack.wait_run(ROLLBACK, rb, timeout=900) == "success", stack.task_states(ROLLBACK, rb)
    finally:
        probe.stop()
        if killed and killed not in stack.workers:
            stack.start_worker(killed)
            stack.wait_workers_ready()
    states = stack.task_states(UPGRADE, run_id)
    assert states["upgrade.pg_upgrade"] == "failed" and states["trigger_rollback"] == "success", states
    assert workers_of(stack, (ROLLBACK, rb)) <= {"worker-a", "worker-b"} and workers_of(stack, (ROLLBACK, rb))
    assert served_version(old) == 15
    data_checks_out(old)
    assert probe.lost(old) == [], "acknowledged writes lost"
    print(f"killed {killed}: the run failed {detected_s:.0f}s later (task heartbeat timeout), rolled back")


def test_minor_upgrade_and_extension_migration_on_another_host(
    distributed_airflow: DistributedAirflow, second_host: SecondHost, control_cluster: Cluster
) -> None:
    """The other runbooks on the second host: 15.18 → 15.20 (bindir switch) under writes, then pg_tviews
    0.1 → 0.2 on the same cluster; each run's journal in the control database."""
    stack = distributed_airflow
    migration = "pg_tviews_0_1_to_0_2_migration"
    ready(stack, MINOR, MINOR_ROLLBACK, migration, "pg_tviews_extension_rollback")
    c = second_host.new_cluster("15.18")
    register(stack, c)
    home = os.path.dirname(c.datadir)
    WriteProbe.create_table(c)
    probe = WriteProbe(c).start()
    minor_run = f"dist-minor-{uuid.uuid4().hex[:6]}"
    try:
        stack.trigger(
            MINOR,
            {
                "postgres_conn_id": c.name,
                "installer": "bindir",
                "target_version": "15.20",
                "new_bindir": installation("15.20").bindir,
                "backup_dir": f"{home}/minor-backup",
                "terminate_after_s": 0,
                "min_free_gb": 1,
            },
            minor_run,
        )
        assert stack.wait_run(MINOR, minor_run, timeout=900) == "success", stack.task_states(MINOR, minor_run)
    finally:
        probe.stop()
    with connect(c) as conn:
        assert str(scalar(conn, "SHOW server_version")).startswith("15.20")
    assert probe.lost(c) == [], "acknowledged writes lost"
    assert "opened" in [e["event"] for e in journal(control_cluster, MINOR, minor_run)]

    ext_run = f"dist-ext-{uuid.uuid4().hex[:6]}"
    stack.trigger(migration, {"postgres_conn_id": c.name, "backup_dir": f"{home}/ext-backup"}, ext_run)
    assert stack.wait_run(migration, ext_run, timeout=900) == "success", stack.task_states(migration, ext_run)
    with connect(c, APP_DB) as conn:
        assert scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews'") == "0.2.0"
    assert workers_of(stack, (MINOR, minor_run), (migration, ext_run)) == {"worker-a", "worker-b"}
    with connect(c, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") >= 1000
