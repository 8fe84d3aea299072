"""Which run store an Airflow process uses: the control database when its connection exists; the file store only
on one machine (refused under a distributed executor); the switch refused while file-store runs are unfinished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgupgrade.airflow.store import run_store
from pgupgrade.errors import ConfigError
from pgupgrade.state import FileRunStore
from pgupgrade.state.control import ControlStore

CONTROL = json.dumps({"conn_type": "postgres", "host": "control.example", "port": 5433, "schema": "ctl", "login": "u"})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("PGUPGRADE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_PGUPGRADE_CONTROL", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    return monkeypatch


def test_files_on_one_machine(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = run_store()
    assert isinstance(store, FileRunStore) and store.root == tmp_path


def test_distributed_executor_without_control_database_is_refused(env: pytest.MonkeyPatch) -> None:
    env.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    with pytest.raises(ConfigError, match=r"pgupgrade_control.*CeleryExecutor"):
        run_store()


def test_control_database_when_its_connection_exists(env: pytest.MonkeyPatch) -> None:
    env.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    env.setenv("AIRFLOW_CONN_PGUPGRADE_CONTROL", CONTROL)
    store = run_store()
    assert isinstance(store, ControlStore)
    assert store.conninfo == {"host": "control.example", "port": 5433, "dbname": "ctl", "user": "u"}


def test_switch_refused_while_a_file_store_run_holds_a_lock(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    FileRunStore(tmp_path).cluster_lock("db1:/data").acquire("pg15_to_pg16_upgrade", "r1", lambda *_: True)
    env.setenv("AIRFLOW_CONN_PGUPGRADE_CONTROL", CONTROL)
    with pytest.raises(ConfigError, match="unfinished runs: pg15_to_pg16_upgrade/r1 on db1:/data"):
        run_store()
