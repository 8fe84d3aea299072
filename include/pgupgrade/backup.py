"""Backups. Logical: globals + one directory-format dump per database, verified and checksummed; restore.
Physical (link and swap mode's way back): a base backup that keeps the cluster's WAL from its start on."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pgupgrade import facts
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, CommandError
from pgupgrade.sql import connect, fetch_named, load, psycopg2
from pgupgrade.state import now_iso, safe_name

log = logging.getLogger(__name__)
GLOBALS = "globals.sql"
# The physical replication slot a base backup creates so the cluster keeps every WAL segment written after it
# (one name: the cluster lock allows one run per cluster; the rollback or the next backup drops it).
ROLLBACK_SLOT = "pgupgrade_rollback_wal"
_LABEL_RE = re.compile(r"^START WAL LOCATION: (?P<lsn>[0-9A-F]+/[0-9A-F]+) \(file (?P<file>[0-9A-F]{24})\)$", re.M)


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
        [f"{bindir}/pg_dumpall", "-w", "--globals-only", "-f", f"{backup_dir}/{GLOBALS}"],
        user=user,
        env=env,
        timeout=600,
    )
    dumps: dict[str, dict[str, Any]] = {}
    for db in databases:
        target = f"{backup_dir}/db-{safe_name(db)}"
        host.run(
            [
                f"{bindir}/pg_dump",
                "-w",
                "-Fd",
                "-j",
                str(jobs),
                *(["-Z", "0"] if transfer else []),
                "-f",
                target,
                "-d",
                db,
            ],
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
        [psql, "-X", "-w", "-q", "-d", "postgres", "-f", f"{manifest['backup_dir']}/{GLOBALS}"],
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
            [psql, "-X", "-At", "-c", load("database-names")], user=user, env=cluster.libpq_env("postgres")
        ).stdout.split()
    )
    for db, meta in manifest["databases"].items():
        argv = [cluster.bin("pg_restore"), "-w", "-j", str(jobs), "--exit-on-error"]
        if db in existing:
            argv += ["-d", db]
        else:
            argv += ["-C", "-d", "postgres"]
        host.run([*argv, meta["dir"]], user=user, env=cluster.libpq_env("postgres"), timeout=24 * 3600)
    log.info("restored %d databases from %s", len(manifest["databases"]), manifest["backup_dir"])


def base_requirements(cluster: Cluster) -> list[str]:
    """Why a base backup with a replication slot cannot be taken of this cluster (empty: it can)."""
    with connect(cluster) as conn:
        s = fetch_named(conn, "wal-settings")[0]
    why = []
    if s["wal_level"] == "minimal":
        why.append("wal_level is minimal (needs replica)")
    if s["max_wal_senders"] < 1:
        why.append("max_wal_senders is 0")
    if s["max_replication_slots"] <= s["slots_used"]:
        why.append(f"all {s['max_replication_slots']} max_replication_slots are in use")
    return why


def drop_slot(cluster: Cluster, slot: str = ROLLBACK_SLOT) -> bool:
    """Drops the slot if the (running) cluster has it; whether it did."""
    with connect(cluster) as conn:
        dropped = bool(fetch_named(conn, "drop-replication-slot", {"slot": slot}))
    if dropped:
        log.info("dropped replication slot %s", slot)
    return dropped


def take_base(cluster: Cluster, host: Host, dest: str, *, slot: str = ROLLBACK_SLOT) -> dict[str, Any]:
    """``pg_basebackup`` (plain format, WAL streamed, fast checkpoint) into dest, which creates the physical
    replication slot ``slot`` at its start: from then on the cluster keeps every WAL segment, so this backup
    plus the cluster's pg_wal rebuild it as it was when it last stopped. Checked with ``pg_verifybackup``.
    The slot is dropped again when the backup fails; a leftover of an earlier run is dropped first."""
    user = cluster.os_user
    drop_slot(cluster, slot)
    with connect(cluster) as conn:
        spaces = [
            {
                "oid": int(r["oid"]),
                "name": r["spcname"],
                "location": r["location"],
                "copy": f"{dest}.tablespaces/{r['oid']}",
            }
            for r in fetch_named(conn, "tablespaces")
        ]
    argv = [cluster.bin("pg_basebackup"), "-D", dest, "-X", "stream", "-c", "fast", "-C", "-S", slot, "-w"]
    # a plain-format backup writes each tablespace to its own location unless mapped: that is the live one
    argv += [f"--tablespace-mapping={_escape_eq(t['location'])}={_escape_eq(t['copy'])}" for t in spaces]
    try:
        host.run(argv, user=user, env=cluster.libpq_env(), timeout=24 * 3600)
    except CommandError as exc:
        try:
            drop_slot(cluster, slot)
        except psycopg2.Error as drop_exc:  # the cluster itself may be what failed
            log.warning("could not drop replication slot %s: %s", slot, drop_exc)
        raise CheckFailed(
            f"the base backup link mode needs to come back failed ({exc}); allow a replication connection for "
            f"{cluster.user} in pg_hba.conf, or use transfer_mode=copy"
        ) from exc
    host.run([cluster.bin("pg_verifybackup"), "-q", dest], user=user, timeout=24 * 3600)
    label = _LABEL_RE.search(host.run(["cat", "--", f"{dest}/backup_label"], user=user).stdout)
    if not label:
        raise CheckFailed(f"{dest}/backup_label names no START WAL LOCATION")
    sizes = host.run(["du", "-sbc", "--", dest, *(t["copy"] for t in spaces)], user=user).stdout.split()
    return {"dir": dest, "slot": slot, "start_lsn": label["lsn"], "start_wal_file": label["file"],
            "bytes": int(sizes[-2]), "tablespaces": spaces}  # fmt: skip


def _escape_eq(path: str) -> str:
    """A path in pg_basebackup's --tablespace-mapping=OLD=NEW, where "=" is written "\\="."""
    return path.replace("=", "\\=")


