"""The distributed topology itself: the second database host is a host of its own (its /tmp, its sshd, its
PostgreSQL on 127.0.0.2), and a DAG run under the CeleryExecutor is spread over both workers, each in its own
namespace as the non-root ``airflow`` user."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from pgupgrade.sql import connect, scalar

from pgharness import connection_env
from topology import WORKER_USER, DistributedAirflow, SecondHost

pytestmark = pytest.mark.distributed
PREFLIGHT = "pg_preflight_checks"


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
