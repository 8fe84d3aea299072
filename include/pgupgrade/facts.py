"""Snapshots of what a cluster holds, and their comparison: the proof that nothing was lost."""

from __future__ import annotations

from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, fetch_named, psql, scalar, scalar_named

Facts = dict[str, Any]


def user_databases(cluster: Cluster) -> list[str]:
    with connect(cluster) as conn:
        return [r["datname"] for r in fetch_named(conn, "databases") if r["datallowconn"]]


def snapshot(cluster: Cluster, *, content: bool = False) -> Facts:
    """Versions, databases, roles, per-table row counts and sizes, extensions, WAL position.

    ``content`` adds an md5 of every table's rows: exact, but it reads all data (count it in the outage)."""
    with connect(cluster) as conn:
        dbs = fetch_named(conn, "databases")
        facts: Facts = {
            "server_version_num": int(scalar_named(conn, "server-version-num")),
            "server_version": scalar_named(conn, "server-version"),
            "wal_lsn": fetch_named(conn, "wal-position")[0]["lsn"],
            "roles": {r["rolname"]: {"super": r["rolsuper"]} for r in fetch_named(conn, "roles")},
            "databases": {},
        }
    for db in dbs:
        if not db["datallowconn"]:
            continue
        name = db["datname"]
        with connect(cluster, name) as conn:
            tables: dict[str, Any] = {}
            for t in fetch_named(conn, "user-tables"):
                rel = psql.Identifier(t["schema"], t["name"])
                entry: dict[str, Any] = {
                    "rows": scalar(conn, psql.SQL("SELECT count(*) FROM {}").format(rel)),
                    "size_bytes": t["size_bytes"],
                }
                if t["unlogged"]:
                    entry["unlogged"] = True
                if content:
                    entry["md5"] = scalar(
                        conn,
                        psql.SQL(
                            "SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM {} x"
                        ).format(rel),
                    )
                tables[f"{t['schema']}.{t['name']}"] = entry
            extensions = {r["extname"]: r["extversion"] for r in fetch_named(conn, "extensions")}
            large_objects = fetch_named(conn, "large-objects", {"content": content})[0]  # pg_largeobject: a catalog
        facts["databases"][name] = {
            "size_bytes": db["size_bytes"],
            "tables": tables,
            "extensions": extensions,
            "large_objects": {k: v for k, v in large_objects.items() if v is not None},
        }
    return facts


def compare(
    before: Facts, after: Facts, *, same_extension_versions: bool = False, unlogged_emptied: bool = False
) -> list[str]:
    """Differences that mean data was lost or changed; sizes and WAL positions are not compared.
    ``unlogged_emptied``: the cluster was rebuilt from a base backup and WAL, which never hold an unlogged
    table's rows (PostgreSQL empties them after any recovery): an unlogged table found empty is no difference."""
    diffs: list[str] = []
    if set(before["roles"]) != set(after["roles"]):
        diffs.append(
            f"roles differ: missing {sorted(set(before['roles']) - set(after['roles']))}, "
            f"extra {sorted(set(after['roles']) - set(before['roles']))}"
        )
    b_dbs, a_dbs = before["databases"], after["databases"]
    if set(b_dbs) != set(a_dbs):
        diffs.append(f"databases differ: before {sorted(b_dbs)}, after {sorted(a_dbs)}")
    for name in sorted(set(b_dbs) & set(a_dbs)):
        bt, at = b_dbs[name]["tables"], a_dbs[name]["tables"]
        if set(bt) != set(at):
            diffs.append(
                f"{name}: tables differ: missing {sorted(set(bt) - set(at))}, extra {sorted(set(at) - set(bt))}"
            )
        for table in sorted(set(bt) & set(at)):
            if unlogged_emptied and bt[table].get("unlogged") and at[table]["rows"] == 0:
                continue
            if bt[table]["rows"] != at[table]["rows"]:
                diffs.append(f"{name}.{table}: {bt[table]['rows']} rows before, {at[table]['rows']} after")
            if "md5" in bt[table] and "md5" in at[table] and bt[table]["md5"] != at[table]["md5"]:
                diffs.append(f"{name}.{table}: content checksum differs")
        bl, al = b_dbs[name].get("large_objects"), a_dbs[name].get("large_objects")  # absent in older snapshots
        if bl is not None and al is not None and any(bl[k] != al[k] for k in set(bl) & set(al)):
            diffs.append(f"{name}: large objects differ: {bl} before, {al} after")
        be, ae = b_dbs[name]["extensions"], a_dbs[name]["extensions"]
        if set(be) != set(ae):
            diffs.append(f"{name}: extensions differ: before {sorted(be)}, after {sorted(ae)}")
        elif same_extension_versions and be != ae:
            diffs.append(f"{name}: extension versions differ: before {be}, after {ae}")
    return diffs


def table_count(facts: Facts) -> int:
    return sum(len(db["tables"]) for db in facts["databases"].values())


def data_bytes(facts: Facts) -> int:
    return sum(int(db["size_bytes"]) for db in facts["databases"].values())