class BackupProvider(Protocol):
    """One kind of backup of a cluster: taken into a directory, verified later, restored into a cluster. The
    manifest ``take`` returns is what ``verify`` and ``restore`` read (a run keeps it as its "backup" document).
    A site's backup tool (pgBackRest, …) plugs in here."""

    kind: str

    def take(self, cluster: Cluster, host: Host, dest: str, databases: list[str], *, jobs: int) -> dict[str, Any]: ...
    def verify(self, host: Host, manifest: dict[str, Any], user: str) -> None: ...
    def restore(self, cluster: Cluster, host: Host, manifest: dict[str, Any], *, jobs: int = 2) -> None: ...


@dataclass(frozen=True)
class LogicalBackup:
    """Globals (``pg_dumpall -g``) and ``pg_dump -Fd`` per database, every file checksummed; restored into a
    running cluster of any major."""

    kind: str = "logical"

    def take(self, cluster: Cluster, host: Host, dest: str, databases: list[str], *, jobs: int) -> dict[str, Any]:
        return take(cluster, host, dest, databases, jobs=jobs)

    def verify(self, host: Host, manifest: dict[str, Any], user: str) -> None:
        verify(host, manifest, user)

    def restore(self, cluster: Cluster, host: Host, manifest: dict[str, Any], *, jobs: int = 2) -> None:
        restore(cluster, host, manifest, jobs=jobs)


@dataclass(frozen=True)
class BaseBackup:
    """``pg_basebackup`` whose replication slot keeps the cluster's WAL from the backup's start (the way back of
    pg_upgrade's link and swap modes); restored by copying it into the place of the stopped cluster's data
    directory (which the caller moved aside), where WAL replay then brings it forward."""

    kind: str = "base"
    slot: str = ROLLBACK_SLOT

    def take(self, cluster: Cluster, host: Host, dest: str, databases: list[str], *, jobs: int) -> dict[str, Any]:
        return take_base(cluster, host, dest, slot=self.slot)  # every database: a physical copy

    def verify(self, host: Host, manifest: dict[str, Any], user: str) -> None:
        label = _LABEL_RE.search(host.run(["cat", "--", f"{manifest['dir']}/backup_label"], user=user).stdout)
        if not label or label["lsn"] != manifest["start_lsn"]:
            raise CheckFailed(f"base backup {manifest['dir']} changed since it was taken (backup_label)")

    def restore(self, cluster: Cluster, host: Host, manifest: dict[str, Any], *, jobs: int = 2) -> None:
        user = cluster.os_user
        host.run(["rm", "-rf", "--", cluster.datadir], user=user)  # an earlier attempt (the old one is aside)
        host.run(["cp", "-a", "--", manifest["dir"], cluster.datadir], user=user)
        host.run(["rm", "-f", "--", f"{cluster.datadir}/backup_manifest"], user=user)
        for space in manifest.get("tablespaces", []):
            _restore_tablespace(cluster, host, space)


