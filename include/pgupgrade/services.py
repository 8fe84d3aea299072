"""Stopping and starting clusters for the runbooks: the old cluster's journaled stop, servers started where only
this run reaches them (private sockets), what pg_control says, starting a cluster that died under a run."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

from pgupgrade import guard
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, UnsafeState

log = logging.getLogger(__name__)


def private_cluster(cluster: Cluster, datadir: str, bindir: str, socket_dir: str) -> Cluster:
    """The same cluster reachable only through a private socket directory (listen_addresses='')."""
    return replace(cluster, bindir=bindir, datadir=datadir, host=socket_dir, confdir=None)


def socket_path(key: str) -> str:
    """A short private socket directory for key: Unix socket paths are limited to 107 bytes."""
    return f"/tmp/pgupgrade-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def make_socket_dir(host: Host, path: str, user: str) -> str:
    host.run(["mkdir", "-p", "-m", "0700", path], user=user)
    owner = host.run(["stat", "-c", "%U:%a", path], user=user).stdout.strip()
    if owner != f"{user}:700":
        raise UnsafeState(f"socket directory {path} is {owner}, expected {user}:700; remove it")
    return path


def start_private(cluster: Cluster, host: Host, socket_dir: str) -> None:
    make_socket_dir(host, socket_dir, cluster.os_user)
    service_for(cluster, host).start(
        options=f"-c listen_addresses='' -c unix_socket_directories='{socket_dir}' -c port={int(cluster.port)}"
    )


def checkpoint_lsn(cluster: Cluster, host: Host) -> str:
    """The stopped cluster's latest checkpoint location (pg_controldata)."""
    out = host.run([cluster.bin("pg_controldata"), "-D", cluster.datadir], user=cluster.os_user).stdout
    for line in out.splitlines():
        if line.startswith("Latest checkpoint location:"):
            return line.split(":", 1)[1].strip()
    raise CheckFailed(f"pg_controldata of {cluster.datadir} names no latest checkpoint location")


def pg_control_state(host: Host, datadir: str, user: str) -> dict[str, bool]:
    def ex(p: str) -> bool:
        return host.run(["test", "-e", f"{datadir}/{p}"], user=user, check=False).exit_code == 0

    return {"pg_control": ex("global/pg_control"), "pg_control.old": ex("global/pg_control.old")}


def stop_old(ctx: RunContext) -> None:
    """Stops the old cluster and records its shutdown checkpoint's LSN: a rollback that rebuilds it from the
    base backup and its WAL proves it replayed at least that far."""
    guard.prove(ctx)
    ctx.state.record("old_stop_requested")
    service_for(ctx.cluster, ctx.host).stop("fast")
    ctx.state.record("old_stopped", checkpoint_lsn=checkpoint_lsn(ctx.cluster, ctx.host))


def stop_if_running(cluster: Cluster, host: Host) -> bool:
    svc = service_for(cluster, host)
    if host.run(["test", "-e", f"{cluster.datadir}/postmaster.pid"], check=False).exit_code == 0 and svc.is_running():
        svc.stop("fast")
        return True
    return False


def start_if_down(cluster: Cluster, host: Host) -> bool:
    """Starts the cluster where its clients reach it when no postmaster serves it (stopped, or killed: crash
    recovery runs); whether it had to."""
    svc = service_for(cluster, host)
    if svc.is_running() and not svc.accepts_connections():
        # e.g. the server pg_upgrade started in binary-upgrade mode on its private socket, left running when the
        # worker was killed mid pg_upgrade
        log.warning("the cluster runs but does not answer on its socket: stopping it to start it normally")
        svc.stop("fast")
    if svc.is_running():
        return False
    log.warning("no server runs in %s: starting it", cluster.datadir)
    svc.start()
    return True
