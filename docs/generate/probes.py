"""Probes run against the scratch PostgreSQL, whose results the compatibility pages show: calls of every form on
every version, objects of yours next to ALTER EXTENSION … UPDATE, DROP EXTENSION … CASCADE, dumps restored. Every
probe is rolled back or runs in a database that is thrown away. The statements below are what the pages show;
the catalogue queries are named files in include/sql/."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

EXTNAME = "pg_tviews"
TRIGGER_PREFIX = f"{EXTNAME}_"  # the change triggers the extension creates
DROP_CASCADE_RELATIONS = ["pg_tviews_metadata", "pg_tviews_queue", "tv_totals", "orders"]

PROBE_SETUP = [
    "CREATE TABLE orders (id integer PRIMARY KEY, amount numeric NOT NULL)",
    "INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g",
    "SELECT pg_tviews_create('tv_totals', 'orders', 'SELECT count(*) AS n, sum(amount) AS total FROM orders')",
]
CALLS = [
    "SELECT pg_tviews_version()",
    "SELECT pg_tviews_refresh('tv_totals', true)",
    "SELECT pg_tviews_refresh('tv_totals', force => true)",
    "SELECT pg_tviews_refresh('tv_totals')",
    "SELECT pg_tviews_refresh(name => 'tv_totals', force => true)",
    "SELECT pg_tviews_refresh(entity_name => 'tv_totals', force => true)",
    "SELECT pg_tviews_refresh_async('tv_totals')",
    "SELECT count(*) FROM pg_tviews_get_queue()",
    "SELECT pg_tviews_drain_queue()",
    "SELECT count(*) FROM pg_tviews_stats()",
    "SELECT count(*) FROM pg_tviews_validate()",
    "SELECT entity_name, backing_table_name, view_definition, last_refreshed, last_error FROM pg_tviews_metadata",
    "SELECT internal_version FROM pg_tviews_metadata",
    "SELECT stats_last_computed, query_plan, source_hash FROM pg_tviews_metadata",
    "SET LOCAL pg_tviews.enable_stats = off; SELECT pg_tviews_refresh('tv_totals', true)",
]


@dataclasses.dataclass(frozen=True)
class Scenario:
    what: str
    setup: tuple[str, ...]
    afterwards: str | None = None


SCENARIOS = [
    Scenario("nothing of yours depends on the extension", ()),
    Scenario(
        "a view that reads `internal_version`",
        ("CREATE VIEW app_meta AS SELECT entity_name, internal_version FROM pg_tviews_metadata",),
        "SELECT count(*) FROM app_meta",
    ),
    Scenario(
        "a view `SELECT * FROM pg_tviews_metadata` (the `*` is expanded when the view is created)",
        ("CREATE VIEW app_meta_all AS SELECT * FROM pg_tviews_metadata",),
        "SELECT count(*) FROM app_meta_all",
    ),
    Scenario(
        "a view that only calls `pg_tviews_get_queue()`",
        ("CREATE VIEW app_queue AS SELECT entity_name, op FROM pg_tviews_get_queue()",),
        "SELECT count(*) FROM app_queue",
    ),
    Scenario(
        "a SQL-standard function (`BEGIN ATOMIC`) calling `pg_tviews_refresh('…', true)`",
        (
            "CREATE FUNCTION app_refresh_bound() RETURNS void LANGUAGE sql "
            "BEGIN ATOMIC SELECT pg_tviews_refresh('tv_totals', true); END",
        ),
        "SELECT app_refresh_bound()",
    ),
    Scenario(
        "a PL/pgSQL function calling `pg_tviews_refresh_async('…')`",
        (
            "CREATE FUNCTION app_refresh_later() RETURNS void LANGUAGE plpgsql "
            "AS $$BEGIN PERFORM pg_tviews_refresh_async('tv_totals'); END$$",
        ),
        "SELECT app_refresh_later()",
    ),
    Scenario(
        "a PL/pgSQL function calling `pg_tviews_refresh(name => '…', force => true)`",
        (
            "CREATE FUNCTION app_refresh_named() RETURNS void LANGUAGE plpgsql "
            "AS $$BEGIN PERFORM pg_tviews_refresh(name => 'tv_totals', force => true); END$$",
        ),
        "SELECT app_refresh_named()",
    ),
    Scenario(
        "a PL/pgSQL function calling `pg_tviews_refresh('…', true)` (positional)",
        (
            "CREATE FUNCTION app_refresh_positional() RETURNS void LANGUAGE plpgsql "
            "AS $$BEGIN PERFORM pg_tviews_refresh('tv_totals', true); END$$",
        ),
        "SELECT app_refresh_positional()",
    ),
]


def parallel(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """Runs fn over items in threads (the work is in the server and in subprocesses), results in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(fn, items))


def run_probe(conn: Any, statement: str) -> tuple[str, str]:
    """("ok", first value) or ("error", primary message); always rolled back."""
    import psycopg2

    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            row = cur.fetchone() if cur.description else None
        value = row[0] if row and len(row) == 1 else None
        return "ok", "" if value is None or isinstance(value, memoryview) else str(value)
    except psycopg2.Error as exc:
        return "error", exc.diag.message_primary or str(exc).splitlines()[0]
    finally:
        conn.rollback()
        conn.autocommit = True


