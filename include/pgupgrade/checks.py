"""Read-only checks (and the two reversible session controls: blocking logins, terminating clients)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pgupgrade.backup import ROLLBACK_SLOT
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.profiles import ExtensionProfile
from pgupgrade.sql import connect, fetch_named
from pgupgrade.versions import Installation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Blocker:
    kind: str
    detail: str
    ack_param: str | None  # the param that acknowledges it; None = cannot be acknowledged
    breaks_pg_upgrade: bool = True
    breaks_dump_restore: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def upgrade_blockers(
    cluster: Cluster, old_major: int, databases: list[str], standbys: frozenset[str] = frozenset()
) -> list[Blocker]:
    """What pg_upgrade cannot carry or would orphan. ``standbys``: the names the listed standbys stream under
    (the upgrade takes them along and recreates the physical slots: neither blocks)."""
    out: list[Blocker] = []
    with connect(cluster) as conn:
        for s in fetch_named(conn, "replication"):
            if s["application_name"] in standbys:
                continue
            out.append(
                Blocker(
                    "standby",
                    f"standby {s['application_name']} ({s['client_addr']}) streams from "
                    "this cluster; it must be rebuilt after the upgrade",
                    "ack_standbys",
                    False,
                )
            )
        for s in fetch_named(conn, "replication-slots"):
            if s["slot_name"] == ROLLBACK_SLOT:
                continue  # this tool's own: a link-mode backup keeps the old cluster's WAL with it
            lost = (s["slot_type"] == "physical" and not standbys) or (s["slot_type"] == "logical" and old_major < 17)
            if lost:
                out.append(
                    Blocker(
                        "replication_slot",
                        f"{s['slot_type']} slot {s['slot_name']} will not exist in the new cluster",
                        "ack_replication_slots",
                        False,
                    )
                )
        for s in fetch_named(conn, "subscriptions"):
            out.append(
                Blocker(
                    "subscription",
                    f"subscription {s['subname']} in {s['datname']} is carried "
                    "disabled and must be re-enabled and re-synced by hand",
                    "ack_subscriptions",
                    False,
                )
            )
        for x in fetch_named(conn, "prepared-xacts"):
            out.append(
                Blocker(
                    "prepared_transaction",
                    f"prepared transaction {x['gid']} in {x['database']} "
                    "(COMMIT PREPARED or ROLLBACK PREPARED it first)",
                    None,
                    True,
                    True,
                )
            )
    for db in databases:
        with connect(cluster, db) as conn:
            for c in fetch_named(conn, "reg-columns"):
                out.append(
                    Blocker(
                        "reg_column",
                        f"{db}.{c['schema']}.{c['table_name']}.{c['column_name']} is of "
                        f"type {c['type_name']}, which pg_upgrade cannot carry",
                        None,
                        True,
                        False,
                    )
                )
    return out


def _control_file(inst: Installation, extname: str) -> Path:
    return Path(inst.extension_dir) / f"{extname}.control"


def missing_extensions(cluster: Cluster, databases: list[str], new: Installation, host: Host) -> list[str]:
    """Installed extensions (all databases) whose control file or shared library the new installation lacks."""
    missing: list[str] = []
    for db in databases:
        with connect(cluster, db) as conn:
            exts = fetch_named(conn, "extensions")
            libs = [(r["extname"], r["probin"]) for r in fetch_named(conn, "extension-libraries")]
        for e in exts:
            if not _exists(host, str(_control_file(new, e["extname"]))):
                missing.append(f"{db}: extension {e['extname']} has no control file in {new.extension_dir}")
        for extname, probin in libs:
            lib = probin.replace("$libdir", new.pkglibdir)
            candidates = [lib] if lib.endswith(".so") else [lib, lib + ".so"]
            if not any(_exists(host, c) for c in candidates):
                missing.append(f"{db}: extension {extname} needs library {probin}, not found in {new.pkglibdir}")
    return sorted(set(missing))


def missing_libraries(preload: str, new: Installation, host: Host) -> list[str]:
    """Entries of shared_preload_libraries with no shared library in the new installation."""
    missing = []
    for name in (n.strip().strip('"') for n in preload.split(",") if n.strip()):
        lib = name.replace("$libdir", new.pkglibdir)
        path = lib if lib.startswith("/") else f"{new.pkglibdir}/{lib}"
        if not any(_exists(host, c) for c in (path, path + ".so")):
            missing.append(name)
    return missing


def _exists(host: Host, path: str) -> bool:
    return host.run(["test", "-e", path], check=False, timeout=30).exit_code == 0


def free_bytes(host: Host, path: str) -> int:
    """Free space of the filesystem that holds path (or its nearest existing parent)."""
    probe = Path(path)
    while not _exists(host, str(probe)) and probe != probe.parent:
        probe = probe.parent
    out = host.run(["df", "-P", "-B1", str(probe)], timeout=30).stdout.splitlines()
    return int(out[-1].split()[3])


def same_filesystem(host: Host, a: str, b: str) -> bool:
    def dev(p: str) -> str:
        probe = Path(p)
        while not _exists(host, str(probe)) and probe != probe.parent:
            probe = probe.parent
        return host.run(["stat", "-c", "%d", str(probe)], timeout=30).stdout.strip()

    return dev(a) == dev(b)


def extension_databases(cluster: Cluster, databases: list[str], profile: ExtensionProfile) -> list[str]:
    found = []
    for db in databases:
        with connect(cluster, db) as conn:
            if profile.installed_version(conn):
                found.append(db)
    return found


def queue_sizes(cluster: Cluster, databases: list[str], profile: ExtensionProfile) -> dict[str, int]:
    sizes = {}
    for db in databases:
        with connect(cluster, db) as conn:
            sizes[db] = profile.queue_size(conn)
    return sizes


def health(cluster: Cluster, databases: list[str], profile: ExtensionProfile | None) -> list[dict[str, Any]]:
    """``health-check.sql`` in every database, plus the profile's checks where the extension is installed."""
    rows: list[dict[str, Any]] = []
    prefix = profile.trigger_prefix if profile else "\x01none"
    for db in databases:
        with connect(cluster, db) as conn:
            for r in fetch_named(conn, "health-check", {"prefix": prefix}):
                rows.append({"database": db, **r})
            if profile and profile.installed_version(conn):
                problems = profile.problems(conn)
                queue = profile.queue_size(conn)
                rows.append(
                    {
                        "database": db,
                        "check": f"{profile.extname} version",
                        "ok": True,
                        "detail": profile.reported_version(conn),
                    }
                )
                rows.append(
                    {"database": db, "check": "no metadata errors", "ok": not problems, "detail": "; ".join(problems)}
                )
                rows.append({"database": db, "check": "queue empty", "ok": queue == 0, "detail": str(queue)})
    return rows
