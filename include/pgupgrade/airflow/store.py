"""Which run store this Airflow process uses: the control database when its connection exists, else (one
machine only) the file store.

The control database is named by the Airflow connection ``pgupgrade_control`` (another id with the environment
variable ``PGUPGRADE_CONTROL_CONN_ID``). Without it, state lives in files under ``PGUPGRADE_STATE_DIR``, which
only works when every Airflow process shares that disk: refused outright under a distributed executor (Celery,
Kubernetes, Edge), where a later task, the rollback or the failure callback would find nothing.
"""

from __future__ import annotations

import os

from pgupgrade.errors import ConfigError
from pgupgrade.state import RunStore, read_json, state_root
from pgupgrade.state import store as file_store
from pgupgrade.state.control import ControlStore

DEFAULT_CONTROL_CONN_ID = "pgupgrade_control"
SINGLE_MACHINE_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def control_conn_id() -> str:
    return os.environ.get("PGUPGRADE_CONTROL_CONN_ID", DEFAULT_CONTROL_CONN_ID)


def _executors() -> list[str]:
    from airflow.configuration import conf

    return [e.strip().split(":")[-1].rsplit(".", 1)[-1] for e in conf.get("core", "executor").split(",") if e.strip()]


def refuse_switch_with_unfinished_file_runs(conn_id: str) -> None:
    """Switching a deployment from the file store to the control database: a run that still holds a cluster lock
    in the files (unfinished, or waiting for its rollback) would lose its journal. Refused until it is finished
    or rolled back with the files (the control connection removed), naming the runs."""
    held = []
    for lock in sorted((state_root() / "locks").glob("*.json")):
        holder = read_json(lock)
        held.append(f"{holder.get('dag_id')}/{holder.get('run_id')} on {holder.get('key')}")
    if held:
        raise ConfigError(
            conn_id,
            f"the file store in {state_root()} still holds cluster locks of unfinished runs: {'; '.join(held)}. "
            "Finish or roll them back without the control database (remove the connection), then switch.",
        )


def run_store() -> RunStore:
    from airflow.sdk import Connection

    conn_id = control_conn_id()
    try:
        conn = Connection.get(conn_id)
    except Exception:  # the SDK raises its own not-found error types
        conn = None
    if conn is None:
        distributed = [e for e in _executors() if e not in SINGLE_MACHINE_EXECUTORS]
        if distributed:
            raise ConfigError(
                conn_id,
                f"no Airflow connection {conn_id!r} for the control database, and the executor is {distributed[0]}: "
                "run state in worker-local files would not reach the next task, the rollback or the failure "
                "callback. Create the connection (a PostgreSQL database on a cluster this product never upgrades).",
            )
        return file_store()
    if conn.conn_type not in ("postgres", "postgresql"):
        raise ConfigError(conn_id, f"has type {conn.conn_type!r}, not postgres")
    refuse_switch_with_unfinished_file_runs(conn_id)
    info = {
        "host": conn.host,
        "port": int(conn.port or 5432),
        "dbname": conn.schema or "postgres",
        "user": conn.login or "postgres",
    }
    if conn.password:
        info["password"] = conn.password
    return ControlStore(info)
