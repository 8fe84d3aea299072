"""The fault matrix's CI sample (the full matrix: bash tests/reliability/run.sh → docs/reliability.md).

One failure per destructive phase of a 15.18 → 16 link-mode upgrade, each while a write probe keeps inserting,
each followed by the rollback run the failure triggered; then a worker SIGKILLed in the middle of pg_upgrade
and what a re-run may and may not do afterwards."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import fault_matrix as fm
import pytest

from pgupgrade import profiles, versions
from pgupgrade.commands import LocalHost
from pgupgrade.context import RunContext
from pgupgrade.errors import LockHeld, UnsafeState
from pgupgrade.major import cutover, fields
from pgupgrade.params import validate
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.state import RunState

from airflow_helpers import run, triggered_runs
from pgharness import Pool, WriteProbe, lock_of

pytestmark = pytest.mark.usefixtures("airflow_home")
LINK = fm.FAMILIES["major-link"]
# Each case is a real DAG run plus its rollback run (30-80 s on 2 busy cores): CI runs the destructive phases from
# pg_upgrade on and the worker kill; PGUPGRADE_RELIABILITY_FULL=1 adds the rest.
FULL = os.environ.get("PGUPGRADE_RELIABILITY_FULL") == "1"


@pytest.mark.parametrize(
    ("cause", "aim", "failed_step", "verdict", "path"),
    [
        # before the old cluster stops: logins are given back (PGUPGRADE_RELIABILITY_FULL=1; the matrix has it too)
        pytest.param(
            "inject",
            "snapshot_facts",
            "snapshot_facts",
            "ok",
            "old_running",
            marks=pytest.mark.skipif(not FULL, reason="PGUPGRADE_RELIABILITY_FULL=1 runs it"),
        ),
        # pg_upgrade's binary vanished after the plan: the old cluster was stopped, its files untouched
        ("binary_missing", None, "pg_upgrade", "ok", "old_intact"),
        # after the new cluster started privately: its old files may share changed blocks; the probe wrote after
        # the backup, so the old cluster is rebuilt from the base backup plus its own WAL up to its stop
        ("inject", "update_extensions", "update_extensions", "ok", "restore_backup"),
        # after the new cluster opened: the probe wrote into it, so the rollback refuses and it keeps serving
        # (PGUPGRADE_RELIABILITY_FULL=1; test_rollback_after_success covers the refusal in CI)
        pytest.param(
            "inject",
            "start_applications",
            "start_applications",
            "kept new",
            "restore_backup",
            marks=pytest.mark.skipif(not FULL, reason="PGUPGRADE_RELIABILITY_FULL=1 runs it"),
        ),
    ],
)
def test_failure_in_each_phase_loses_no_acknowledged_write(pool: Pool, cause, aim, failed_step, verdict, path) -> None:
    out = fm.run_case(pool, LINK, cause, aim)
    print(out.row())
    assert out.step == failed_step, out
    assert out.rollback_path == path, out  # the rollback's decision (or refusal) and its report name it
    assert out.verdict == verdict, out
    if verdict == "ok":
        assert out.serves == "15" and out.lost == 0 and out.facts_equal and out.rollback == "success", out
    else:  # validated, opened, written to: it keeps serving with every write
        assert out.serves == "16" and out.lost == 0 and out.facts_equal, out
        assert "clients were let into the new cluster" in out.note, out
    if path == "restore_backup" and verdict == "ok":  # the probe wrote after the backup: replayed, not lost
        replay = re.search(r"rebuilt from the base backup \+ (\d+) WAL files, replayed to (\S+) \(stopped at (\S+)\)",
                           out.note)  # fmt: skip
        assert replay, out.note
        assert lsn(replay.group(2)) > lsn(replay.group(3)), out.note
    if out.serves == "15":  # the slot that kept the WAL is gone once the old cluster serves again
        assert fm.slots(out.cluster) == [], out


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def test_worker_killed_mid_pg_upgrade_then_rerun_and_rollback(pool: Pool) -> None:
    """The worker (with its process group) is SIGKILLed while pg_upgrade links files. Afterwards: the task's step
    run again refuses (pg_upgrade never twice on a half-built directory, initdb never over it); a new run of the
    DAG with the same conf refuses at the lock — while Airflow still counts the crashed run as running, and after
    the scheduler marked it failed (it crashed mid-way) — without touching anything (the backup stays); the
    rollback run (the failure callback's) brings 15 back with every acknowledged write."""
    cluster = pool.new("15.18")
    WriteProbe.create_table(cluster)
    case = fm.Case(LINK, "worker_killed", conf=LINK.conf(cluster, pool.root), cluster=cluster, pool=pool)
    new_datadir = case.conf["new_datadir"]
    pool.track(replace(cluster, bindir=case.conf["new_bindir"], datadir=new_datadir))
    before = fm.pgfacts.snapshot(cluster)
    known = {r.run_id for r in triggered_runs(LINK.dag_id)}
    probe = WriteProbe(cluster).start()
    with fm.worker_killed(case):
        pass
    probe.stop()
    assert "SIGKILLed" in case.note, case.note
    assert not fm.processes_matching("pg_upgrade", new_datadir), "pg_upgrade outlived its worker"
    run_id = fm.upgrade_run_id(LINK.dag_id, known)
    state = RunState.for_run(LINK.dag_id, run_id)
    assert state.happened("transfer_started") and not state.happened("transfer_done"), state.events()
    lock = lock_of(cluster)
    assert lock.holder()["run_id"] == run_id
    backup = Path(case.conf["backup_dir"])
    backup_files = {p: p.stat().st_mtime for p in backup.rglob("*")}
    assert backup_files, "the crashed run had taken its backup"
    new_files = sorted(os.listdir(new_datadir))

    # the failed task's step, run again in the same run: refused, nothing touched
    plan = state.load("plan")
    rc = RunContext(
        dag_id=LINK.dag_id,
        run_id=run_id,
        params=validate(fields.FIELDS, case.conf),
        cluster=cluster,
        host=LocalHost(),
        state=state,
        profile=profiles.get("pg_tviews"),
        spec={"from_major": 15, "to_major": 16},
    )
    with pytest.raises(UnsafeState, match="twice on a half-built directory"):
        cutover.run_pg_upgrade(rc)
    with pytest.raises(UnsafeState, match="not empty"):
        initdb(versions.inspect(case.conf["new_bindir"], rc.host), new_datadir, InitdbOptions(**plan["initdb"]))
    assert sorted(os.listdir(new_datadir)) == new_files

    # a new run with the same conf, while Airflow still counts the crashed run as running, then after the
    # scheduler marked it failed: both refused at the lock, with no change recorded
    for crashed_marked in (False, True) if FULL else (True,):
        if crashed_marked:
            fm.mark_crashed(LINK.dag_id, run_id)
        again, states = run(LINK.dag_id, case.conf)
        assert again.state == "failed" and states["plan.acquire_lock"] == "failed", states
        assert states["trigger_rollback"] == "skipped", states
        assert RunState.for_run(LINK.dag_id, again.run_id).side_effects() == []
        assert lock.holder()["run_id"] == run_id
    with pytest.raises(LockHeld, match="crashed mid-way"):
        lock.acquire(LINK.dag_id, "by-hand", lambda *_: False)
    assert {p: p.stat().st_mtime for p in backup.rglob("*")} == backup_files  # the backup it still needs
    assert sorted(os.listdir(new_datadir)) == new_files

    # the rollback run, as the DAG's failure callback triggers it
    started = time.monotonic()
    rb, rstates = run(
        LINK.rollback_dag_id,
        {"upgrade_dag_id": LINK.dag_id, "upgrade_run_id": run_id, "postgres_conn_id": case.conf["postgres_conn_id"]},
    )
    assert rb.state == "success", rstates
    decision = RunState.for_run(LINK.rollback_dag_id, rb.run_id).load("decision")
    assert decision["path"] in ("restore_pg_control", "old_intact"), decision
    assert LINK.served(cluster) == "15"
    assert fm.lost_writes(probe, cluster) == 0 and len(probe.acked) > 0
    after = fm.pgfacts.snapshot(cluster)
    assert fm.pgfacts.compare(fm.comparable(before), fm.comparable(after), same_extension_versions=True) == []
    assert lock.holder() is None
    print(json.dumps({"path": decision["path"], "rollback_s": round(time.monotonic() - started, 1)}))
