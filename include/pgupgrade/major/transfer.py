"""Major upgrade mechanics: a new cluster that matches the old one, pg_upgrade, dump/restore (the configuration's
carry-over is ``pgupgrade.config``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgupgrade import registration, services
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host, Result
from pgupgrade.context import RunContext
from pgupgrade.major.model import MajorPlan
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.sql import connect, scalar_named
from pgupgrade.versions import Installation, Version

log = logging.getLogger(__name__)


def preload_libraries(old: Cluster) -> str:
    with connect(old) as conn:
        return str(scalar_named(conn, "shared-preload-libraries") or "")


def prepare_new_cluster(old: Cluster, new: Installation, new_datadir: str, options: InitdbOptions, host: Host) -> None:
    """initdb (refuses a non-empty directory) and the settings pg_upgrade needs before it runs."""
    initdb(new, new_datadir, options, os_user=old.os_user, host=host)


def pg_upgrade_argv(
    old: Cluster,
    new: Installation,
    new_datadir: str,
    *,
    mode: str,
    jobs: int,
    socket_dir: str,
    check: bool,
    old_port: int,
    new_port: int,
    old_options: str = "",
) -> list[str]:
    argv = [
        new.bin("pg_upgrade"),
        "--old-bindir", old.bindir, "--new-bindir", new.bindir,
        "--old-datadir", old.datadir, "--new-datadir", new_datadir,
        "--old-port", str(old_port), "--new-port", str(new_port),
        "--socketdir", socket_dir, "--jobs", str(jobs), "--username", old.user,
        "--retain",
    ]  # fmt: skip
    if old.confdir:
        argv += ["--old-options", f"-c config_file={old.confdir}/postgresql.conf"]
    if old_options:
        argv += ["--old-options", old_options]
    if check:
        argv.append("--check")
    if mode != "copy":
        argv.append(f"--{mode}")
    return argv


def run_pg_upgrade(argv: list[str], host: Host, user: str, workdir: str, timeout: float) -> Result:
    host.run(["mkdir", "-p", workdir], user=user)
    return host.run(argv, user=user, cwd=workdir, timeout=timeout, check=True)


def output_logs(host: Host, new_datadir: str, user: str, max_chars: int = 20000) -> dict[str, str]:
    """pg_upgrade_output.d's logs (kept with --retain) for the report."""
    found = host.run(
        ["find", f"{new_datadir}/pg_upgrade_output.d", "-name", "*.log", "-type", "f"], user=user, check=False
    ).stdout.split()
    logs = {}
    for path in found:
        text = host.run(["tail", "-c", str(max_chars // max(len(found), 1)), path], user=user, check=False).stdout
        logs[Path(path).name] = text
    return logs


def dump_restore(
    old_private: Cluster,
    new_private: Cluster,
    host: Host,
    dump_dir: str,
    databases: list[str],
    jobs: int,
    new: Installation,
) -> dict[str, Any]:
    """Globals with psql, then each database with the new pg_dump -Fd -j N -Z 0 / pg_restore -j N."""
    from pgupgrade import backup

    manifest = backup.take(old_private, host, dump_dir, databases, jobs=jobs, bindir=new.bindir, transfer=True)
    backup.restore(new_private, host, manifest, jobs=jobs)
    return manifest


def set_preload(host: Any, datadir: str, preload: str, user: str) -> None:
    from pgupgrade.scratch import write_settings

    write_settings(host, f"{datadir}/postgresql.conf", {"shared_preload_libraries": f"'{preload}'"}, user)


def new_cluster(ctx: RunContext, plan_: MajorPlan, *, private: bool) -> Cluster:
    """The new cluster as the plan has it: where only this run reaches it (``private``), or where clients do."""
    c = replace(ctx.cluster.with_installation(plan_.new.bindir, plan_.new.datadir), confdir=None)
    if private:  # its configuration is in its data directory (the old cluster's confdir is the old one's)
        return services.private_cluster(c, c.datadir, c.bindir, socket_for(plan_, "sock"), ctx.host)
    # where clients reach it, under the service it is registered with when it opens (registration.target)
    reg = registration.target(ctx.cluster, Version.parse(plan_.new.version).major)
    return replace(c, service=reg.service, confdir=reg.confdir)


def socket_for(plan_: MajorPlan, name: str) -> str:
    return services.socket_path(f"{plan_.work_dir}/{name}")
