"""Stopping and starting clusters for the runbooks: the old cluster's journaled stop, servers started where only
this run reaches them (private sockets), what pg_control says, starting a cluster that died under a run."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

from pgupgrade import guard, tunnel
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, UnsafeState

log = logging.getLogger(__name__)


def private_cluster(cluster: Cluster, datadir: str, bindir: str, socket_dir: str, host: Host) -> Cluster:
    """The same cluster where only this run reaches it: its private socket directory; on a remote database host
    also 127.0.0.1 there, at a port of its own (never the port clients use, which a pooler on the database host
    may target), forwarded to the worker over the host runner's SSH connection. Always started by ``pg_ctl``
    with private options (a unit or ``pg_ctlcluster`` takes none, and would start the cluster it is registered
    for); the configuration directory is kept for the same data directory (Debian keeps it in /etc)."""
    confdir = cluster.confdir if datadir == cluster.datadir else None
    private = replace(cluster, bindir=bindir, datadir=datadir, host=socket_dir, confdir=confdir, service="pg_ctl")
    return reachable(private, host, private_port(datadir))


def private_port(datadir: str) -> int:
    """A port for a private server on the database host's loopback, fixed per data directory (20000-29999:
    below Linux's ephemeral range)."""
    return 20000 + int(hashlib.sha256(datadir.encode()).hexdigest()[:8], 16) % 10000


def reachable(cluster: Cluster, host: Host, port: int | None = None) -> Cluster:
    """The cluster as this process reaches it: unchanged on the database host itself, else at ``port`` (default
    its own) on the remote host's loopback through a forwarded port."""
    if not tunnel.remote(host):
        return cluster
    port = port or cluster.port
    return replace(cluster, port=port, reach=tunnel.forward(host, port))


def listen_addresses(cluster: Cluster) -> str:
    """No TCP at all on the worker's own host; the loopback only on a remote host (reached through a tunnel)."""
    return "'127.0.0.1'" if cluster.reach else "''"


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
    """Starts the cluster where only this run reaches it, archiving off: a server that may still be rolled back
    (or the old one read privately) never pushes WAL into the production archive."""
    make_socket_dir(host, socket_dir, cluster.os_user)
    service_for(cluster, host).start(
        options=f"-c listen_addresses={listen_addresses(cluster)} -c unix_socket_directories='{socket_dir}' "
        f"-c port={int(cluster.port)} -c archive_mode=off -c restore_command=''"
    )


def controldata(cluster: Cluster, host: Host) -> dict[str, str]:
    """pg_controldata of the cluster's data directory, field by field."""
    out = host.run([cluster.bin("pg_controldata"), "-D", cluster.datadir], user=cluster.os_user).stdout
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in out.splitlines()) if sep}


def checkpoint_lsn(cluster: Cluster, host: Host) -> str:
    """The stopped cluster's latest checkpoint location (pg_controldata)."""
    lsn = controldata(cluster, host).get("Latest checkpoint location")
    if not lsn:
        raise CheckFailed(f"pg_controldata of {cluster.datadir} names no latest checkpoint location")
    return lsn


def pg_control_state(host: Host, datadir: str, user: str) -> dict[str, bool]:
    def ex(p: str) -> bool:
        return host.run(["test", "-e", f"{datadir}/{p}"], user=user, check=False).exit_code == 0

    return {"pg_control": ex("global/pg_control"), "pg_control.old": ex("global/pg_control.old")}


def restore_pg_control(host: Host, datadir: str, user: str) -> None:
    """``global/pg_control.old`` (link-mode pg_upgrade's rename: the old cluster cannot start) renamed back."""
    host.run(["mv", "--", f"{datadir}/global/pg_control.old", f"{datadir}/global/pg_control"], user=user)
    log.info("renamed global/pg_control.old back to global/pg_control in %s", datadir)


def cutover_private(cluster: Cluster, host: Host) -> Cluster:
    """The old cluster as the cutover restarts it: where only this run reaches it."""
    return private_cluster(cluster, cluster.datadir, cluster.bindir, socket_path(f"{cluster.datadir}/cutover"), host)


def restart_private(ctx: RunContext) -> Cluster:
    """Ends every client session, whatever role it uses, and keeps every client out until the cluster opens:
    a fast stop through the cluster's service, then a start where only this run reaches it."""
    private = cutover_private(ctx.cluster, ctx.host)
    ctx.state.record("old_private_restart")
    service_for(ctx.cluster, ctx.host).stop("fast")
    start_private(private, ctx.host, private.host)
    ctx.state.record("old_private_started")
    return private


def old_now(ctx: RunContext) -> Cluster:
    """The old cluster where the cutover reaches it: privately once the cutover restarted it there."""
    if ctx.state.happened("old_private_started") and not ctx.state.happened("old_stop_requested"):
        return cutover_private(ctx.cluster, ctx.host)
    return ctx.cluster


def stop_old(ctx: RunContext) -> None:
    """Stops the old cluster and records its shutdown checkpoint's LSN: a rollback that rebuilds it from the
    base backup and its WAL proves it replayed at least that far."""
    serving = old_now(ctx)
    guard.prove(ctx, serving)
    ctx.state.record("old_stop_requested")
    service_for(serving, ctx.host).stop("fast")
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
