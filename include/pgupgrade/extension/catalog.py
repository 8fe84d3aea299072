"""What the catalogs of one database say about the extension, read on an open connection (queries in
``include/sql/``): its member and metadata tables, each entity's (TVIEW's) table, columns, update paths and
available versions, the profile's triggers (and setting their modes), write counters, and the compatibility scan
of objects that use functions the target removes or changes."""

from __future__ import annotations

import re
import time
from typing import Any

from pgupgrade.errors import CheckFailed
from pgupgrade.extension.fields import between
from pgupgrade.profiles import Conn, ExtensionProfile
from pgupgrade.sql import fetch, fetch_named, load, psql, scalar, scalar_named

LOCK_TIMEOUT = "30s"  # DDL on busy tables (DISABLE TRIGGER, ALTER EXTENSION) gives up instead of queueing forever
SCAN_REPEAT = 3
SNAPSHOT_TABLE = ("pgupgrade", "extension_snapshot")


def _present(conn: Conn, name: str, params: dict[str, Any]) -> bool:
    """The ``present`` answer of a named EXISTS query."""
    return bool(fetch_named(conn, name, params)[0]["present"])


def has_function(conn: Conn, extname: str, name: str) -> bool:
    """Whether the extension owns a function of this name (the installed version has it)."""
    return _present(conn, "extension-has-function", {"extname": extname, "function": name})


def member_tables(conn: Conn, extname: str | None = None, relname: str | None = None) -> list[tuple[str, str]]:
    """(schema, name) of the tables an extension owns (every extension's with extname None)."""
    rows = fetch_named(conn, "extension-member-tables", {"extname": extname, "relname": relname})
    return [(str(r["schema"]), str(r["name"])) for r in rows]


def metadata_table(conn: Conn, profile: ExtensionProfile) -> tuple[str, str]:
    """(schema, name) of the extension's metadata table: its member table of the profile's name."""
    rows = member_tables(conn, profile.extname, profile.metadata_table)
    if not rows:
        raise CheckFailed(f"extension {profile.extname} has no table {profile.metadata_table}")
    return rows[0]


def _relation(conn: Conn, name: str, *, quote: bool) -> str | None:
    rows = fetch_named(conn, "relation-by-name", {"name": name, "quote": quote})
    return f"{rows[0]['schema']}.{rows[0]['name']}" if rows else None


