"""pg_tviews extension update DAGs through Airflow (dag.test) on real servers: the 0.1 → 0.2 migration on PG 15 and
17, compatibility findings and strict_compat, a failure inside the migration SQL rolled back automatically, and
the minor update 0.1.5 → 0.1.6 through an admin-configured install command."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql as psql

from pgupgrade import profiles
from pgupgrade import sql as pgsql
from pgupgrade.cluster import Cluster
from pgupgrade.extension import catalog, fields
from pgupgrade.sql import connect, fetch, scalar
from pgupgrade.state import RunState

from airflow_helpers import report_of, run, run_triggered_rollback
from conftest import register_connection
from pgharness import APP_DB, Pool, lock_of

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])
PROFILE = profiles.get("pg_tviews")
MIGRATION, MINOR, ROLLBACK = fields.MIGRATION_DAG_ID, fields.MINOR_DAG_ID, fields.ROLLBACK_DAG_ID
UPGRADE_TASKS_OK = {"success", "skipped"}


def ext_conf(cluster: Cluster, **over: Any) -> dict[str, Any]:
    return {
        "postgres_conn_id": register_connection(cluster),
        "backup_dir": str(Path(cluster.datadir).parent / f"backup-{uuid.uuid4().hex[:8]}"),
        **over,
    }


def db_state(cluster: Cluster, db: str) -> dict[str, Any]:
    """What must be identical after a rollback: versions, metadata rows, triggers, every table's rows (count and
    md5 of the sorted rows) except the run's own pgupgrade schema."""
    with connect(cluster, db) as conn:
        tables = {}
        for schema, name in fetch(
            conn, "SELECT schemaname, relname FROM pg_stat_user_tables WHERE schemaname <> 'pgupgrade' ORDER BY 1, 2"
        ):
            tables[f"{schema}.{name}"] = scalar(
                conn,
                psql.SQL(
                    "SELECT count(*)::text || ':' || md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), ''))"
                    " FROM {} x"
                ).format(psql.Identifier(schema, name)),
            )
        return {
            "version": PROFILE.installed_version(conn),
            "reported": PROFILE.reported_version(conn),
            "metadata": PROFILE.metadata_rows(conn),
            "triggers": catalog.prefixed_triggers(conn, PROFILE.trigger_prefix),
            "tables": tables,
        }


def add_tview(cluster: Cluster, db: str, entity: str, table: str, rows: int = 20) -> None:
    with connect(cluster, db) as conn, conn.cursor() as cur:
        cur.execute(psql.SQL("CREATE TABLE {} (id int PRIMARY KEY, body text)").format(psql.Identifier(table)))
        cur.execute(
            psql.SQL("INSERT INTO {} SELECT g, 'n' || g FROM generate_series(1, %s) g").format(psql.Identifier(table)),
            (rows,),
        )
        cur.execute("SELECT pg_tviews_create(%s, %s::regclass, %s)", (entity, table, f"SELECT id, body FROM {table}"))


def lock_file(cluster: Cluster) -> Path:
    return lock_of(cluster, STATE).path


def assert_green(dr: Any, states: dict[str, str]) -> None:
    assert dr.state == "success", states
    assert {s for t, s in states.items() if t not in ("handover_lock", "trigger_rollback")} <= UPGRADE_TASKS_OK, states
    assert states["trigger_rollback"] == "skipped", states


