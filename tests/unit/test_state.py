import json

import pytest

from pgupgrade.errors import LockHeld, UnsafeState
from pgupgrade.state import ClusterLock, RunState


def alive(*_):
    return True


def dead(*_):
    return False


def test_lock_is_exclusive_per_cluster_not_per_dag(tmp_path):
    lock = ClusterLock.for_cluster("db1", "/var/lib/postgresql/15/main", tmp_path)
    assert "acquired" in lock.acquire("pg15_to_pg16_upgrade", "r1", alive)
    with pytest.raises(LockHeld, match="pg15_to_pg16_upgrade"):
        lock.acquire("pg_minor_upgrade", "r2", alive)
    assert "already held" in lock.acquire("pg15_to_pg16_upgrade", "r1", alive)  # a cleared task re-runs
    other = ClusterLock.for_cluster("db2", "/var/lib/postgresql/15/main", tmp_path)
    assert "acquired" in other.acquire("pg_minor_upgrade", "r2", alive)


def test_lock_left_by_dead_run_is_taken_over(tmp_path):
    lock = ClusterLock.for_cluster("db1", "/data", tmp_path)
    lock.acquire("pg15_to_pg16_upgrade", "crashed", alive)
    msg = lock.acquire("pg15_to_pg16_upgrade", "next", dead)
    assert "taken over" in msg and lock.holder()["run_id"] == "next"


def test_handover_to_rollback_and_release(tmp_path):
    lock = ClusterLock.for_cluster("db1", "/data", tmp_path)
    lock.acquire("up", "r1", alive)
    lock.hand_over("up", "r1", "rb", "rollback__r1")
    # the heir is alive although the holder died: nobody else gets in
    with pytest.raises(LockHeld):
        lock.acquire("other", "r9", lambda d, r: d == "rb")
    lock.acquire("rb", "rollback__r1", dead, heir_of=("up", "r1"))
    assert (lock.holder()["dag_id"], lock.holder()["run_id"]) == ("rb", "rollback__r1")
    assert not lock.release("up", "r1") and lock.release("rb", "rollback__r1")
    assert lock.holder() is None


def test_failed_rollback_keeps_the_lock(tmp_path):
    lock = ClusterLock.for_cluster("db1", "/data", tmp_path)
    lock.acquire("rb", "x", alive)
    lock.needs_attention("rb", "x", "rollback failed in verify_old")
    with pytest.raises(LockHeld, match="needs attention"):
        lock.acquire("up", "y", dead)


def test_journal_is_ordered_and_refuses_reruns(tmp_path):
    st = RunState.for_run("dag", "manual__2026-01-01T00:00:00+00:00", tmp_path)
    st.record("old_stopped")
    st.record("transfer_started", mode="link")
    assert [e["event"] for e in st.events()] == ["old_stopped", "transfer_started"]
    assert st.first("transfer_started")["mode"] == "link"
    with pytest.raises(UnsafeState, match="already"):
        st.refuse_if("transfer_started", "pg_upgrade already ran")
    st.save("plan", {"a": 1})
    assert json.loads(st.path("plan.json").read_text()) == {"a": 1} and st.load("missing", 7) == 7
    assert "/" not in st.dir.name and ":" not in st.dir.name
