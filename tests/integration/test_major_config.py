"""Configuration carried over correctly: config outside the data directory, ALTER SYSTEM settings,
shared_preload_libraries, pg_hba.conf, port and sockets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgupgrade.scratch import write_settings
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import run, upgrade_conf
from pgharness import HOST, OS_USER, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])


def test_config_outside_datadir_alter_system_and_preload(pool):
    old = pool.new("15.18")
    old = pool.with_config_outside(old)
    write_settings(
        HOST,
        f"{old.confdir}/postgresql.conf",
        {
            "shared_preload_libraries": "'pg_stat_statements'",
            "log_min_duration_statement": "250",
            "db_user_namespace": "off",
        },
        OS_USER,
    )
    with open(f"{old.confdir}/pg_hba.conf", "a") as fh:
        fh.write("# pgupgrade-test: custom rule\nlocal app app_user trust\n")
    from pgupgrade.cluster import Service

    Service(old, HOST).stop()
    Service(old, HOST).start()
    with connect(old) as conn, conn.cursor() as cur:
        cur.execute("ALTER SYSTEM SET work_mem = '9MB'")
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
        assert scalar(conn, "SHOW work_mem") == "9MB"
        assert scalar(conn, "SHOW log_min_duration_statement") == "250ms"
        assert scalar(conn, "SHOW data_directory") == new.datadir
        assert scalar(conn, "SHOW hba_file") == f"{new.datadir}/pg_hba.conf"
        assert scalar(conn, "SHOW cluster_name") == old.name
    assert "local app app_user trust" in Path(new.datadir, "pg_hba.conf").read_text()
    carried = next(
        e for e in RunState.for_run("pg_major_upgrade", dr.run_id, STATE).events() if e["event"] == "config_carried"
    )
    assert any("db_user_namespace" in d for d in carried["dropped"])  # removed in 17
    assert any("vacuum_defer_cleanup_age" in d for d in carried["dropped"])
    assert any("data_directory" in r for r in carried["rewritten"])