@pytest.mark.parametrize("version", ["15.18", "17"])
def test_migration_0_1_5_to_0_2_0(pool: Pool, version: str) -> None:
    c = pool.new(version)
    with connect(c, APP_DB) as conn, conn.cursor() as cur:
        # late-bound code that calls the removed function: reported, does not block
        cur.execute(
            "CREATE FUNCTION app_refresh_later(e text) RETURNS void LANGUAGE plpgsql"
            " AS $$ BEGIN PERFORM pg_tviews_refresh_async(e); END $$"
        )
    add_tview(c, APP_DB, "tv_notes", "notes")
    with connect(c, APP_DB) as conn, conn.cursor() as cur:  # the operator keeps this one off on purpose
        cur.execute("ALTER TABLE notes DISABLE TRIGGER pg_tviews_tv_notes_trg")
    before = db_state(c, APP_DB)
    conf = ext_conf(c)

    dr, states = run(MIGRATION, conf)
    assert_green(dr, states)

    with connect(c, APP_DB) as conn:
        assert PROFILE.installed_version(conn) == "0.2.0" and PROFILE.reported_version(conn) == "0.2.0"
        cols = {r[0] for r in fetch(conn, "SELECT column_name FROM information_schema.columns"
                                          " WHERE table_name = 'pg_tviews_metadata'")}  # fmt: skip
        assert {"stats_last_computed", "query_plan", "source_hash"} <= cols and "internal_version" not in cols
        assert scalar(conn, "SELECT count(*) FROM pg_proc WHERE proname = 'pg_tviews_refresh_async'") == 0
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_metadata WHERE source_hash IS NULL") == 0
        stats = fetch(conn, "SELECT entity_name, row_count, stats_last_computed FROM pg_tviews_stats() ORDER BY 1")
        assert [s[0] for s in stats] == ["tv_customers", "tv_notes", "tv_order_totals"]
        assert all(s[1] is not None and s[2] is not None for s in stats), stats
        issues = fetch(conn, "SELECT entity_name, issue FROM pg_tviews_validate()")
        assert issues == [("tv_notes", "trigger pg_tviews_tv_notes_trg is disabled on public.notes")], issues
        # exactly the triggers enabled before are enabled again; the disabled one stays disabled
        assert catalog.prefixed_triggers(conn, "pg_tviews_") == before["triggers"]
        modes = {t["trigger_name"]: t["enabled"] for t in before["triggers"]}
        assert modes == {"pg_tviews_tv_customers_trg": "O", "pg_tviews_tv_notes_trg": "D",
                         "pg_tviews_tv_order_totals_trg": "O"}  # fmt: skip
        # same TVIEW contents and metadata rows
        for t in ("public.tv_order_totals", "public.tv_customers", "public.tv_notes", "public.orders"):
            assert db_state(c, APP_DB)["tables"][t] == before["tables"][t]
        assert [m["entity_name"] for m in PROFILE.metadata_rows(conn)] == [m["entity_name"] for m in before["metadata"]]
        # the re-enabled triggers fire: a change reaches the queue
        assert PROFILE.trigger_fires(conn) == ["tv_notes: a change to public.notes did not reach the queue"]
        # the documented state, in the database
        assert scalar(conn, "SELECT count(*) FROM pgupgrade.extension_snapshot WHERE run_id = %s", (dr.run_id,)) == 3

    state = RunState.for_run(MIGRATION, dr.run_id, STATE)
    manifest = state.load("backup")
    assert Path(manifest["databases"][APP_DB]["file"]).is_file() and manifest["databases"][APP_DB]["toc_entries"] > 10
    assert state.load("triggers_before")[APP_DB] == before["triggers"]
    rep = report_of(STATE, MIGRATION, dr.run_id)
    assert rep["status"] == "success"
    assert [f["object"] for f in rep["extension"]["compatibility"]] == ["app_refresh_later(text)"]
    assert any("app_refresh_later" in w for w in rep["plan"]["warnings"])
    assert {"plan", "backup", "disable_triggers", "update_extension", "enable_triggers", "final_checklist"} <= {
        s["step"] for s in rep["steps"]
    }
    md = Path(state.load("report")["markdown"]).read_text()
    assert "app_refresh_later" in md and "TOC entries" in md
    assert not lock_file(c).exists()


