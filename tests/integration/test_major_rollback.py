"""Induced failures of a major upgrade: the rollback DAG is triggered automatically and the old version serves
identical data afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg2
import pytest

from pgupgrade.state import RunState

from airflow_helpers import assert_rolled_back, report_of, run, upgrade_conf
from pgharness import OS_USER, installation, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])


def _failing_pg_upgrade_bindir(root: Path, version: str) -> str:
    """A copy of an installation (symlinks) whose pg_upgrade fails after the real one finished linking."""
    real = Path(installation(version).bindir)
    fake = root / f"bin-{version}-failing-pg_upgrade"
    if fake.exists():  # another test of this session built it already
        return str(fake)
    fake.mkdir()
    for f in real.iterdir():
        (fake / f.name).symlink_to(f)
    (fake / "pg_upgrade").unlink()
    (fake / "pg_upgrade").write_text(
        "#!/bin/sh\n"
        f'"{real}/pg_upgrade" "$@" || exit $?\n'
        'case " $* " in *" --check "*) exit 0;; esac\n'
        'echo "injected failure after the transfer" >&2\nexit 1\n'
    )
    (fake / "pg_upgrade").chmod(0o755)
    return str(fake)


def test_failure_inside_pg_upgrade_restores_pg_control(pool):
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", transfer_mode="link")
    conf["new_bindir"] = _failing_pg_upgrade_bindir(pool.root, "16")
    track_new(pool, old, conf)
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed" and states["upgrade.pg_upgrade"] == "failed", states
    assert Path(old.datadir, "global", "pg_control.old").exists()  # pg_upgrade had disabled the old cluster
    assert_rolled_back(old, "pg15_to_pg16_upgrade", dr.run_id, "restore_pg_control")
    assert not Path(old.datadir, "global", "pg_control.old").exists()


def test_failure_after_new_cluster_started_restores_backup(pool, monkeypatch):
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", transfer_mode="link")
    track_new(pool, old, conf)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "health_check")  # the worker's fault-drill switch
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed" and states["upgrade.pg_upgrade"] == "failed", states
    steps = {
        e["step"]: e["status"] for e in RunState.for_run(dr.dag_id, dr.run_id, STATE).events() if e["event"] == "step"
    }
    assert steps["health_check"] == "failed" and steps["start_new_private"] == "success", steps
    assert "open_to_clients" not in steps  # the cutover stopped at the failed step
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    rep = assert_rolled_back(old, "pg15_to_pg16_upgrade", dr.run_id, "restore_backup")
    assert "started" in rep["rollback_reason"]
    aside = [p for p in Path(old.datadir).parent.iterdir() if p.name.startswith("data.failed-")]
    assert len(aside) == 1  # the old data directory is kept, never deleted
    assert os.stat(aside[0]).st_uid == __import__("pwd").getpwnam(OS_USER).pw_uid


def test_failed_run_writes_a_failure_report_with_pg_upgrade_logs(pool, monkeypatch):
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", transfer_mode="link")
    conf["new_bindir"] = _failing_pg_upgrade_bindir(pool.root, "16")
    track_new(pool, old, conf)
    hooks_log = pool.root / "hooks.log"
    monkeypatch.setenv(
        "AIRFLOW_VAR_PGUPGRADE_HOOKS", json.dumps({"stop_applications": ["sh", "-c", f"echo stopped >> {hooks_log}"]})
    )
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed" and states["stop.stop_applications"] == "success"
    assert hooks_log.read_text() == "stopped\n"
    rep = report_of(STATE, "pg15_to_pg16_upgrade", dr.run_id)
    assert rep["status"] == "failed" and "upgrade.pg_upgrade" in rep["failure"]["failed_tasks"]
    assert any("injected failure" in (e["error"] or "") for e in rep["failure"]["errors"])
    assert rep["failure"]["pg_upgrade_logs"], "pg_upgrade_output.d logs belong in the failure report"
    assert_rolled_back(old, "pg15_to_pg16_upgrade", dr.run_id, "restore_pg_control")


def test_failure_before_the_stop_leaves_the_new_data_directory_reusable(pool, monkeypatch):
    """init_new ran before the outage; the cutover fails at stop_old before anything stops: the rollback keeps
    the old cluster serving and empties the new data directory (initdb's output only), so a new run can use it."""
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "16", transfer_mode="link")
    track_new(pool, old, conf)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "stop_old")
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed" and states["stop.init_new"] == "success", states
    assert states["upgrade.pg_upgrade"] == "failed", states
    assert Path(conf["new_datadir"], "PG_VERSION").exists()
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    assert_rolled_back(old, "pg15_to_pg16_upgrade", dr.run_id, "old_running")
    assert Path(conf["new_datadir"]).is_dir() and not any(Path(conf["new_datadir"]).iterdir())


def test_dump_restore_failing_while_the_old_cluster_still_runs(pool, monkeypatch):
    """dump/restore reads the old cluster while it runs (restarted where only the run reaches it): a failure there
    leaves it running privately, the rollback restarts it where clients reach it, gives logins back, and stops
    the half-filled new cluster."""
    old = pool.new("15.18")
    conf = upgrade_conf(pool, old, "17", target_major=17, method="dump_restore")
    new = track_new(pool, old, conf)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "dump_restore")
    dr, states = run("pg_major_upgrade", conf)
    assert dr.state == "failed" and states["upgrade.dump_restore"] == "failed", states
    steps = [e["step"] for e in RunState.for_run(dr.dag_id, dr.run_id, STATE).events() if e["event"] == "step"]
    assert "stop_old" not in steps and Path(old.datadir, "postmaster.pid").exists()
    with pytest.raises(psycopg2.OperationalError):  # no client reaches it until the rollback
        served_version(old)
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    assert_rolled_back(old, "pg_major_upgrade", dr.run_id, "old_running")
    assert not Path(new.datadir, "postmaster.pid").exists()
