"""Run parameters: declared once, used for Airflow's trigger form and for the validation every DAG runs
first (before any side effect). Errors name the field."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgupgrade.errors import ConfigError

_CONN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_VERSION_RE = re.compile(r"^\d{1,2}(\.\d{1,3}){0,2}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
MAX_LEN = 4096


@dataclass(frozen=True, kw_only=True)
class Field:
    """One run parameter: its trigger-form entry and its validation (built by keyword)."""

    name: str
    type: str  # "string" | "integer" | "boolean" | "array"
    default: Any
    title: str
    description: str
    section: str = "Run"
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    kind: str | None = None  # "abs_path" | "conn_id" | "version" | "identifier" | "timestamp"


def check_abs_path(name: str, value: str) -> str:
    if "\x00" in value or len(value) > MAX_LEN:
        raise ConfigError(name, "must not contain NUL and must be shorter than 4096 characters")
    if not os.path.isabs(value):
        raise ConfigError(name, f"must be an absolute path, got {value!r}")
    if ".." in Path(value).parts:
        raise ConfigError(name, f"must not contain '..', got {value!r}")
    if any(ch in value for ch in "\n\r'\"`$;|&<>\\*?"):
        raise ConfigError(name, f"contains characters not allowed in a path here: {value!r}")
    return os.path.normpath(value)


def _check_one(f: Field, value: Any) -> Any:
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise ConfigError(f.name, f"must be true or false, got {value!r}")
        return value
    if f.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f.name, f"must be an integer, got {value!r}")
        if f.minimum is not None and value < f.minimum:
            raise ConfigError(f.name, f"must be at least {f.minimum}, got {value}")
        if f.maximum is not None and value > f.maximum:
            raise ConfigError(f.name, f"must be at most {f.maximum}, got {value}")
        return value
    if f.type == "array":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f.name, f"must be a list of names, got {value!r}")
        for v in value:
            if not _IDENT_RE.match(v) and not _CONN_ID_RE.match(v):
                raise ConfigError(f.name, f"{v!r} is not a valid name")
        return list(value)
    if value is None and f.default == "":
        return ""  # an optional text field left empty (the trigger form sends null)
    if not isinstance(value, str):
        raise ConfigError(f.name, f"must be a string, got {type(value).__name__}")
    if "\x00" in value or len(value) > MAX_LEN:
        raise ConfigError(f.name, "must not contain NUL and must be shorter than 4096 characters")
    if f.enum is not None and value not in f.enum:
        raise ConfigError(f.name, f"must be one of {', '.join(f.enum)}; got {value!r}")
    if value == "" and f.default == "":
        return value
    if f.kind == "abs_path":
        return check_abs_path(f.name, value)
    if f.kind == "conn_id" and not _CONN_ID_RE.match(value):
        raise ConfigError(f.name, f"is not a valid connection id: {value!r}")
    if f.kind == "version" and not _VERSION_RE.match(value):
        raise ConfigError(f.name, f"is not a version like '15.20' or '0.2.0': {value!r}")
    if f.kind == "identifier" and not _IDENT_RE.match(value):
        raise ConfigError(f.name, f"is not a plain SQL identifier: {value!r}")
    if f.kind == "timestamp":
        import datetime as dt

        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f.name, f"is not an ISO timestamp like 2026-11-29T04:00:00+01:00: {value!r}") from None
        if parsed.tzinfo is None:
            raise ConfigError(f.name, f"needs a time zone (e.g. +01:00 or Z): {value!r}")
    return value


def validate(
    fields: list[Field], conf: Mapping[str, Any], *, allow_extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Checks a trigger conf against the declared fields; returns every field's value (defaults filled in)."""
    known = {f.name for f in fields}
    unknown = sorted(set(conf) - known - allow_extra)
    if unknown:
        raise ConfigError(unknown[0], f"unknown parameter; known: {', '.join(sorted(known))}")
    return {f.name: _check_one(f, conf.get(f.name, f.default)) for f in fields}


COMMON = [
    Field(
        name="postgres_conn_id",
        type="string",
        default="pg_upgrade_target",
        title="Cluster connection",
        description="Airflow postgres connection of the cluster; its extra JSON carries pg_bindir, pg_datadir, "
        "os_user, "
        "service and optionally pg_confdir and ssh_conn_id.",
        section="Cluster",
        kind="conn_id",
    ),
    Field(
        name="dry_run",
        type="boolean",
        default=False,
        title="Dry run",
        description="Plan only: validate, check and print the plan; change nothing.",
        section="Run",
    ),
    Field(
        name="backup_dir",
        type="string",
        default="",
        title="Backup directory",
        description="Absolute path for this run's backup (empty: under the state directory). Must be new or empty.",
        section="Backup",
        kind="abs_path",
    ),
    Field(
        name="jobs",
        type="integer",
        default=2,
        title="Parallel jobs",
        description="Parallelism of pg_dump, pg_restore, pg_upgrade and vacuumdb.",
        section="Run",
        minimum=1,
        maximum=64,
    ),
    Field(
        name="terminate_after_s",
        type="integer",
        default=-1,
        title="Terminate clients after (s)",
        description="After blocking logins, terminate remaining client sessions after this many seconds (-1: never; "
        "the "
        "run waits for them to leave).",
        section="Outage",
        minimum=-1,
        maximum=86400,
    ),
    Field(
        name="connection_wait_timeout_s",
        type="integer",
        default=600,
        title="Wait for clients (s)",
        description="How long the sensor waits for client sessions to end before the run fails.",
        section="Outage",
        minimum=1,
        maximum=86400,
    ),
    Field(
        name="outage_slot_wait_s",
        type="integer",
        default=3600,
        title="Wait for an outage slot (s)",
        description="When the admin bounds concurrent outages (Variable pgupgrade_max_concurrent_outages), how long "
        "this run waits for a slot, with its clients still served, before it fails.",
        section="Outage",
        minimum=1,
        maximum=7 * 86400,
    ),
    Field(
        name="queue_wait_timeout_s",
        type="integer",
        default=600,
        title="Wait for empty queue (s)",
        description="How long the sensor waits for the extension's queue to drain.",
        section="Outage",
        minimum=1,
        maximum=86400,
    ),
    Field(
        name="window_end",
        type="string",
        default="",
        title="Window ends at",
        description="ISO timestamp (with time zone) by which the outage must be over; the run refuses to start the "
        "outage "
        "when the estimate does not fit. Empty: no limit.",
        section="Outage",
        kind="timestamp",
    ),
    Field(
        name="after_open_failure",
        type="string",
        default="alert",
        title="A failure after opening",
        description="What a failure after the cluster opened to clients does (analyze, app health, performance): "
        "'alert' keeps the validated new version serving and alerts loudly (the rollback DAG stays available by "
        "hand); 'rollback' starts the rollback, which keeps clients out while it compares and goes back.",
        section="Outage",
        enum=("alert", "rollback"),
    ),
    Field(
        name="verify_content",
        type="boolean",
        default=False,
        title="Verify content checksums",
        description="Also compare an md5 of every table's rows before and after (reads all data inside the outage).",
        section="Validation",
    ),
]

# the runbooks that stop the primary (major, minor): what they check of its standbys (pgupgrade.topology)
TOPOLOGY = [
    Field(
        name="max_standby_lag_mb",
        type="integer",
        default=64,
        title="Standby lag limit (MB)",
        description="The plan refuses when a standby listed in the connection's extra 'standbys' replays more than "
        "this many MB of WAL behind the primary.",
        section="Topology",
        minimum=0,
        maximum=1_000_000,
    ),
]
