"""Which cluster a run acts on, proven before every destructive step.

The cluster answering on the connection must be the one in ``pg_datadir`` on the host the runner reaches:
``pg_control_system().system_identifier`` equals ``pg_controldata`` of the data directory there; and since a
standby shares its primary's identifier, the server is not in recovery, its ``data_directory`` is
``pg_datadir``, and the host's ``postmaster.pid`` (port, start time) is the server's. Without ``ssh_conn_id``
the worker must be the database host: a data directory missing here is refused the same way.

The per-cluster lock key is the database host's node name and the data directory's real path: two connection
ids naming one cluster share it, and it stays the same across the cluster's own upgrade (pg_upgrade gives the new
cluster a new system identifier, which is recorded, not keyed on).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.errors import ConfigError, UnsafeState
from pgupgrade.sql import connect, fetch_named


@dataclass(frozen=True)
class HostView:
    """What the database host says of the data directory."""

    node: str
    datadir: str  # real path
    system_identifier: str | None
    pid_port: int | None
    pid_started_epoch: int | None

    @property
    def key(self) -> str:
        return f"{self.node}:{self.datadir}"


def lock_key(cluster: Cluster, host: Host) -> str:
    node = host.run(["uname", "-n"]).stdout.strip()
    real = host.run(["readlink", "-m", "--", cluster.datadir]).stdout.strip() or cluster.datadir
    return f"{node}:{real}"


def controldata_identifier(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("Database system identifier:"):
            return line.split(":", 1)[1].strip()
    return None


def on_host(cluster: Cluster, host: Host) -> HostView:
    where = f"on {host.name}" + ("" if cluster.ssh_conn_id else " (no ssh_conn_id: this worker)")
    if host.run(["test", "-d", cluster.datadir], user=cluster.os_user, check=False).exit_code != 0:
        hint = (
            " — without ssh_conn_id the Airflow worker must be the database host; set ssh_conn_id in the "
            "connection's extra to reach it"
            if not cluster.ssh_conn_id
            else ""
        )
        raise ConfigError(f"{cluster.name}.extra.pg_datadir", f"{cluster.datadir} does not exist {where}{hint}")
    key = lock_key(cluster, host)
    node, real = key.split(":", 1)
    control = host.run([cluster.bin("pg_controldata"), "-D", cluster.datadir], user=cluster.os_user, check=False)
    pid = host.run(["cat", f"{cluster.datadir}/postmaster.pid"], user=cluster.os_user, check=False)
    lines = pid.stdout.splitlines() if pid.exit_code == 0 else []
    return HostView(
        node=node,
        datadir=real,
        system_identifier=controldata_identifier(control.stdout) if control.exit_code == 0 else None,
        pid_started_epoch=int(lines[2]) if len(lines) > 3 and lines[2].strip().isdigit() else None,
        pid_port=int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None,
    )


def served(cluster: Cluster) -> dict[str, Any]:
    with connect(cluster) as conn:
        return fetch_named(conn, "server-identity")[0]


def verify(
    cluster: Cluster, host: Host, *, expect_identifier: str | None = None, standby: bool = False
) -> dict[str, Any]:
    """Refuses (UnsafeState, both values named) unless the server on the connection is the primary (``standby``:
    a standby) whose data directory is ``pg_datadir`` on ``host``. Returns the proven identity (for the journal)."""
    view = on_host(cluster, host)
    srv = served(cluster)
    where = f"{host.name}:{cluster.datadir}"
    problems = []
    if view.system_identifier != srv["system_identifier"]:
        problems.append(
            f"system identifier: the connection's server has {srv['system_identifier']}, pg_controldata of {where} "
            f"says {view.system_identifier}"
        )
    if srv["in_recovery"] and not standby:
        problems.append("the connection's server is in recovery (a standby shares its primary's identifier)")
    if standby and not srv["in_recovery"]:
        problems.append("the connection's server is not in recovery: not a standby")
    if os.path.normpath(srv["data_directory"]) not in (os.path.normpath(cluster.datadir), view.datadir):
        problems.append(f"data_directory: the server says {srv['data_directory']}, pg_datadir is {cluster.datadir}")
    if view.pid_port is not None and view.pid_port != srv["port"]:
        problems.append(f"port: postmaster.pid in {where} says {view.pid_port}, the server says {srv['port']}")
    if view.pid_started_epoch is not None and abs(view.pid_started_epoch - srv["started_epoch"]) > 1:
        problems.append(
            f"start time: postmaster.pid in {where} says {view.pid_started_epoch}, "
            f"the server says {srv['started_epoch']}"
        )
    if view.pid_port is None:
        problems.append(f"no running postmaster in {where} (postmaster.pid absent)")
    if expect_identifier and srv["system_identifier"] != expect_identifier:
        problems.append(f"system identifier {srv['system_identifier']} is not the recorded {expect_identifier}")
    if problems:
        raise UnsafeState(
            f"connection {cluster.name!r} does not reach the cluster in {where}: " + "; ".join(problems) + ". Refusing."
        )
    return {
        "system_identifier": srv["system_identifier"],
        "node": view.node,
        "datadir": view.datadir,
        "port": srv["port"],
    }