def _restore_tablespace(cluster: Cluster, host: Host, space: dict[str, Any]) -> None:
    """A tablespace's copy in the base backup back at its location: the version directory there (which link or
    swap mode shares with the new cluster) is moved aside, never deleted, the copy's put in its place and the
    rebuilt data directory's pg_tblspc link pointed at the location again (the backup's copy is never changed)."""
    user, loc = cluster.os_user, space["location"]
    for name in host.run(["ls", "--", space["copy"]], user=user).stdout.split():
        if host.run(["test", "-e", f"{loc}/{name}"], check=False).exit_code == 0:
            aside = f"{loc}/{name}.failed-{now_iso().replace(':', '')}"
            host.run(["mv", "--", f"{loc}/{name}", aside], user=user)
            log.info("tablespace %s: moved %s/%s aside to %s", space["name"], loc, name, aside)
        host.run(["cp", "-a", "--", f"{space['copy']}/{name}", f"{loc}/{name}"], user=user, timeout=24 * 3600)
    host.run(["ln", "-sfn", "--", loc, f"{cluster.datadir}/pg_tblspc/{space['oid']}"], user=user)


LOGICAL = LogicalBackup()
BASE = BaseBackup()


def default_dir(ctx: RunContext) -> str:
    """Where a run's backup goes when ``backup_dir`` is empty, on the database host: under the state directory
    when the worker is that host, else beside the data directory (the worker's directories are not there)."""
    if ctx.cluster.ssh_conn_id:
        root = Path(os.path.dirname(ctx.cluster.datadir.rstrip("/")) or "/") / "pgupgrade-backups"
    else:
        root = ctx.store.root / "backups"
    return str(root / safe_name(ctx.cluster.name) / safe_name(ctx.run_id))


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
        host.run(
            [f"{bindir}/pg_dump", "-w", "-Fc", "-f", target], user=user, env=cluster.libpq_env(db), timeout=24 * 3600
        )
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
    argv = [f"{bindir}/pg_restore", "-w", "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
            "-d", make_dsn(dbname=db), archive]  # fmt: skip
    host.run(argv, user=cluster.os_user, env=cluster.libpq_env(db), timeout=24 * 3600)
    log.info("restored %s from %s", db, archive)


def take_backup(ctx: RunContext, backup_dir: str, databases: list[str], *, base: bool) -> dict[str, Any]:
    """The run's backup, verified: logical (globals + pg_dump -Fd per database) and, with ``base``, a base
    backup whose replication slot keeps the old cluster's WAL. Taken once per run (a retry verifies it)."""
    old = ctx.cluster
    if ctx.state.has("backup"):
        manifest: dict[str, Any] = ctx.state.load("backup")
        LOGICAL.verify(ctx.host, manifest, old.os_user)
        log.info("backup of this run already taken and verified: %s", manifest["backup_dir"])
        return manifest
    manifest = LOGICAL.take(old, ctx.host, backup_dir, databases, jobs=ctx.params["jobs"])
    manifest["facts"] = facts.snapshot(old)
    if base:
        # link/swap: once the new cluster starts the old files are gone; this base backup plus the old data
        # directory's WAL (kept by the slot) rebuild the old cluster as it stopped, every write included
        ctx.state.record("wal_slot_created", slot=ROLLBACK_SLOT)
        manifest["base"] = BASE.take(old, ctx.host, f"{backup_dir}/base", databases, jobs=ctx.params["jobs"])
    ctx.state.save("backup", manifest)
    return manifest


def needs_base(method: str, mode: str | None) -> bool:
    """Whether the run's way back needs a physical base backup: pg_upgrade in link or swap mode."""
    return method == "pg_upgrade" and mode in ("link", "swap")