def run_scenario(conn: Any, sc: Scenario, current: str, target: str, scan: Callable[..., Any] | None) -> dict[str, Any]:
    """The scenario's objects, the plan's compatibility scan, ALTER EXTENSION UPDATE, a call afterwards: all in
    one transaction that is rolled back."""
    import psycopg2

    from . import library

    out: dict[str, Any] = {"what": sc.what, "setup": list(sc.setup)}
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            for stmt in sc.setup:
                cur.execute(stmt)
            cur.execute(library.load("extension-view-columns"), {"extname": EXTNAME})
            used: dict[str, list[str]] = {}
            for v, t, c in cur.fetchall():
                used.setdefault(f"{v}: {t}", []).append(c)
            out["view_columns"] = [f"{k}.({', '.join(sorted(cols))})" for k, cols in sorted(used.items())]
            if scan is not None:
                findings = scan(conn, "db", current, target)
                out["scan"] = sorted({f"{f['how']}: {f['object']} uses {f['function']}" for f in findings})
                out["scan_blocks"] = any(f["blocks_update"] for f in findings)
            cur.execute("SAVEPOINT upd")
            try:
                cur.execute(f"ALTER EXTENSION {EXTNAME} UPDATE TO %s", (target,))
                out["update"] = ("ok", "")
            except psycopg2.Error as exc:
                out["update"] = ("error", exc.diag.message_primary or str(exc))
                cur.execute("ROLLBACK TO SAVEPOINT upd")
            if sc.afterwards and out["update"][0] == "ok":
                cur.execute("SAVEPOINT call")
                try:
                    cur.execute(sc.afterwards)
                    out["afterwards"] = ("ok", "")
                except psycopg2.Error as exc:
                    out["afterwards"] = ("error", exc.diag.message_primary or str(exc))
                    cur.execute("ROLLBACK TO SAVEPOINT call")
            out["afterwards_sql"] = sc.afterwards
    finally:
        conn.rollback()
        conn.autocommit = True
    return out


def drop_cascade_probe(conn: Any) -> dict[str, Any]:
    """DROP EXTENSION … CASCADE on a database with a TVIEW, in a transaction that is rolled back."""
    from . import library

    conn.notices.clear()
    conn.autocommit = False
    try:
        library.fetch(conn, "SET LOCAL client_min_messages = notice")
        before = library.fetch_named(conn, "triggers-with-prefix", {"prefix": TRIGGER_PREFIX})
        library.fetch(conn, f"DROP EXTENSION {EXTNAME} CASCADE")
        after = library.fetch_named(conn, "triggers-with-prefix", {"prefix": TRIGGER_PREFIX})
        tables = library.fetch(conn, library.load("relations-present"), {"names": DROP_CASCADE_RELATIONS})
        return {
            "notices": [n.strip() for n in conn.notices],
            "triggers_before": len(before),
            "triggers_after": len(after),
            "relations": {name: present for name, present in tables},
        }
    finally:
        conn.rollback()
        conn.autocommit = True


def dump_all(cluster: Any, inst: Any, dbs: dict[str, str], host: Any, os_user: str) -> dict[str, str]:
    """``pg_dump -Fc`` of each version's database; returns version → dump file."""
    workdir = str(Path(cluster.datadir).parent)
    dumps = {v: f"{workdir}/{db}.dump" for v, db in dbs.items()}

    def dump(version: str) -> None:
        argv = [inst.bin("pg_dump"), "-Fc", "-f", dumps[version]]
        host.run(argv, user=os_user, env=cluster.libpq_env(dbs[version]))

    parallel(dump, list(dbs))
    return dumps


def restore_probes(
    cluster: Any,
    inst: Any,
    dumps: dict[str, str],
    restore_dbs: dict[tuple[str, str | None], str],
    versions: list[str],
    host: Any,
    os_user: str,
) -> list[dict[str, str]]:
    """A dump of each version restored into an empty database (what a rollback or a restore does), and the dumps of
    versions other than ``default_version`` into a database where their version was created first."""
    from . import library

    def restore(case: tuple[str, str | None]) -> dict[str, str]:
        version, precreate = case
        target = restore_dbs[case]
        if precreate:
            with library.connect(cluster, target) as conn:
                library.fetch(conn, f"CREATE EXTENSION {EXTNAME} VERSION %s", (precreate,))
        res = host.run(
            [inst.bin("pg_restore"), "--exit-on-error", "-d", target, dumps[version]],
            user=os_user,
            env=cluster.libpq_env(target),
            check=False,
        )
        restored = ""
        if res.exit_code == 0:
            with library.connect(cluster, target) as conn:
                rows = library.fetch(conn, library.load("extension-version"), {"extname": EXTNAME})
                restored = str(rows[0][0])
        return {
            "dump_version": version,
            "precreated": precreate or "",
            "result": "ok" if res.exit_code == 0 else "error",
            "detail": restored if res.exit_code == 0 else _error_line(res.stderr),
        }

    return parallel(restore, sorted(restore_dbs, key=lambda c: (versions.index(c[0]), c[1] or "")))


def _error_line(text: str) -> str:
    for line in text.splitlines():
        m = re.search(r"ERROR:\s+(.*)", line)
        if m:
            return m.group(1).strip()
    return text.strip().splitlines()[-1] if text.strip() else ""
