"""The failure→rollback mechanism and the per-cluster lock under the real Airflow 3.3 scheduler."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_stack import AirflowStack
from pgharness import APP_DB, connection_env, installation

pytestmark = pytest.mark.scheduler


def _version(cluster) -> int:
    with connect(cluster) as conn:
        return int(scalar(conn, "SHOW server_version_num")) // 10000


def test_rollback_triggered_and_lock_exclusive_under_real_scheduler(pool, tmp_path):
    meta = pool.new("17", "airflow_meta", seed=False)
    failing = pool.new("15.18", "e2e_failing")
    shared = pool.new("15.18", "e2e_shared")
    with connect(failing, APP_DB) as conn, conn.cursor() as cur:  # a queue that never drains → sensor fails
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('pending', 1)")
    state_dir = tmp_path / "state"
    env = dict([connection_env(failing), connection_env(shared)])
    env["PGUPGRADE_STATE_DIR"] = str(state_dir)
    stack = AirflowStack(meta, env).start()
    try:
        upgrade_dags = ["pg15_to_pg16_upgrade", "pg_major_upgrade"]
        stack.wait_for_dags([*upgrade_dags, "pg_major_upgrade_rollback"])
        for d in upgrade_dags:
            stack.unpause(d)

        # 1. a failing run triggers its rollback run, which the scheduler executes
        home = Path(failing.datadir).parent
        conf = {
            "postgres_conn_id": failing.name,
            "queue_wait_timeout_s": 1,
            "backup_dir": str(home / "backup"),
            "new_datadir": str(home / "data16"),
            "new_bindir": installation("16").bindir,
        }
        stack.trigger("pg15_to_pg16_upgrade", conf, "e2e-fail")
        assert stack.wait_run("pg15_to_pg16_upgrade", "e2e-fail") == "failed"
        states = stack.task_states("pg15_to_pg16_upgrade", "e2e-fail")
        assert states["stop.wait_queue_empty"] == "failed" and states["trigger_rollback"] == "success", states
        assert stack.wait_run("pg_major_upgrade_rollback", "rollback__e2e-fail") == "success"
        decision = RunState.for_run("pg_major_upgrade_rollback", "rollback__e2e-fail", state_dir).load("decision")
        assert decision["path"] == "old_running"
        assert _version(failing) == 15

        # 2. two DAGs on one cluster at once: exactly one proceeds
        home = Path(shared.datadir).parent
        base = {"postgres_conn_id": shared.name}
        a = {
            **base,
            "backup_dir": str(home / "backup-a"),
            "new_datadir": str(home / "data16"),
            "new_bindir": installation("16").bindir,
        }
        b = {
            **base,
            "backup_dir": str(home / "backup-b"),
            "new_datadir": str(home / "data17"),
            "new_bindir": installation("17").bindir,
            "target_major": 17,
        }
        stack.trigger("pg15_to_pg16_upgrade", a, "e2e-a")
        stack.trigger("pg_major_upgrade", b, "e2e-b")
        results = {
            "a": stack.wait_run("pg15_to_pg16_upgrade", "e2e-a"),
            "b": stack.wait_run("pg_major_upgrade", "e2e-b"),
        }
        assert sorted(results.values()) == ["failed", "success"], results
        loser_dag, loser = (
            ("pg15_to_pg16_upgrade", "e2e-a") if results["a"] == "failed" else ("pg_major_upgrade", "e2e-b")
        )
        loser_states = stack.task_states(loser_dag, loser)
        assert loser_states["plan.acquire_lock"] == "failed" and loser_states["trigger_rollback"] == "skipped"
        assert _version(shared) == (16 if results["a"] == "success" else 17)
        pool.track(
            shared.with_installation(
                installation("16" if results["a"] == "success" else "17").bindir,
                a["new_datadir"] if results["a"] == "success" else b["new_datadir"],
            )
        )
        assert not any(state_dir.glob("locks/*.json")), "locks left behind"
    finally:
        stack.stop()
    os.system(f"rm -rf {stack.home}")