def test_view_on_removed_function_reported_and_strict_stops(pool: Pool) -> None:
    c = pool.new("16")
    with connect(c, APP_DB) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE VIEW refresh_everything AS"
            " SELECT entity_name, pg_tviews_refresh_async(entity_name)::text AS requested FROM pg_tviews_metadata"
        )
        triggers = catalog.prefixed_triggers(conn, "pg_tviews_")
    conf = ext_conf(c, strict_compat=True)

    dr, states = run(MIGRATION, conf)
    assert dr.state == "failed" and states["plan.plan"] == "failed", states
    assert states["prepare.backup"] == "upstream_failed", states
    with connect(c, APP_DB) as conn:  # nothing changed
        assert PROFILE.installed_version(conn) == "0.1.5"
        assert catalog.prefixed_triggers(conn, "pg_tviews_") == triggers
        assert scalar(conn, "SELECT to_regclass('pgupgrade.extension_snapshot')") is None
    assert not Path(conf["backup_dir"]).exists()
    rep = report_of(STATE, MIGRATION, dr.run_id)  # the failed run's report carries the plan and its refusal
    assert rep["status"] == "failed" and "strict_compat" in rep["plan"]["refused"]
    found = rep["plan"]["compat"]
    assert [(f["object_type"], f["object"], f["kind"], f["blocks_update"]) for f in found] == [
        ("view", "refresh_everything", "removed", True)
    ]
    md = Path(RunState.for_run(MIGRATION, dr.run_id, STATE).load("report")["markdown"]).read_text()
    assert "view refresh_everything uses pg_tviews_refresh_async(text)" in md
    # nothing was changed: no rollback is triggered and the lock is released
    assert states["trigger_rollback"] == "skipped", states
    assert not lock_file(c).exists()


