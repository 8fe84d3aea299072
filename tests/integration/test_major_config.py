"""Configuration carried over correctly: config outside the data directory, ALTER SYSTEM settings,
shared_preload_libraries, pg_hba.conf, port and sockets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import run, upgrade_conf
from pgharness import HOST, OS_USER, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])


def test_config_outside_datadir_includes_alter_system_and_preload(pool):
    """Debian-like layout (configuration outside the data directory) with ``include_dir = 'conf.d'`` whose tuning
    file overrides an earlier setting and is overridden by a later one, an ``include_if_exists`` of a missing file,
    an ``include`` of a file outside the configuration directory, and settings PostgreSQL 17 removed (in
    postgresql.conf, in conf.d, in postgresql.auto.conf): after a link upgrade to 17 the included settings are in
    effect from the carried files, the removed ones are listed by the plan and its report."""
    old = pool.new("15.18")
    old = pool.with_config_outside(old)
    home = Path(old.datadir).parent
    shared = home / "shared"
    HOST.run(["mkdir", "-p", f"{old.confdir}/conf.d", str(shared)], user=OS_USER)
    HOST.run(
        ["tee", f"{old.confdir}/conf.d/tuning.conf"],
        user=OS_USER,
        stdin="# tuning\nwork_mem = '13MB'\nlog_min_duration_statement = 200\nold_snapshot_threshold = -1\n",
    )
    HOST.run(["tee", f"{shared}/extra.conf"], user=OS_USER, stdin="temp_buffers = '12MB'\n")
    old_conf = Path(f"{old.confdir}/postgresql.conf")
    HOST.run(
        ["tee", "-a", str(old_conf)],
        user=OS_USER,
        stdin="\nshared_preload_libraries = 'pg_stat_statements'\n"
        "work_mem = '4MB'\n"
        "include_dir = 'conf.d'\n"
        "log_min_duration_statement = 250   # after conf.d: wins over its 200\n"
        "include_if_exists = 'missing.conf'\n"
        f"include = '{shared}/extra.conf'\n"
        "db_user_namespace = off\n",
    )
    with open(f"{old.confdir}/pg_hba.conf", "a") as fh:
        fh.write("# pgupgrade-test: custom rule\nlocal app app_user trust\n")
    from pgupgrade.cluster import Service

    Service(old, HOST).stop()
    Service(old, HOST).start()
    with connect(old) as conn, conn.cursor() as cur:
        assert scalar(conn, "SHOW work_mem") == "13MB"  # the old cluster reads conf.d
        cur.execute("ALTER SYSTEM SET maintenance_work_mem = '77MB'")
        cur.execute("ALTER SYSTEM SET vacuum_defer_cleanup_age = 10")  # removed in PostgreSQL 16
        cur.execute("SELECT pg_reload_conf()")
    conf = upgrade_conf(pool, old, "17", target_major=17, transfer_mode="link")
    track_new(pool, old, conf)
    dr, states = run("pg_major_upgrade", conf)
    assert dr.state == "success", {t: s for t, s in states.items() if s != "success"}
    new = old.with_installation(str(conf["new_bindir"]), str(conf["new_datadir"]))
    assert served_version(old) == 17  # same port and socket directory as before
    with connect(old) as conn:
        assert scalar(conn, "SHOW shared_preload_libraries") == "pg_stat_statements"
        assert scalar(conn, "SHOW work_mem") == "13MB"
        assert scalar(conn, "SELECT sourcefile FROM pg_settings WHERE name = 'work_mem'") == (
            f"{new.datadir}/conf.d/tuning.conf"
        )
        assert scalar(conn, "SHOW log_min_duration_statement") == "250ms"
        assert scalar(conn, "SHOW temp_buffers") == "12MB"
        assert scalar(conn, "SELECT sourcefile FROM pg_settings WHERE name = 'temp_buffers'") == (
            f"{new.datadir}/pgupgrade-included/extra.conf"
        )
        assert scalar(conn, "SHOW maintenance_work_mem") == "77MB"
        assert scalar(conn, "SHOW data_directory") == new.datadir
        assert scalar(conn, "SHOW hba_file") == f"{new.datadir}/pg_hba.conf"
        assert scalar(conn, "SHOW cluster_name") == old.name
        assert scalar(conn, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == 0
    new_conf = Path(new.datadir, "postgresql.conf").read_text()
    assert "include_dir = 'conf.d'" in new_conf  # relative, as written: the directory can move as a whole
    assert "include = 'pgupgrade-included/extra.conf'" in new_conf
    hba = Path(new.datadir, "pg_hba.conf").read_text()
    assert "local app app_user trust" in hba and "# pgupgrade-gate" not in hba
    journal = RunState.for_run("pg_major_upgrade", dr.run_id, STATE)
    carried = next(e for e in journal.events() if e["event"] == "config_carried")
    assert any("db_user_namespace" in d for d in carried["dropped"])  # removed in 17
    assert any("vacuum_defer_cleanup_age" in d for d in carried["dropped"])
    assert any("data_directory" in r for r in carried["rewritten"])
    assert {"conf.d/tuning.conf", "pgupgrade-included/extra.conf", "postgresql.conf"} <= set(carried["files"])
    plan = journal.load("plan")
    assert any(d.startswith("conf.d/tuning.conf: old_snapshot_threshold") for d in plan["config"]["dropped"])
    assert any("missing.conf" in s for s in plan["config"]["skipped"])
    assert any("old_snapshot_threshold" in w for w in plan["warnings"])
    assert "old_snapshot_threshold" in journal.load("report")["text"]
