"""The run-store rules, the same for both stores: the file store (one machine) and the control database (a real
PostgreSQL server, a fresh database per test). Locks, their hand-over and take-over after a crash, journals,
documents, outage slots; and what only the control database does: concurrent contenders (exactly one wins),
schema migration, the spool on the database host while the control database is away."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import LocalHost
from pgupgrade.errors import ConfigError, LockHeld, UnsafeState
from pgupgrade.sql import connect, scalar
from pgupgrade.state import FileRunStore, RunStore
from pgupgrade.state.control import ControlDB, ControlLock, ControlStore, ControlUnreachable, migrate
from pgupgrade.state.spool import Spool

from pgharness import Pool, control_store

_dbs = itertools.count(1)


def alive(*_: str) -> bool:
    return True


def dead(*_: str) -> bool:
    return False


@pytest.fixture(scope="module")
def control_cluster(pool: Pool) -> Cluster:
    return pool.new("17.10", "control", seed=False)


def new_control_store(cluster: Cluster) -> ControlStore:
    return control_store(cluster, f"control_{next(_dbs)}", create=True, root=Path("/nonexistent"))


@pytest.fixture(params=["files", "control"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    if request.param == "files":
        return FileRunStore(tmp_path)
    return new_control_store(request.getfixturevalue("control_cluster"))


def test_lock_is_exclusive_per_cluster_not_per_dag(store: RunStore) -> None:
    lock = store.cluster_lock("db1:/var/lib/postgresql/15/main")
    assert "acquired" in lock.acquire("pg15_to_pg16_upgrade", "r1", alive)
    with pytest.raises(LockHeld, match="pg15_to_pg16_upgrade"):
        lock.acquire("pg_minor_upgrade", "r2", alive)
    assert "already held" in lock.acquire("pg15_to_pg16_upgrade", "r1", alive)  # a cleared task re-runs
    other = store.cluster_lock("db2:/var/lib/postgresql/15/main")
    assert "acquired" in other.acquire("pg_minor_upgrade", "r2", alive)


def test_lock_left_by_dead_run_is_taken_over(store: RunStore) -> None:
    lock = store.cluster_lock("db1:/data")
    lock.acquire("pg15_to_pg16_upgrade", "crashed", alive)
    msg = lock.acquire("pg15_to_pg16_upgrade", "next", dead)
    holder = lock.holder()
    assert "taken over" in msg and holder is not None and holder["run_id"] == "next"


def test_handover_to_rollback_and_release(store: RunStore) -> None:
    lock = store.cluster_lock("db1:/data")
    lock.acquire("up", "r1", alive)
    lock.hand_over("up", "r1", "rb", "rollback__r1")
    with pytest.raises(LockHeld):  # the heir is alive although the holder died: nobody else gets in
        lock.acquire("other", "r9", lambda d, r: d == "rb")
    lock.acquire("rb", "rollback__r1", dead, heir_of=("up", "r1"))
    holder = lock.holder()
    assert holder is not None and (holder["dag_id"], holder["run_id"]) == ("rb", "rollback__r1")
    assert not lock.release("up", "r1") and lock.release("rb", "rollback__r1")
    assert lock.holder() is None


def test_failed_rollback_keeps_the_lock(store: RunStore) -> None:
    lock = store.cluster_lock("db1:/data")
    lock.acquire("rb", "x", alive)
    lock.needs_attention("rb", "x", "rollback failed in verify_old")
    with pytest.raises(LockHeld, match="needs attention"):
        lock.acquire("up", "y", dead)


def test_lock_of_a_run_that_crashed_after_changing_the_cluster_is_not_taken_over(store: RunStore) -> None:
    lock = store.cluster_lock("db1:/data")
    lock.acquire("pg15_to_pg16_upgrade", "crashed", dead)
    state = store.run("pg15_to_pg16_upgrade", "crashed")
    state.record("step", step="plan", status="success", seconds=1.0)
    state.record("backup_started")  # writes only the backup directory: nothing to undo in the cluster
    assert "taken over" in lock.acquire("pg15_to_pg16_upgrade", "next", dead)
    lock.release("pg15_to_pg16_upgrade", "next")

    lock.acquire("pg15_to_pg16_upgrade", "crashed", dead)
    state.record("old_stop_requested")
    state.record("transfer_started", method="pg_upgrade", mode="link")
    with pytest.raises(LockHeld, match=r"crashed mid-way.*upgrade_run_id='crashed'"):
        lock.acquire("pg_minor_upgrade", "other", dead)
    holder = lock.holder()
    assert holder is not None and holder["run_id"] == "crashed"
    msg = lock.acquire(
        "pg_major_upgrade_rollback", "rollback__crashed", dead, heir_of=("pg15_to_pg16_upgrade", "crashed")
    )
    assert "cleans up after it" in msg
    store.run("pg_major_upgrade_rollback", "rollback__crashed").record("old_moved_aside", to="/data.failed-x")
    with pytest.raises(LockHeld, match="pg_major_upgrade_rollback run 'rollback__crashed'"):
        lock.acquire("up", "r2", dead)


def test_journal_documents_and_reruns(store: RunStore) -> None:
    st = store.run("dag", "manual__2026-01-01T00:00:00+00:00")
    assert not st.exists() and st.events() == []
    st.record("old_stopped", checkpoint_lsn="0/3000028")
    st.record("transfer_started", mode="link")
    assert [e["event"] for e in st.events()] == ["old_stopped", "transfer_started"]
    assert st.first("old_stopped")["checkpoint_lsn"] == "0/3000028"
    with pytest.raises(UnsafeState, match="already"):
        st.refuse_if("transfer_started", "pg_upgrade already ran")
    st.save("plan", {"a": 1, "nested": {"b": [1, 2]}})
    st.save("plan", {"a": 2, "nested": {"b": [1, 2]}})
    assert st.load("plan") == {"a": 2, "nested": {"b": [1, 2]}} and st.has("plan") and not st.has("facts")
    assert st.load("missing", 7) == 7 and st.exists()


def test_outage_slots_bound_concurrent_outages(store: RunStore) -> None:
    assert store.take_outage_slot("db1:/a", "up", "r1", 1) == 1
    assert store.take_outage_slot("db1:/a", "up", "r1", 1) == 1  # the same run again: its own slot
    assert store.take_outage_slot("db2:/b", "up", "r2", 1) is None
    assert store.take_outage_slot("db2:/b", "up", "r2", 2) == 2
    assert [s["run_id"] for s in store.outage_slots()] == ["r1", "r2"]
    assert store.release_outage_slot("up", "r1") == 1 and store.release_outage_slot("up", "r1") is None
    assert store.take_outage_slot("db3:/c", "up", "r3", 2) == 1


def test_concurrent_contenders_exactly_one_wins(control_cluster: Cluster) -> None:
    """Eight threads, each with its own connection to the control database, take one lock and one of two
    outage slots at the same moment: one lock holder and two slot holders, every round."""
    store = new_control_store(control_cluster)
    store.run("warm", "up").exists()  # schema migrated before the race
    for round_ in range(5):
        barrier = threading.Barrier(8)
        won: list[str] = []
        slots: list[int] = []

        def contend(
            i: int,
            r: int = round_,
            barrier: threading.Barrier = barrier,
            won: list[str] = won,
            slots: list[int] = slots,
        ) -> None:
            db = ControlDB(store.conninfo)
            lock = ControlLock(db, f"node:/data{r}", store)
            run = {"dag_id": "up", "run_id": f"r{r}-{i}"}
            barrier.wait()
            try:
                lock.acquire("up", f"r{i}", alive)
                won.append(f"r{i}")
            except LockHeld:
                pass
            if db.rows("control-slot-take", {**run, "key": lock.key, "slots": 2}):
                slots.append(int(db.rows("control-slot-of-run", run)[0]["slot"]))
            db.close()

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert sorted(slots) == [1, 2], slots
        for sl in store.outage_slots():
            store.release_outage_slot(sl["dag_id"], sl["run_id"])


def test_schema_is_migrated_once_and_a_newer_one_refused(control_cluster: Cluster) -> None:
    store = new_control_store(control_cluster)
    store.run("d", "r").record("x")
    with connect(control_cluster, store.conninfo["dbname"]) as conn:
        assert migrate(conn) == 1  # already there: nothing applied
        assert scalar(conn, "SELECT count(*) FROM pgupgrade.schema_version") == 1
        conn.cursor().execute("INSERT INTO pgupgrade.schema_version VALUES (99)")
        with pytest.raises(ConfigError, match="version 99, newer than this product"):
            migrate(conn)


def test_control_database_away(pool: Pool, tmp_path: Path) -> None:
    """Before the outage an unreachable control database stops the step (nothing recorded, nothing done); once
    the old cluster's stop was journaled, events and documents go to the spool on the database host, the process
    that records them still sees the whole run (as read when the outage began, plus its own records), and the
    spool moves into the control database, in order, when it is back — for whoever reads next."""
    own = pool.new("17.10", "control_away", seed=False)
    store = new_control_store(own)
    host = LocalHost()
    spool = Spool(host, "postgres", f"{pool.root}/spool-{tmp_path.name}/up--r1.jsonl")
    journal = store.run("up", "r1", spool)
    journal.record("cutover_started")
    journal.save("plan", {"method": "pg_upgrade"})
    journal.record("old_stop_requested")  # the outage begins: the run is read into memory
    other = store.run("up", "r2", Spool(host, "postgres", f"{pool.root}/spool-{tmp_path.name}/up--r2.jsonl"))
    svc = service_for(own, host)
    svc.stop("fast")
    store.db.close()
    try:
        with pytest.raises(ControlUnreachable, match="cannot be reached"):
            other.record("backup_started")  # a run whose outage has not begun: the step must not act
        journal.record("transfer_started", mode="link")
        journal.save("pg_upgrade_logs", {"log": "x"})
        assert len(spool.lines()) == 2
        assert [e["event"] for e in journal.events()] == ["cutover_started", "old_stop_requested", "transfer_started"]
        assert journal.load("plan") == {"method": "pg_upgrade"} and journal.load("pg_upgrade_logs") == {"log": "x"}
        assert journal.happened("transfer_started")
    finally:
        svc.start()
    rollback_view = store.run("up", "r1", spool)  # e.g. the rollback, on another worker
    events = rollback_view.events()
    assert [e["event"] for e in events] == ["cutover_started", "old_stop_requested", "transfer_started"]
    assert [e.get("spooled", False) for e in events] == [False, False, True]
    assert rollback_view.load("pg_upgrade_logs") == {"log": "x"} and spool.lines() == []
    assert other.events() == []