def table_columns(conn: Conn, schema: str, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns, in order."""
    return [
        (str(r["name"]), str(r["type"])) for r in fetch_named(conn, "table-columns", {"schema": schema, "table": table})
    ]


def update_path_exists(conn: Conn, extname: str, current: str, target: str) -> bool:
    return _present(conn, "extension-update-path-exists", {"extname": extname, "source": current, "target": target})


def default_version(conn: Conn, extname: str) -> str | None:
    """The version the control file installs by default (a dump's CREATE EXTENSION creates this one)."""
    v = scalar_named(conn, "extension-default-version", {"extname": extname})
    return str(v) if v is not None else None


def version_available(conn: Conn, extname: str, version: str) -> bool:
    return _present(conn, "extension-version-available", {"extname": extname, "version": version})


def entity_tables(conn: Conn, profile: ExtensionProfile) -> dict[str, dict[str, Any]]:
    """Each entity's table (resolved like the extension does, through the search path), its columns and row
    count, and the backing table named in the metadata ("schema.name", None when it is missing)."""
    out: dict[str, dict[str, Any]] = {}
    q = psql.SQL("SELECT {e}::text, {b}::text FROM {t} ORDER BY 1").format(
        e=psql.Identifier(profile.entity_column),
        b=psql.Identifier(profile.backing_column),
        t=psql.Identifier(profile.metadata_table),
    )
    for entity, backing in fetch(conn, q):
        table = _relation(conn, entity, quote=True)
        info: dict[str, Any] = {
            "backing": backing,
            "backing_table": _relation(conn, backing, quote=False) if backing else None,
            "table": table,
        }
        if table:
            schema, name = table.split(".", 1)
            info["columns"] = [{"name": c, "type": t} for c, t in table_columns(conn, schema, name)]
            info["rows"] = int(scalar(conn, psql.SQL("SELECT count(*) FROM {}").format(psql.Identifier(schema, name))))
        out[str(entity)] = info
    return out


def scan_times(conn: Conn, tables: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Best of a few full scans (count(*)) of each entity's table, in seconds."""
    out: dict[str, float] = {}
    for entity, info in tables.items():
        if not info.get("table"):
            continue
        schema, name = info["table"].split(".", 1)
        q = psql.SQL("SELECT count(*) FROM {}").format(psql.Identifier(schema, name))
        best = float("inf")
        for _ in range(SCAN_REPEAT):
            started = time.perf_counter()
            scalar(conn, q)
            best = min(best, time.perf_counter() - started)
        out[entity] = best
    return out


def table_writes(conn: Conn) -> dict[str, int]:
    """Tuples written per table (inserts + updates + deletes): an increase after the backup means something may
    have changed that a restore would lose."""
    return {f"{r['schema']}.{r['name']}": int(r["writes"]) for r in fetch_named(conn, "table-writes")}


def derived_tables(conn: Conn, profile: ExtensionProfile) -> list[str]:
    """Tables whose contents the extension or the run itself rewrites: the member tables of every extension and
    the entity (TVIEW) tables. They are not compared when judging whether clients wrote after the backup."""
    members = [f"{s}.{t}" for s, t in member_tables(conn)]
    tviews = [i["table"] for i in entity_tables(conn, profile).values() if i.get("table")]
    return sorted(set(members + tviews))


# -- the profile's triggers ---------------------------------------------------------------------------------


def prefixed_triggers(conn: Conn, prefix: str) -> list[dict[str, Any]]:
    """The profile's triggers with their pg_trigger.tgenabled (O, D, R, A); the LIKE in the SQL treats _ as a
    wildcard, so the prefix is checked exactly here."""
    return [
        t
        for t in fetch_named(conn, "triggers-with-prefix", {"prefix": prefix})
        if str(t["trigger_name"]).startswith(prefix)
    ]


_MODE_SQL = {"O": "ENABLE TRIGGER", "D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


def set_trigger_modes(conn: Conn, triggers: list[dict[str, Any]]) -> list[str]:
    """In the connection's (open) transaction: each trigger to its recorded mode; returns what changed."""
    changed = []
    with conn.cursor() as cur:
        cur.execute(load("set-local-lock-timeout"), {"timeout": LOCK_TIMEOUT})
        for t in triggers:
            cur.execute(
                psql.SQL("ALTER TABLE {} {} {}").format(
                    psql.Identifier(t["schema"], t["table_name"]),
                    psql.SQL(_MODE_SQL[t["enabled"]]),
                    psql.Identifier(t["trigger_name"]),
                )
            )
            changed.append(f"{t['schema']}.{t['table_name']}.{t['trigger_name']} → {t['enabled']}")
    return changed


def trigger_differences(conn: Conn, prefix: str, recorded: list[dict[str, Any]]) -> list[str]:
    now = {(t["schema"], t["table_name"], t["trigger_name"]): t["enabled"] for t in prefixed_triggers(conn, prefix)}
    diffs = []
    for t in recorded:
        key = (t["schema"], t["table_name"], t["trigger_name"])
        if key not in now:
            diffs.append(f"trigger {'.'.join(key)} is missing")
        elif now[key] != t["enabled"]:
            diffs.append(f"trigger {'.'.join(key)} is {now[key]}, was {t['enabled']} before the run")
    return diffs


# -- compatibility ------------------------------------------------------------------------------------------


def compat_scan(conn: Conn, db: str, profile: ExtensionProfile, current: str, target: str) -> list[dict[str, Any]]:
    """Views, functions, procedures (and other objects) that use a function the target removes or changes.

    ``bound``: a pg_depend entry (views, SQL-standard bodies ...): the update script cannot drop or re-create
    the function while it exists, so it blocks the update. ``text``: the name appears in a late-bound body
    (plpgsql, plain sql): the object fails when it runs after the update."""
    removed = between(profile.removed_functions, current, target)
    changed = between(profile.changed_functions, current, target)
    names = removed + [c for c in changed if c not in removed]
    if not names:
        return []
    kind_of = {n: ("removed" if n in removed else "changed") for n in names}
    found: list[dict[str, Any]] = []
    for r in fetch_named(conn, "extension-dependents", {"extname": profile.extname, "functions": names}):
        found.append(
            {
                "database": db,
                "object_type": r["object_type"],
                "object": r["object"],
                "function": r["signature"],
                "kind": kind_of[r["function"]],
                "how": "bound",
                "blocks_update": True,
            }
        )
    for r in fetch_named(conn, "extension-function-bodies", {"names": names}):
        for n in names:
            if re.search(rf"(?<![\w$]){re.escape(n)}(?![\w$])", r["body"] or ""):
                found.append(
                    {
                        "database": db,
                        "object_type": r["object_type"],
                        "object": r["object"],
                        "function": n,
                        "kind": kind_of[n],
                        "how": "text",
                        "blocks_update": False,
                    }
                )
    return found


def describe_finding(f: dict[str, Any]) -> str:
    what = "is removed in the target" if f["kind"] == "removed" else "changes its signature in the target"
    effect = (
        "blocks the update (the update script cannot drop or re-create the function while it depends on it)"
        if f["blocks_update"]
        else "will fail or behave differently when it runs after the update"
    )
    return f"{f['database']}: {f['object_type']} {f['object']} uses {f['function']}, which {what}; it {effect}"
