"""Scheduled runs: which clusters a maintenance window's scheduled run acts on, and with which defaults.

``include/config/clusters.json`` (or the file named by ``$PGUPGRADE_CLUSTERS_FILE``) lists the clusters; an entry
is a connection id (checked daily by the preflight DAG only) or an object naming, per upgrade DAG, the conf of
the run that DAG's scheduled run starts for that cluster::

    {"clusters": [
        "pg_reporting",
        {"conn_id": "pg_main",
         "dags": {"pg15_to_pg16_upgrade": {"transfer_mode": "link", "backup_dir": "/backups/pg_main"}}}
    ]}

The scheduled run of a DAG (created when a window opens) reads this file when it runs — not at parse time — and
triggers one run per cluster that names the DAG, with run id ``window__<conn_id>__<logical date>`` (a second
dispatch of the same window finds the runs there and starts nothing twice) and conf = the cluster's defaults +
``postgres_conn_id`` + ``window_end`` (the window's end, which the guard enforces). Pure computation: no Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgupgrade.errors import ConfigError
from pgupgrade.params import Field, validate


@dataclass(frozen=True)
class ClusterEntry:
    conn_id: str
    dags: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_entries(raw: Any, source: str) -> list[ClusterEntry]:
    """The entries of a parsed clusters file; errors name the file and the entry."""
    items = raw.get("clusters") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise ConfigError(source, 'must be {"clusters": ["<postgres connection id>" or {"conn_id": ..., "dags": ...}]}')
    out: list[ClusterEntry] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(ClusterEntry(item))
            continue
        where = f"{source}: clusters[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("conn_id"), str) or not item["conn_id"]:
            raise ConfigError(where, f'must be a connection id or {{"conn_id": "...", "dags": {{...}}}}, got {item!r}')
        unknown = sorted(set(item) - {"conn_id", "dags"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "unknown key; known: conn_id, dags")
        dags = item.get("dags", {})
        if not isinstance(dags, dict) or not all(isinstance(v, dict) for v in dags.values()):
            raise ConfigError(f"{where}.dags", 'must map DAG ids to conf objects, e.g. {"pg_minor_upgrade": {...}}')
        for dag_id, conf in dags.items():
            if "postgres_conn_id" in conf:
                raise ConfigError(f"{where}.dags.{dag_id}.postgres_conn_id", "comes from conn_id; remove it here")
        out.append(ClusterEntry(item["conn_id"], {k: dict(v) for k, v in dags.items()}))
    return out


def read_entries(path: Path) -> list[ClusterEntry]:
    """A plain file read (safe at parse time too)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read the cluster list: {exc}") from None
    return parse_entries(raw, str(path))


def run_id(conn_id: str, logical_date: dt.datetime) -> str:
    """The deterministic id of the run a window's scheduled run starts for one cluster."""
    return f"window__{conn_id}__{logical_date.astimezone(dt.UTC).isoformat(timespec='seconds')}"


def dispatch(
    entries: list[ClusterEntry],
    dag_id: str,
    fields: list[Field],
    logical_date: dt.datetime,
    window_end: dt.datetime | None,
) -> list[dict[str, Any]]:
    """``[{"trigger_run_id": ..., "conf": {...}}]`` — one run of ``dag_id`` per cluster configured for it. Every
    conf is validated like a trigger conf first; a bad one fails the dispatch (nothing started) naming cluster
    and field."""
    names = {f.name for f in fields}
    out = []
    for e in entries:
        if dag_id not in e.dags:
            continue
        conf: dict[str, Any] = {**e.dags[dag_id], "postgres_conn_id": e.conn_id}
        if window_end is not None and "window_end" in names and not conf.get("window_end"):
            conf["window_end"] = window_end.astimezone(dt.UTC).isoformat(timespec="seconds")
        try:
            validate(fields, conf)
        except ConfigError as exc:
            raise ConfigError(
                f"clusters file: {e.conn_id}.dags.{dag_id}.{exc.field}", str(exc).split(": ", 1)[-1]
            ) from None
        out.append({"trigger_run_id": run_id(e.conn_id, logical_date), "conf": conf})
    return out
