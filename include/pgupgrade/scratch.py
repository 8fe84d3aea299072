"""initdb and throwaway clusters: the new cluster of a major upgrade, rehearsals, demos and tests."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pgupgrade import tunnel
from pgupgrade.cluster import Cluster, ServiceManager, service_for
from pgupgrade.commands import Host, LocalHost
from pgupgrade.errors import UnsafeState
from pgupgrade.sql import connect, fetch_named, scalar_named
from pgupgrade.versions import Installation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitdbOptions:
    """What a new cluster must share with the old one for pg_upgrade (and for a faithful dump/restore)."""

    encoding: str = "UTF8"
    locale: str = "C"
    checksums: bool = False
    wal_segsize_mb: int = 16
    superuser: str = "postgres"
    auth: str = "trust"  # the old cluster's pg_hba.conf replaces it when a configuration is carried over

    def argv(self, inst: Installation) -> list[str]:
        args = [
            f"--encoding={self.encoding}",
            f"--locale={self.locale}",
            f"--username={self.superuser}",
            f"--wal-segsize={self.wal_segsize_mb}",
            f"--auth={self.auth}",
        ]
        if self.checksums:
            args.append("--data-checksums")
        elif inst.major >= 18:
            args.append("--no-data-checksums")
        return args


def is_empty_dir(host: Host, path: str, user: str) -> bool:
    res = host.run(["find", path, "-maxdepth", "0", "-empty"], user=user, check=False, timeout=30)
    return res.exit_code == 0 and res.stdout.strip() == path


def exists(host: Host, path: str, user: str | None = None) -> bool:
    return host.run(["test", "-e", path], user=user, check=False, timeout=30).exit_code == 0


def initdb(
    inst: Installation, datadir: str, options: InitdbOptions, *, os_user: str = "postgres", host: Host | None = None
) -> None:
    """initdb into a directory that does not exist or is empty; never over a cluster that holds data."""
    host = host or LocalHost()
    if exists(host, datadir, os_user) and not is_empty_dir(host, datadir, os_user):
        raise UnsafeState(f"refusing to initdb: {datadir} exists and is not empty")
    host.run(["mkdir", "-p", "-m", "0700", datadir], user=os_user)
    host.run([inst.bin("initdb"), "-D", datadir, "--no-sync", *options.argv(inst)], user=os_user, timeout=300)


def write_settings(host: Host, conf_file: str, settings: dict[str, str], os_user: str) -> None:
    """Appends settings to postgresql.conf (later lines win) through a temp file moved into place."""
    current = host.run(["cat", conf_file], user=os_user).stdout
    lines = [f"{k} = {v}" for k, v in settings.items()]
    new = current.rstrip("\n") + "\n\n# set by pgupgrade\n" + "\n".join(lines) + "\n"
    host.run(["tee", conf_file], user=os_user, stdin=new)


def create_cluster(
    inst: Installation,
    datadir: str,
    *,
    name: str,
    port: int,
    socket_dir: str,
    os_user: str = "postgres",
    options: InitdbOptions | None = None,
    settings: dict[str, str] | None = None,
    host: Host | None = None,
    start: bool = True,
) -> Cluster:
    """A new cluster reachable only through its Unix socket directory, started when asked."""
    host = host or LocalHost()
    initdb(inst, datadir, options or InitdbOptions(), os_user=os_user, host=host)
    host.run(["mkdir", "-p", socket_dir], user=os_user)
    on_remote_host = tunnel.remote(host)  # then also the remote loopback, reached through a forwarded port
    conf = {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'" if on_remote_host else "''",
        "unix_socket_directories": f"'{socket_dir}'",
        **(settings or {}),
    }
    write_settings(host, os.path.join(datadir, "postgresql.conf"), conf, os_user)
    cluster = Cluster(
        name=name,
        host=socket_dir,
        port=port,
        dbname="postgres",
        user=(options or InitdbOptions()).superuser,
        bindir=inst.bindir,
        datadir=datadir,
        os_user=os_user,
        reach=tunnel.forward(host, port) if on_remote_host else None,
    )
    if start:
        service_for(cluster, host).start()
    return cluster


def log_tail(host: Host, service: ServiceManager, lines: int = 50) -> str:
    path = service.log_file
    if not Path(path).is_absolute():
        return ""
    res = host.run(["tail", "-n", str(lines), path], user=service.cluster.os_user, check=False, timeout=30)
    return res.stdout


def matching_options(cluster: Cluster) -> InitdbOptions:
    """What initdb of the new cluster must share with the old one for pg_upgrade to accept it."""
    with connect(cluster) as conn:
        encoding = scalar_named(conn, "server-encoding")
        template1 = fetch_named(conn, "template1-locale")[0]
        collate, ctype = template1["datcollate"], template1["datctype"]
        checksums = scalar_named(conn, "data-checksums") == "on"
        segsize = scalar_named(conn, "wal-segment-size-mb")
        superuser = scalar_named(conn, "bootstrap-superuser")
    if collate != ctype:
        log.warning("template1 has lc_collate %s and lc_ctype %s; initdb uses lc_collate for both", collate, ctype)
    return InitdbOptions(
        encoding=encoding, locale=collate, checksums=checksums, wal_segsize_mb=int(segsize), superuser=superuser
    )
