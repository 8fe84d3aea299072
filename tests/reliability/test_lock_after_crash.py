"""The cluster lock of a run that crashed mid-change: never taken over by another run, only by its rollback."""

from __future__ import annotations

import pytest

from pgupgrade.errors import LockHeld
from pgupgrade.state import ClusterLock, RunState


def dead(*_: str) -> bool:
    return False


def test_lock_of_a_run_that_crashed_after_changing_the_cluster_is_not_taken_over(tmp_path):
    lock = ClusterLock.for_cluster("db1", "/data", tmp_path)
    lock.acquire("pg15_to_pg16_upgrade", "crashed", dead)
    state = RunState.for_run("pg15_to_pg16_upgrade", "crashed", tmp_path)
    state.record("step", step="plan", status="success", seconds=1.0)
    state.record("backup_started")  # writes only the backup directory: nothing to undo in the cluster
    assert "taken over" in lock.acquire("pg15_to_pg16_upgrade", "next", dead)
    lock.release("pg15_to_pg16_upgrade", "next")

    lock.acquire("pg15_to_pg16_upgrade", "crashed", dead)
    state.record("old_stop_requested")
    state.record("transfer_started", method="pg_upgrade", mode="link")
    with pytest.raises(LockHeld, match=r"crashed mid-way.*upgrade_run_id='crashed'"):
        lock.acquire("pg_minor_upgrade", "other", dead)
    assert lock.holder()["run_id"] == "crashed"
    # its rollback run takes it over
    msg = lock.acquire(
        "pg_major_upgrade_rollback", "rollback__crashed", dead, heir_of=("pg15_to_pg16_upgrade", "crashed")
    )
    assert "cleans up after it" in msg


def test_lock_of_a_rollback_that_crashed_mid_way_is_not_taken_over(tmp_path):
    lock = ClusterLock.for_cluster("db1", "/data", tmp_path)
    lock.acquire("up", "r1", dead)
    RunState.for_run("up", "r1", tmp_path).record("transfer_started", method="pg_upgrade", mode="link")
    lock.hand_over("up", "r1", "rb", "rollback__r1")
    lock.acquire("rb", "rollback__r1", dead, heir_of=("up", "r1"))
    RunState.for_run("rb", "rollback__r1", tmp_path).record("old_moved_aside", to="/data.failed-x")
    with pytest.raises(LockHeld, match="rb run 'rollback__r1'"):
        lock.acquire("up", "r2", dead)
