"""Logical backups: globals + one directory-format dump per database, verified and checksummed; restore."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.errors import CheckFailed, CommandError
from pgupgrade.state import now_iso, safe_name

log = logging.getLogger(__name__)
GLOBALS = "globals.sql"


def _files(host: Host, root: str, user: str) -> dict[str, dict[str, Any]]:
    listing = host.run(["find", root, "-type", "f", "-printf", "%s\\t%P\\n"], user=user, timeout=600).stdout
    files: dict[str, dict[str, Any]] = {}
    for line in listing.splitlines():
        size, rel = line.split("\t", 1)
        files[rel] = {"size": int(size)}
    if files:
        sums = host.run(["sha256sum", "--", *sorted(files)], user=user, cwd=root, timeout=3600).stdout
        for line in sums.splitlines():
            digest, rel = line.split(maxsplit=1)
            files[rel.lstrip("*")]["sha256"] = digest
    return files


def _manifest(
    host: Host,
    cluster: Cluster,
    backup_dir: str,
    user: str,
    *,
    started: str,
    bindir: str,
    dumps: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """What a backup holds: per database, its dump and table-of-contents size; every file's size and sha256."""
    manifest: dict[str, Any] = {
        **extra,
        "cluster": cluster.name,
        "backup_dir": backup_dir,
        "started": started,
        "finished": now_iso(),
        "bindir": bindir,
        "databases": dumps,
        "files": _files(host, backup_dir, user),
    }
    manifest["total_bytes"] = sum(f["size"] for f in manifest["files"].values())
    return manifest


def take(
    cluster: Cluster,
    host: Host,
    backup_dir: str,
    databases: list[str],
    *,
    jobs: int = 2,
    bindir: str | None = None,
    transfer: bool = False,
) -> dict[str, Any]:
    """Writes the backup into backup_dir (created, must be empty) and returns its manifest. ``transfer``: a dump
    restored at once inside the outage (dump/restore method): uncompressed, not re-read, not checksummed."""
    bindir = bindir or cluster.bindir
    env = cluster.libpq_env()
    user = cluster.os_user
    host.run(["mkdir", "-p", "-m", "0700", backup_dir], user=user)
    if host.run(["find", backup_dir, "-mindepth", "1", "-print", "-quit"], user=user).stdout.strip():
        raise CheckFailed(f"backup_dir {backup_dir} is not empty; give each run its own directory")
    started = now_iso()
    host.run(
        [f"{bindir}/pg_dumpall", "--globals-only", "-f", f"{backup_dir}/{GLOBALS}"], user=user, env=env, timeout=600
    )
    dumps: dict[str, dict[str, Any]] = {}
    for db in databases:
        target = f"{backup_dir}/db-{safe_name(db)}"
        host.run(
            [f"{bindir}/pg_dump", "-Fd", "-j", str(jobs), *(["-Z", "0"] if transfer else []), "-f", target, "-d", db],
            user=user,
            env=cluster.libpq_env(db),
            timeout=24 * 3600,
        )
        if transfer:
            dumps[db] = {"dir": target}
            continue
        toc = host.run([f"{bindir}/pg_restore", "-l", target], user=user, timeout=600).stdout
        entries = [line for line in toc.splitlines() if line and not line.startswith(";")]  # readable
        dumps[db] = {"dir": target, "toc_entries": len(entries)}
    if transfer:
        return {"backup_dir": backup_dir, "bindir": bindir, "started": started, "databases": dumps}
    return _manifest(host, cluster, backup_dir, user, started=started, bindir=bindir, dumps=dumps)


def verify(host: Host, manifest: dict[str, Any], user: str) -> None:
    """Every file still there with the size and checksum recorded."""
    now = _files(host, manifest["backup_dir"], user)
    for rel, meta in manifest["files"].items():
        if rel not in now or now[rel] != meta:
            raise CheckFailed(f"backup file {rel} changed or vanished since it was written")


