"""SQL files from ``include/sql/`` loaded by name; parameters bound by the driver; identifiers quoted."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgupgrade.cluster import Cluster


class _LazyModule:
    """A module imported on first attribute access. The DAG files import this library when Airflow parses them,
    and loading psycopg2's C extension (with its bundled libpq and OpenSSL) costs up to 0.25 s per parsed file;
    no DAG needs the driver before a task runs."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(import_module(self._name), attr)


if TYPE_CHECKING:
    import psycopg2
    import psycopg2.extensions
    from psycopg2 import sql as psql
else:
    psycopg2 = _LazyModule("psycopg2")
    psql = _LazyModule("psycopg2.sql")

__all__ = [
    "SQL_DIR",
    "Params",
    "connect",
    "fetch",
    "fetch_named",
    "ident",
    "load",
    "psql",
    "psycopg2",
    "scalar",
    "scalar_named",
]

SQL_DIR = Path(os.environ.get("PGUPGRADE_SQL_DIR", Path(__file__).resolve().parents[1] / "sql"))
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

Params = Sequence[Any] | Mapping[str, Any] | None


@cache
def load(name: str) -> str:
    """The text of ``include/sql/<name>.sql``; names are plain words, never paths."""
    if not _NAME_RE.match(name):
        raise ValueError(f"not a SQL file name: {name!r}")
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        known = sorted(p.stem for p in SQL_DIR.glob("*.sql"))
        raise FileNotFoundError(f"no SQL file {name!r} in {SQL_DIR}; known: {', '.join(known)}")
    return path.read_text()


def ident(*parts: str) -> psql.Composable:
    """A (schema-)qualified identifier, quoted by psycopg2."""
    return psql.Identifier(*parts)


@contextmanager
def connect(
    cluster: Cluster, dbname: str | None = None, *, autocommit: bool = True, statement_timeout_ms: int = 0
) -> Iterator[psycopg2.extensions.connection]:
    options = f"-c statement_timeout={int(statement_timeout_ms)}" if statement_timeout_ms else None
    conn = (
        psycopg2.connect(**cluster.conninfo(dbname), options=options)
        if options
        else psycopg2.connect(**cluster.conninfo(dbname))
    )
    conn.autocommit = autocommit
    try:
        yield conn
    finally:
        conn.close()


def fetch(
    conn: psycopg2.extensions.connection, query: str | psql.Composable, params: Params = None
) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def fetch_named(conn: psycopg2.extensions.connection, name: str, params: Params = None) -> list[dict[str, Any]]:
    """Runs a named SQL file and returns rows as dicts."""
    with conn.cursor() as cur:
        cur.execute(load(name), params)
        if not cur.description:
            return []
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def scalar(conn: psycopg2.extensions.connection, query: str | psql.Composable, params: Params = None) -> Any:
    rows = fetch(conn, query, params)
    return rows[0][0] if rows else None


def scalar_named(conn: psycopg2.extensions.connection, name: str, params: Params = None) -> Any:
    """Runs a named SQL file and returns the first column of its first row (None without rows)."""
    return scalar(conn, load(name), params)
