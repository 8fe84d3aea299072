"""Extension profiles: what the DAGs need to know about an extension (pg_tviews is the first profile).

Profiles live in ``include/config/extension_profiles.json`` (``PGUPGRADE_PROFILES`` overrides the path); every
name in them reaches SQL only through ``psycopg2.sql.Identifier``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pgupgrade.errors import ConfigError
from pgupgrade.sql import fetch, load, psql, scalar, scalar_named

PROFILES_FILE = Path(
    os.environ.get("PGUPGRADE_PROFILES", Path(__file__).resolve().parents[1] / "config" / "extension_profiles.json")
)

if TYPE_CHECKING:
    from psycopg2.extensions import connection

Conn: TypeAlias = "connection"


@dataclass(frozen=True)
class ExtensionProfile:
    extname: str
    version_function: str
    metadata_table: str
    entity_column: str
    backing_column: str
    error_column: str
    queue_function: str
    refresh_function: str
    trigger_prefix: str
    stats_function: str | None = None
    validate_function: str | None = None
    removed_functions: dict[str, list[str]] = field(default_factory=dict)
    changed_functions: dict[str, list[str]] = field(default_factory=dict)
    # Added for the extension-upgrade DAGs (pgupgrade.extension); all keyed by the version that brings the change,
    # except min_upgrade_from (keyed by the target's series, e.g. "0.2": the oldest version that may update to it).
    added_functions: dict[str, list[str]] = field(default_factory=dict)
    added_columns: dict[str, list[str]] = field(default_factory=dict)
    removed_columns: dict[str, list[str]] = field(default_factory=dict)
    min_upgrade_from: dict[str, str] = field(default_factory=dict)
    migration_sql: str | None = None  # include/sql file run after ALTER EXTENSION ... UPDATE, same transaction

    # -- catalog questions ---------------------------------------------------------------------------
    def installed_version(self, conn: Conn) -> str | None:
        v = scalar_named(conn, "extension-version", {"extname": self.extname})
        return str(v) if v is not None else None

    def _fn(self, name: str) -> psql.Composable:
        return psql.Identifier(name)

    def reported_version(self, conn: Conn) -> str:
        return str(scalar(conn, psql.SQL("SELECT {}()").format(self._fn(self.version_function))))

    def queue_size(self, conn: Conn) -> int:
        return int(scalar(conn, psql.SQL("SELECT count(*) FROM {}()").format(self._fn(self.queue_function))))

    def entities(self, conn: Conn) -> list[str]:
        q = psql.SQL("SELECT {} FROM {} ORDER BY 1").format(
            psql.Identifier(self.entity_column), psql.Identifier(self.metadata_table)
        )
        return [r[0] for r in fetch(conn, q)]

    def metadata_rows(self, conn: Conn) -> list[dict[str, Any]]:
        q = psql.SQL("SELECT to_jsonb(m) FROM {} m ORDER BY m.{}").format(
            psql.Identifier(self.metadata_table), psql.Identifier(self.entity_column)
        )
        return [r[0] for r in fetch(conn, q)]

    def problems(self, conn: Conn) -> list[str]:
        """Metadata rows with errors or without a backing table."""
        q = psql.SQL("SELECT {e}, {b}, {err} FROM {t} WHERE {b} IS NULL OR {err} IS NOT NULL ORDER BY 1").format(
            e=psql.Identifier(self.entity_column),
            b=psql.Identifier(self.backing_column),
            err=psql.Identifier(self.error_column),
            t=psql.Identifier(self.metadata_table),
        )
        return [f"{e}: backing={b!r} error={err!r}" for e, b, err in fetch(conn, q)]

    def refresh(self, conn: Conn, entity: str, force: bool = True) -> None:
        """Positional arguments: valid for 0.1's (name, force) and 0.2's (entity_name, force DEFAULT false)."""
        fetch(conn, psql.SQL("SELECT {}(%s, %s)").format(self._fn(self.refresh_function)), (entity, force))

    def trigger_fires(self, conn: Conn) -> list[str]:
        """For each TVIEW, a no-op update of one backing row must reach the queue. Runs inside a transaction
        that is rolled back: no data changes."""
        failures: list[str] = []
        q = psql.SQL("SELECT {}, {} FROM {} ORDER BY 1").format(
            psql.Identifier(self.entity_column),
            psql.Identifier(self.backing_column),
            psql.Identifier(self.metadata_table),
        )
        for entity, backing in fetch(conn, q):
            with conn.cursor() as cur:
                cur.execute(load("transaction-begin"))
                try:
                    before = self.queue_size(conn)
                    cur.execute(load("first-column"), {"relation": backing})
                    col = cur.fetchone()
                    cur.execute(load("regclass-oid"), {"relation": backing})
                    oid = cur.fetchone()
                    if not col or not oid:
                        failures.append(f"{entity}: backing table {backing} has no columns")
                        continue
                    cur.execute(load("relation-name-by-oid"), {"oid": oid[0]})
                    schema, rel = cur.fetchone() or ("", "")
                    cur.execute(
                        psql.SQL("UPDATE {t} SET {c} = {c} WHERE ctid = (SELECT ctid FROM {t} LIMIT 1)").format(
                            t=psql.Identifier(schema, rel), c=psql.Identifier(col[0])
                        )
                    )
                    if cur.rowcount and self.queue_size(conn) <= before:
                        failures.append(f"{entity}: a change to {backing} did not reach the queue")
                finally:
                    cur.execute(load("transaction-rollback"))
        return failures


def load_profiles(path: Path | None = None) -> dict[str, ExtensionProfile]:
    data = json.loads((path or PROFILES_FILE).read_text())
    return {name: ExtensionProfile(**spec) for name, spec in data.items()}


def get(name: str) -> ExtensionProfile:
    profiles = load_profiles()
    if name not in profiles:
        raise ConfigError("extension_profile", f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]
