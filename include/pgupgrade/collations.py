"""Collation versions across a major upgrade: an index sorted by a libc or ICU collation is only valid while the
library sorts as it did when the index was built. The plan compares each collation the old cluster's databases and
indexes use — the version recorded there (``pg_database.datcollversion``, ``pg_collation.collversion``) — with the
version the new installation gives it (probed in a throwaway cluster of the new installation), and names the indexes
to REINDEX where they differ. After the upgrade, :func:`database_versions` tells whether a database's recorded
version still needs ``ALTER DATABASE … REFRESH COLLATION VERSION`` (pg_upgrade carries the old one over)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pgupgrade import services
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import Host
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.sql import connect, fetch_named, psql, psycopg2, scalar_named
from pgupgrade.state import safe_name
from pgupgrade.versions import Installation

log = logging.getLogger(__name__)

PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}  # pg_collation.collprovider / pg_database.datlocprovider
UNVERSIONED = {"C", "POSIX"}


@dataclass(frozen=True)
class Use:
    """One collation as a database uses it: its default (``collation`` = "default") or a named one."""

    database: str
    collation: str
    provider: str  # libc, icu, builtin
    locale: str
    recorded: str | None  # the version the old cluster recorded
    indexes: tuple[str, ...]  # the database's indexes that sort by it

    @property
    def key(self) -> tuple[str, str]:
        return self.provider, self.locale


def uses(old: Cluster, dbs: list[str]) -> list[Use]:
    """The versioned collations of the old cluster: each database's default and every collation an index sorts by."""
    with connect(old) as conn:
        defaults = {r["datname"]: r for r in fetch_named(conn, "database-collations") if r["datname"] in dbs}
    out: list[Use] = []
    for db, d in defaults.items():
        with connect(old, db) as conn:
            rows = fetch_named(conn, "index-collations")
        by_coll: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_coll[r["collation"]].append(r)
        default_locale = d["collate"] if d["provider"] == "c" else d["locale"]
        default_indexes = tuple(r["index"] for r in rows if r["provider"] == "d")
        if d["provider"] in PROVIDERS and default_locale and default_locale not in UNVERSIONED:
            out.append(Use(db, "default", PROVIDERS[d["provider"]], default_locale, d["recorded_version"],
                           default_indexes))  # fmt: skip
        for name, coll_rows in sorted(by_coll.items()):
            r = coll_rows[0]
            locale = r["collate"] if r["provider"] == "c" else r["locale"]
            if r["provider"] not in PROVIDERS or not locale or locale in UNVERSIONED:
                continue
            out.append(Use(db, name, PROVIDERS[r["provider"]], locale, r["recorded_version"],
                           tuple(x["index"] for x in coll_rows)))  # fmt: skip
    return out


def probe(
    old: Cluster, new_inst: Installation, options: InitdbOptions, work_dir: str, keys: set[tuple[str, str]],
    host: Host, tag: str,
) -> dict[tuple[str, str], str | None]:  # fmt: skip
    """The version the new installation gives each (provider, locale): from a throwaway cluster of it in the work
    directory (initdb, a private start, one query each, removed again). A provider the new build lacks (ICU) is
    reported as the error text prefixed with ``!``."""
    if not keys:
        return {}
    user = old.os_user
    work = f"{work_dir}/collations-{safe_name(tag)}"
    sock = services.socket_path(f"{work}/sock")
    host.run(["rm", "-rf", "--", work], user=user)
    private = services.private_cluster(old, f"{work}/data", new_inst.bindir, sock, host)
    try:
        initdb(new_inst, private.datadir, options, os_user=user, host=host)
        services.start_private(private, host, sock)
        out: dict[tuple[str, str], str | None] = {}
        try:
            with connect(private) as conn:
                fetch_named(conn, "collation-probe-function")
                for provider, locale in sorted(keys):
                    try:
                        out[(provider, locale)] = scalar_named(
                            conn, "collation-probe", {"provider": provider, "locale": locale}
                        )
                    except psycopg2.Error as exc:
                        out[(provider, locale)] = "!" + str(exc).strip().splitlines()[0]
        finally:
            service_for(private, host).stop("fast")
        return out
    finally:
        host.run(["rm", "-rf", "--", work, sock], user=user, check=False)