@pytest.fixture
def failing_migration_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A copy of include/sql whose upgrade-extension.sql raises in one database (pgupgrade.sql reads
    PGUPGRADE_SQL_DIR once, at import: the module attribute is what a running process uses)."""

    def make(database: str) -> Path:
        d = tmp_path / "sql"
        shutil.copytree(pgsql.SQL_DIR, d)
        f = d / "upgrade-extension.sql"
        text = f.read_text()
        marker = "SELECT pg_temp.pgupgrade_extension_migration("
        inject = (
            "DO $inject$ BEGIN IF current_database() = " + "'" + database + "'"
            " THEN RAISE EXCEPTION 'injected failure in the migration SQL'; END IF; END $inject$;\n\n"
        )
        f.write_text(text.replace(marker, inject + marker))
        monkeypatch.setattr(pgsql, "SQL_DIR", d)
        pgsql.load.cache_clear()
        return d

    yield make
    pgsql.load.cache_clear()


def test_failure_in_migration_sql_rolls_back(pool: Pool, failing_migration_sql: Any) -> None:
    c = pool.new("17")
    with connect(c) as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE zapp")
    with connect(c, "zapp") as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTENSION pg_tviews VERSION '0.1.5'")
    add_tview(c, "zapp", "tv_items", "items", rows=50)
    with connect(c, APP_DB) as conn, conn.cursor() as cur:  # disabled on purpose before the run: stays so
        cur.execute("ALTER TABLE customers DISABLE TRIGGER pg_tviews_tv_customers_trg")
    before = {db: db_state(c, db) for db in (APP_DB, "zapp")}
    failing_migration_sql("zapp")  # app (first) commits 0.2.0, zapp fails and rolls back its transaction

    dr, states = run(MIGRATION, ext_conf(c))
    assert dr.state == "failed" and states["upgrade.update_extension"] == "failed", states
    assert states["trigger_rollback"] == "success", states
    with connect(c, APP_DB) as conn:
        assert PROFILE.installed_version(conn) == "0.2.0"
    with connect(c, "zapp") as conn:
        assert PROFILE.installed_version(conn) == "0.1.5"
        assert [t["enabled"] for t in catalog.prefixed_triggers(conn, "pg_tviews_")] == ["D"]  # disabled by the run

    rb, rstates = run_triggered_rollback(ROLLBACK, dr.run_id)
    assert rb.state == "success", rstates
    decision = RunState.for_run(ROLLBACK, rb.run_id, STATE).load("decision")
    assert decision["path"] == "restore" and decision["restore"] == [APP_DB], decision
    assert decision["triggers"] == [APP_DB, "zapp"]
    for db in (APP_DB, "zapp"):
        after = db_state(c, db)
        assert after["version"] == after["reported"] == "0.1.5"
        assert after["metadata"] == before[db]["metadata"], db
        assert after["triggers"] == before[db]["triggers"], db
        assert after["tables"] == before[db]["tables"], db
    assert {t["trigger_name"]: t["enabled"] for t in before[APP_DB]["triggers"]} == {
        "pg_tviews_tv_customers_trg": "D",
        "pg_tviews_tv_order_totals_trg": "O",
    }
    rep = report_of(STATE, ROLLBACK, rb.run_id)
    assert rep["rollback_path"] == "restore" and "committed" in rep["rollback_reason"]
    assert not lock_file(c).exists()


def test_minor_update_0_1_5_to_0_1_6_by_command(pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = pool.new("16")
    calls = tmp_path / "calls.txt"
    script = tmp_path / "install-extension"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')  # the files of every version are already in place
    script.chmod(0o755)
    monkeypatch.setenv(
        "AIRFLOW_VAR_" + fields.INSTALL_COMMAND_VARIABLE.upper(), json.dumps([str(script), "{extname}", "{version}"])
    )
    with connect(c, APP_DB) as conn:
        triggers = catalog.prefixed_triggers(conn, "pg_tviews_")

    dr, states = run(MINOR, ext_conf(c, extension_source="command"))
    assert_green(dr, states)
    assert calls.read_text().split("\n")[0] == "pg_tviews 0.1.6"
    with connect(c, APP_DB) as conn:
        assert PROFILE.installed_version(conn) == "0.1.6" and PROFILE.reported_version(conn) == "0.1.6"
        assert catalog.prefixed_triggers(conn, "pg_tviews_") == triggers
        assert scalar(conn, "SELECT count(*) FROM pg_proc WHERE proname = 'pg_tviews_refresh_async'") == 1
        assert scalar(conn, "SELECT count(*) FROM tv_order_totals") == 37
    state = RunState.for_run(MINOR, dr.run_id, STATE)
    assert state.load("plan")["compat"] == []
    assert not lock_file(c).exists()


def test_late_failure_keeps_the_new_version_unless_data_loss_is_accepted(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after every update committed, before the triggers came back (PGUPGRADE_INJECT_FAILURE). A client
    wrote after the backup: the automatic rollback does not restore (path keep_new): it gives the triggers back,
    checks 0.2.0 as the update run does, and fails all the same saying so (lock kept as needs attention); the
    operator clears the lock and re-runs it with accept_data_loss: the backup is restored (the dump's CREATE
    EXTENSION creates 0.1.5 again) and the database is exactly as before the run."""
    c = pool.new("18")
    before = db_state(c, APP_DB)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "enable_triggers")
    conf = ext_conf(c)
    dr, states = run(MIGRATION, conf)
    assert dr.state == "failed" and states["reenable.enable_triggers"] == "failed", states
    assert states["trigger_rollback"] == "success", states
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    with connect(c, APP_DB) as conn, conn.cursor() as cur:
        assert PROFILE.installed_version(conn) == "0.2.0"
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('late', 1)")  # a client, after the backup
    assert db_state(c, APP_DB)["triggers"] != before["triggers"]  # the run left them disabled

    rb, rstates = run_triggered_rollback(ROLLBACK, dr.run_id)
    assert rb.state == "failed" and rstates["verify"] == "failed", rstates
    assert rstates["restore_databases"] == rstates["restore_triggers"] == "success", rstates
    rstate = RunState.for_run(ROLLBACK, rb.run_id, STATE)
    assert rstate.load("decision")["path"] == "keep_new"
    error = next(e["error"] for e in rstate.events() if e["event"] == "step" and e["status"] == "failed")
    assert "a restore would undo changes made after the backup" in error and "it passes" in error, error
    kept = db_state(c, APP_DB)
    assert kept["version"] == kept["reported"] == "0.2.0" and kept["triggers"] == before["triggers"], kept
    assert "needs_attention" in json.loads(lock_file(c).read_text())
    lock_file(c).unlink()  # the operator looked, and accepts losing the late write

    rb, rstates = run(ROLLBACK, {"upgrade_dag_id": MIGRATION, "upgrade_run_id": dr.run_id, "accept_data_loss": True,
                                 "postgres_conn_id": conf["postgres_conn_id"], "reason": "test"})  # fmt: skip
    assert rb.state == "success", rstates
    decision = RunState.for_run(ROLLBACK, rb.run_id, STATE).load("decision")
    assert decision["restore"] == [APP_DB], decision
    after = db_state(c, APP_DB)
    assert after["version"] == after["reported"] == "0.1.5"
    assert (after["metadata"], after["triggers"], after["tables"]) == (
        before["metadata"],
        before["triggers"],
        before["tables"],
    )
    assert not lock_file(c).exists()
