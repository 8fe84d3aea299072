"""Major upgrade mechanics: a new cluster that matches the old one, pg_upgrade, dump/restore, and carrying the
configuration over correctly."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pgupgrade.cluster import Cluster, Service
from pgupgrade.commands import Host, Result
from pgupgrade.errors import CheckFailed, UnsafeState
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.sql import connect, scalar
from pgupgrade.versions import Installation

log = logging.getLogger(__name__)

TRANSFER_MODES = ("link", "copy", "clone", "swap")
# Settings that name files or identify the cluster: rewritten, never copied verbatim between majors.
PATH_SETTINGS = ("data_directory", "hba_file", "ident_file", "external_pid_file", "config_file")
_LINE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$")


def matching_options(cluster: Cluster) -> InitdbOptions:
    """What initdb of the new cluster must share with the old one for pg_upgrade to accept it."""
    with connect(cluster) as conn:
        encoding = scalar(conn, "SHOW server_encoding")
        collate, ctype = _one(conn, "SELECT datcollate, datctype FROM pg_database WHERE datname = 'template1'")
        checksums = scalar(conn, "SHOW data_checksums") == "on"
        segsize = scalar(conn, "SELECT setting::bigint / 1048576 FROM pg_settings WHERE name = 'wal_segment_size'")
        superuser = scalar(conn, "SELECT rolname FROM pg_roles WHERE oid = 10")
    if collate != ctype:
        log.warning("template1 has lc_collate %s and lc_ctype %s; initdb uses lc_collate for both", collate, ctype)
    return InitdbOptions(
        encoding=encoding, locale=collate, checksums=checksums, wal_segsize_mb=int(segsize), superuser=superuser
    )


def _one(conn: Any, query: str) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    assert row is not None
    return tuple(row)


def parse_conf(text: str) -> list[tuple[str, str]]:
    """(name, raw value) pairs of a postgresql.conf, in order; comments and blank lines dropped."""
    pairs = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0] if "'" not in raw else _strip_comment(raw)
        m = _LINE_RE.match(line)
        if m and m.group(2):
            pairs.append((m.group(1).lower(), m.group(2)))
    return pairs


def _strip_comment(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == "'":
            quoted = not quoted
        if ch == "#" and not quoted:
            break
        out.append(ch)
    return "".join(out)


def known_settings(inst: Installation, host: Host, user: str) -> set[str]:
    out = host.run([inst.bin("postgres"), "--describe-config"], user=user, timeout=60).stdout
    return {line.split("\t", 1)[0].lower() for line in out.splitlines() if line.strip()}


@dataclass(frozen=True)
class CarriedConfig:
    settings: list[tuple[str, str]]
    auto_settings: list[tuple[str, str]]
    dropped: list[str]
    rewritten: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "auto_settings": self.auto_settings,
            "dropped": self.dropped,
            "rewritten": self.rewritten,
        }


def carry_config(old: Cluster, old_major: int, new: Installation, new_datadir: str, host: Host) -> CarriedConfig:
    """Writes the old configuration into the new data directory, correctly for the new major:
    path settings rewritten to the new cluster's own files, settings the new major does not know dropped
    (logged), ``postgresql.auto.conf`` merged, pg_hba.conf and pg_ident.conf copied, port and socket
    directories kept so applications reconnect unchanged."""
    user = old.os_user
    known = known_settings(new, host, user)
    conf_text = host.run(["cat", f"{old.config_dir}/postgresql.conf"], user=user).stdout
    auto_path = f"{old.datadir}/postgresql.auto.conf"
    auto_text = host.run(["cat", auto_path], user=user, check=False).stdout
    dropped: list[str] = []
    rewritten: list[str] = []

    def keep(pairs: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
        kept = []
        for name, value in pairs:
            if name in PATH_SETTINGS:
                rewritten.append(f"{where}: {name} = {value} (the new cluster uses its own files)")
                continue
            if name == "cluster_name":
                new_value = value.replace(f"{old_major}/", f"{new.major}/")
                if new_value != value:
                    rewritten.append(f"{where}: cluster_name {value} -> {new_value}")
                value = new_value
            if name not in known and "." not in name:
                dropped.append(f"{where}: {name} = {value} (unknown to PostgreSQL {new.major})")
                continue
            kept.append((name, value))
        return kept

    settings = keep(parse_conf(conf_text), "postgresql.conf")
    auto_settings = keep(parse_conf(auto_text), "postgresql.auto.conf")
    for line in dropped:
        log.warning("configuration not carried over: %s", line)
    new_conf = f"{new_datadir}/postgresql.conf"
    base = host.run(["cat", new_conf], user=user).stdout
    block = "\n".join(f"{k} = {v}" for k, v in settings)
    host.run(
        ["tee", new_conf],
        user=user,
        stdin=f"{base.rstrip()}\n\n# carried over from {old.config_dir}/postgresql.conf by pgupgrade\n{block}\n",
    )
    if auto_settings:
        auto_block = "\n".join(f"{k} = {v}" for k, v in auto_settings)
        host.run(
            ["tee", f"{new_datadir}/postgresql.auto.conf"],
            user=user,
            stdin=f"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
            f"{auto_block}\n",
        )
    for name in ("pg_hba.conf", "pg_ident.conf"):
        src = _conf_file(old, dict(parse_conf(conf_text)), name)
        host.run(["cp", "--", src, f"{new_datadir}/{name}"], user=user)
    return CarriedConfig(settings, auto_settings, dropped, rewritten)


def _conf_file(old: Cluster, conf: dict[str, str], name: str) -> str:
    key = {"pg_hba.conf": "hba_file", "pg_ident.conf": "ident_file"}[name]
    if key in conf:
        return conf[key].strip("'")
    return f"{old.config_dir}/{name}"


def preload_libraries(old: Cluster) -> str:
    with connect(old) as conn:
        return str(scalar(conn, "SHOW shared_preload_libraries") or "")


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
    Service(cluster, host).start(
        options=f"-c listen_addresses='' -c unix_socket_directories='{socket_dir}' -c port={int(cluster.port)}"
    )


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
