"""Runs recorded before a change are still rolled back the same way after it.

Each directory of tests/fixtures/rollback/ holds what one real failed run of the code of its time left for its
rollback (its run documents: journal, plan, facts, backup manifest, ...), what the disk or the server showed
when that rollback decided, and the decision the real rollback run saved. Here the run's state is laid out
under a fresh PGUPGRADE_STATE_DIR where the state store of that time kept it, the disk (major, minor) or a
server (extension) is rebuilt to show the same, and the function the rollback DAG's ``assess`` task calls must
reach the same decision.

Placeholders in the fixture files: ``{{HOME}}`` the old cluster's home (its data directory is ``{{HOME}}/data``),
``{{POOL}}`` the test session's directory, ``{{CLUSTER}}`` the cluster's name, ``"{{PORT}}"`` its port.
How they were made: case.json's ``scenario`` and ``captured_with``.
"""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql as psql

# -- the library under test, all in this block (the pgupgrade imports): the one place to adapt when modules move
from pgupgrade import recovery  # wal_bridge, data_loss_risks: the major rollback's restore
from pgupgrade.cluster import Cluster
from pgupgrade.commands import LocalHost
from pgupgrade.context import RunContext
from pgupgrade.extension import rollback as extension_rollback  # assess(ctx): pg_tviews_extension_rollback's assess
from pgupgrade.major import rollback as major_rollback  # decide(...): pg_major_upgrade_rollback's assess
from pgupgrade.minor import rollback as minor_rollback  # assess(ctx): pg_minor_upgrade_rollback's assess
from pgupgrade.profiles import get as extension_profile
from pgupgrade.sql import connect, fetch
from pgupgrade.state import RunState

from pgharness import Pool

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rollback"
PATHS = ["old_running", "old_intact", "restore_pg_control", "restore_backup", "previous_release", "keep_new"]
PORT = 5432  # the major and minor decisions connect to nothing; the extension case uses its server's port


def read(path: Path, subs: dict[str, str]) -> str:
    text = path.read_text()
    for placeholder, value in subs.items():
        text = text.replace(placeholder, value)
    assert "{{" not in text, f"{path}: a placeholder this test does not know"
    return text


def lay_out_state(case: dict[str, Any], src: Path, root: Path, subs: dict[str, str]) -> RunState:
    """The upgrade run's documents, byte for byte (placeholders filled), where the state store kept them."""
    up = RunState.for_run(case["upgrade_dag_id"], case["upgrade_run_id"], root)
    # old runs stay where the state store of their time put them: the layout must not move
    assert up.dir == root / case["state_dir"], f"the state store looks in {up.dir}, old runs are in {case['state_dir']}"
    up.dir.mkdir(parents=True)
    for f in sorted((src / "state").iterdir()):
        (up.dir / f.name).write_text(read(f, subs))
    return up


def lay_out_disk(layout: dict[str, Any]) -> None:
    """The files the rollback looks at in the old and new data directories: present (empty, or PG_VERSION's
    text) or absent, as they were when the real rollback decided."""
    for datadir, spec in layout.items():
        if not spec["exists"]:
            continue
        for rel, there in spec["files"].items():
            path = Path(datadir, rel)
            if there is False:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{there}\n" if isinstance(there, str) else "")