def compare(
    old: Cluster, dbs: list[str], new_inst: Installation, options: InitdbOptions, work_dir: str, host: Host,
    warnings: list[str], tag: str = "plan",
) -> dict[str, Any]:  # fmt: skip
    """The plan's collation check: ``{"changed": [...], "equal": [...], "reindex": {database: [index, …]}}``; each
    change (and a provider the new build lacks) also goes into ``warnings``, with the indexes to REINDEX."""
    found = uses(old, dbs)
    versions = probe(old, new_inst, options, work_dir, {u.key for u in found}, host, tag)
    changed: list[dict[str, Any]] = []
    equal: list[dict[str, Any]] = []
    reindex: dict[str, list[str]] = defaultdict(list)
    for u in found:
        new = versions.get(u.key)
        entry = {"database": u.database, "collation": u.collation, "provider": u.provider, "locale": u.locale,
                 "old_version": u.recorded, "new_version": new, "indexes": list(u.indexes)}  # fmt: skip
        if new is not None and new.startswith("!"):
            warnings.append(f"{u.database}: collation {u.collation} ({u.provider} {u.locale}) cannot be made by "
                            f"PostgreSQL {new_inst.version}: {new[1:]}")  # fmt: skip
            changed.append(entry)
        elif (u.recorded or None) != (new or None):
            changed.append(entry)
            reindex[u.database] += [i for i in u.indexes if i not in reindex[u.database]]
            which = ", ".join(u.indexes) or "none"
            warnings.append(
                f"{u.database}: collation {u.collation} ({u.provider} {u.locale}) is version {u.recorded} in the old "
                f"cluster, {new} in PostgreSQL {new_inst.version}: after the upgrade REINDEX the indexes that sort by "
                f"it ({which}), then "
                + (
                    f"ALTER DATABASE {u.database} REFRESH COLLATION VERSION"
                    if u.collation == "default"
                    else f"ALTER COLLATION {u.collation} REFRESH VERSION"
                )
            )
        else:
            equal.append(entry)
    summary = (
        "no collation versions to compare (C/POSIX only)"
        if not found
        else f"{len(equal)} of {len(found)} collation uses keep their version in PostgreSQL {new_inst.version}"
        + ("" if changed else ": no index needs rebuilding")
    )
    log.info("collations: %s", summary)
    return {"summary": summary, "changed": changed, "equal": equal, "reindex": dict(reindex)}


def database_versions(cluster: Cluster, dbs: list[str]) -> list[dict[str, Any]]:
    """After the upgrade, on the new cluster: each database whose recorded default-collation version differs from
    the one the new installation gives it (pg_upgrade carries the old ``datcollversion`` over; PostgreSQL warns at
    every connection until ``ALTER DATABASE … REFRESH COLLATION VERSION``, which is right only after the REINDEX
    of :func:`compare`'s indexes). Empty: nothing to refresh."""
    with connect(cluster) as conn:
        rows = fetch_named(conn, "database-collations")
    return [
        {"database": r["datname"], "recorded": r["recorded_version"], "actual": r["actual_version"]}
        for r in rows
        if r["datname"] in dbs and (r["recorded_version"] or None) != (r["actual_version"] or None)
    ]


def rebuild(cluster: Cluster, planned: dict[str, Any], dbs: list[str]) -> dict[str, Any]:
    """After the upgrade (``planned``: the plan's :func:`compare`): the indexes on each changed collation rebuilt
    with ``REINDEX INDEX CONCURRENTLY`` (clients keep reading and writing), then that collation's recorded version
    refreshed — in this order: a refresh alone would silence the warning over indexes that no longer sort as the
    library does. A collation the new build cannot make is left alone. Returns what was done and the databases
    whose recorded version still differs (logged)."""
    rebuilt: list[str] = []
    refreshed: list[str] = []
    for entry in planned.get("changed", []):
        if (entry["new_version"] or "").startswith("!"):
            continue
        db = entry["database"]
        with connect(cluster, db) as conn, conn.cursor() as cur:
            for index in entry["indexes"]:
                if f"{db}: {index}" in rebuilt:
                    continue
                # the name as format('%I.%I') quoted it from the catalog (index-collations)
                cur.execute(psql.SQL("REINDEX INDEX CONCURRENTLY {}").format(psql.SQL(index)))
                rebuilt.append(f"{db}: {index}")
            if entry["collation"] == "default":
                cur.execute(psql.SQL("ALTER DATABASE {} REFRESH COLLATION VERSION").format(psql.Identifier(db)))
            else:
                cur.execute(psql.SQL("ALTER COLLATION {} REFRESH VERSION").format(psql.SQL(entry["collation"])))
            refreshed.append(f"{db}: {entry['collation']}")
    left = database_versions(cluster, dbs)
    for r in left:
        log.warning("%s: collation version %s recorded, %s in effect", r["database"], r["recorded"], r["actual"])
    return {"rebuilt": rebuilt, "refreshed": refreshed, "still_differ": left}