def restore(cluster: Cluster, host: Host, manifest: dict[str, Any], *, jobs: int = 2) -> None:
    """Restores globals and every database into a running cluster with no user databases yet."""
    user = cluster.os_user
    psql = cluster.bin("psql")
    res = host.run(
        [psql, "-X", "-q", "-d", "postgres", "-f", f"{manifest['backup_dir']}/{GLOBALS}"],
        user=user,
        env=cluster.libpq_env("postgres"),
        timeout=600,
        check=False,
    )
    errors = [ln for ln in res.stderr.splitlines() if "ERROR" in ln and "already exists" not in ln]
    if res.exit_code != 0 or errors:
        raise CommandError(res.argv, res.exit_code, "\n".join(errors) or res.stderr)
    existing = set(
        host.run(
            [psql, "-X", "-At", "-c", "SELECT datname FROM pg_database"], user=user, env=cluster.libpq_env("postgres")
        ).stdout.split()
    )
    for db, meta in manifest["databases"].items():
        argv = [cluster.bin("pg_restore"), "-j", str(jobs), "--exit-on-error"]
        if db in existing:
            argv += ["-d", db]
        else:
            argv += ["-C", "-d", "postgres"]
        host.run([*argv, meta["dir"]], user=user, env=cluster.libpq_env("postgres"), timeout=24 * 3600)
    log.info("restored %d databases from %s", len(manifest["databases"]), manifest["backup_dir"])


def default_dir(root: Path, cluster_name: str, run_id: str) -> str:
    return str(root / "backups" / safe_name(cluster_name) / safe_name(run_id))


# -- custom-format dumps, one file per database (the extension-upgrade DAGs) ------------------------------

_TOC_LINE_RE = re.compile(r"^\d+; \d+ \d+ (?P<rest>.*)$")


def toc(host: Host, path: str, user: str, bindir: str) -> list[str]:
    """The archive's table of contents (``pg_restore -l``) without comment lines: reading it proves the archive
    is complete and readable."""
    out = host.run([f"{bindir}/pg_restore", "-l", path], user=user, timeout=600).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith(";")]


def toc_has(entries: list[str], desc: str, schema: str, name: str) -> bool:
    """Whether a TOC entry of that kind (``TABLE DATA``, ``EXTENSION`` ...) names schema.name."""
    wanted = f"{desc} {schema} {name} "
    for line in entries:
        m = _TOC_LINE_RE.match(line)
        if m and (m.group("rest") + " ").startswith(wanted):
            return True
    return False


def dump_custom(
    cluster: Cluster,
    host: Host,
    backup_dir: str,
    databases: list[str],
    *,
    bindir: str | None = None,
    required: dict[str, list[tuple[str, str, str]]] | None = None,
) -> dict[str, Any]:
    """``pg_dump -Fc`` of each database into backup_dir (created, must be empty), each archive listed with
    ``pg_restore -l`` (entry count recorded; every ``required[db]`` entry (desc, schema, name) must be in it),
    files checksummed for :func:`verify`. The database name reaches pg_dump through PGDATABASE, never argv."""
    bindir = bindir or cluster.bindir
    user = cluster.os_user
    host.run(["mkdir", "-p", "-m", "0700", backup_dir], user=user)
    if host.run(["find", backup_dir, "-mindepth", "1", "-print", "-quit"], user=user).stdout.strip():
        raise CheckFailed(f"backup_dir {backup_dir} is not empty; give each run its own directory")
    started = now_iso()
    dumps: dict[str, dict[str, Any]] = {}
    for db in databases:
        target = f"{backup_dir}/db-{safe_name(db)}.dump"
        host.run([f"{bindir}/pg_dump", "-Fc", "-f", target], user=user, env=cluster.libpq_env(db), timeout=24 * 3600)
        entries = toc(host, target, user, bindir)
        missing = [f"{d} {s}.{n}" for d, s, n in (required or {}).get(db, []) if not toc_has(entries, d, s, n)]
        if missing:
            raise CheckFailed(f"backup of {db} ({target}) lacks TOC entries: {', '.join(missing)}")
        dumps[db] = {"file": target, "toc_entries": len(entries)}
    return _manifest(host, cluster, backup_dir, user, started=started, bindir=bindir, dumps=dumps, format="custom")


def restore_custom(cluster: Cluster, host: Host, archive: str, db: str, *, bindir: str | None = None) -> None:
    """``pg_restore --clean --if-exists --single-transaction`` of one archive into an existing database: all or
    nothing (a failure leaves the database as it was). Objects the archive does not know are left alone."""
    from psycopg2.extensions import make_dsn

    bindir = bindir or cluster.bindir
    argv = [f"{bindir}/pg_restore", "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
            "-d", make_dsn(dbname=db), archive]  # fmt: skip
    host.run(argv, user=cluster.os_user, env=cluster.libpq_env(db), timeout=24 * 3600)
    log.info("restored %s from %s", db, archive)