def rebuild_server(pool: Pool, server: dict[str, Any]) -> Cluster:
    """A server of the recorded major with, per database, the extension at the version it had and every table the
    rollback compares with the backup, with the recorded row count and write counter (inserts + updates)."""
    assert server["running"], "the recorded rollback found no server running: not rebuilt here"
    cluster = pool.new(str(server["server_version_num"] // 10000), seed=False)
    for db, spec in server["databases"].items():
        with connect(cluster) as conn, conn.cursor() as cur:
            cur.execute(psql.SQL("CREATE DATABASE {}").format(psql.Identifier(db)))
        with connect(cluster, db) as conn, conn.cursor() as cur:
            cur.execute("CREATE EXTENSION pg_tviews VERSION %s", (spec["extension_version"],))
            for table, t in spec["tables"].items():
                schema, name = table.split(".", 1)
                rel = psql.Identifier(schema, name)
                cur.execute(psql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psql.Identifier(schema)))
                cur.execute(psql.SQL("CREATE TABLE {} (n int)").format(rel))
                cur.execute(psql.SQL("INSERT INTO {} SELECT generate_series(1, %s)").format(rel), (t["rows"],))
                extra = t["writes"] - t["rows"]
                assert extra >= 0, f"{db}.{table}: fewer writes than rows recorded: cannot rebuild"
                while extra > 0:
                    cur.execute(psql.SQL("UPDATE {} SET n = n WHERE n <= %s").format(rel), (extra,))
                    extra -= cur.rowcount
            cur.execute("SELECT pg_stat_force_next_flush()")
        want = {t: s["writes"] for t, s in spec["tables"].items()}
        deadline = time.monotonic() + 30
        while True:  # statistics reach the shared counters a moment after the writes
            with connect(cluster, db) as conn:
                rows = fetch(conn, "SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del"
                                   " FROM pg_stat_user_tables")  # fmt: skip
            got = {t: int(w) for t, w in rows if t in want}
            if got == want or time.monotonic() > deadline:
                assert got == want, f"write counters of the rebuilt {db}: {got}, recorded {want}"
                break
            time.sleep(0.2)
    return cluster


@pytest.mark.parametrize("path", PATHS)
def test_recorded_run_rolls_back_the_same_way(path: str, tmp_path: Path, request: pytest.FixtureRequest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    src = FIXTURES / path
    case = json.loads((src / "case.json").read_text())
    assert case["path"] == path
    root = tmp_path / "state"
    monkeypatch.setenv("PGUPGRADE_STATE_DIR", str(root))
    host = LocalHost()
    if case["kind"] == "extension":
        cluster = rebuild_server(request.getfixturevalue("pool"), json.loads((src / "server.json").read_text()))
        home, port = Path(cluster.datadir).parent, cluster.port
    else:
        home, port = tmp_path / "home", PORT
        cluster = Cluster(
            name="fixture",
            host=str(home / "sock"),
            port=port,
            dbname="postgres",
            user="postgres",
            bindir=case["old_cluster"]["bindir"],
            datadir=str(home / "data"),
            os_user=getpass.getuser(),  # the rebuilt files are this user's, in a directory only it may enter
        )
    subs = {"{{HOME}}": str(home), "{{POOL}}": str(tmp_path), "{{CLUSTER}}": cluster.name, '"{{PORT}}"': str(port)}
    up = lay_out_state(case, src, root, subs)
    if (src / "disk.json").exists():
        lay_out_disk(json.loads(read(src / "disk.json", subs)))
    expected = json.loads(read(src / "decision.json", subs))
    params = case["rollback_params"]
    rollback_state = RunState.for_run(case["rollback_dag_id"], case["rollback_run_id"], root)

    if case["kind"] == "major":
        decision = major_rollback.decide(up, cluster, host, accept_data_loss=params["accept_data_loss"])
    else:
        rc = RunContext(
            dag_id=case["rollback_dag_id"],
            run_id=case["rollback_run_id"],
            params=params,
            cluster=cluster,
            host=host,
            state=rollback_state,
            profile=extension_profile("pg_tviews"),
        )
        assess = minor_rollback.assess if case["kind"] == "minor" else extension_rollback.assess
        decision = assess(rc)
    assert decision == expected

    if "restore_from_backup" in case:  # restore_backup: the way the real rollback then took
        way = case["restore_from_backup"]
        bridge = recovery.wal_bridge(up, cluster.datadir, host)
        assert (bridge is not None) == (way["way"] == "base_backup_and_wal"), bridge
        risks = recovery.data_loss_risks(up, decision.get("opened_changes"), bridged=bridge is not None)
        assert (bool(risks) and not way["accept_data_loss"]) == way["refused"], risks
