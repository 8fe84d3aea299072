"""The preflight DAG against real servers: a ready 15.18 cluster and one with a prepared transaction. The cluster
list comes from the file named by PGUPGRADE_CLUSTERS_FILE, read when the DAG file is parsed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import ROOT, report_of
from conftest import register_connection
from pgharness import APP_DB, installation, lock_of

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])
DAG_ID = "pg_preflight_checks"
GID = "pgupgrade_preflight_test"


def _preflight_dag(clusters_file: Path, monkeypatch: pytest.MonkeyPatch):
    """A DagBag of its own (airflow_helpers caches one per session, parsed with the repo's cluster list). The
    variable stays set for the test: dag.test() parses the dags folder again when it syncs it."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PGUPGRADE_CLUSTERS_FILE", str(clusters_file))
    bag = DagBag(dag_folder=str(ROOT / "dags" / "pg_preflight.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAG_ID]


def _states(dr) -> dict[str, list[str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    out: dict[str, list[str]] = {}
    with create_session() as session:
        for ti in session.query(TaskInstance).filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == dr.run_id):
            out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def test_preflight_reports_ready_and_names_the_prepared_transaction(pool, tmp_path, monkeypatch):
    installation("18")  # the stand-in extension in the target installation, as for the upgrade tests
    ready = pool.new("15.18", "pf_ready")
    blocked = pool.new("15.18", "pf_blocked", settings={"max_prepared_transactions": "5"})
    ready_id = register_connection(ready, "preflight_ready")
    blocked_id = register_connection(blocked, "preflight_blocked")
    with connect(blocked, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('prepared', 1)")
        cur.execute(f"PREPARE TRANSACTION '{GID}'")
    clusters_file = tmp_path / "clusters.json"
    clusters_file.write_text(json.dumps({"clusters": [ready_id, blocked_id]}))
    try:
        dag = _preflight_dag(clusters_file, monkeypatch)
        assert dag.params["clusters"] == [ready_id, blocked_id]  # the default came from the file
        assert dag.params["target_major"] == 18
        started = time.perf_counter()
        dr = dag.test(run_conf={})
        print(f"\npreflight of 2 clusters: {time.perf_counter() - started:.1f}s")
        states = _states(dr)
        # both checks ran to the end; the summary fails the run because one cluster would not go ahead
        assert states["validate_params"] == ["success"]
        assert states["check_cluster"] == ["success", "success"], states
        assert states["summary"] == ["failed"] and dr.state == "failed", states

        rep = report_of(STATE, DAG_ID, dr.run_id)
        assert rep["ready"] == [ready_id]
        assert [x["cluster"] for x in rep["not_ready"]] == [blocked_id]
        reasons = " ".join(rep["not_ready"][0]["reasons"])
        assert "would not" not in reasons  # reasons are the plan's own words
        assert f"prepared transaction {GID}" in reasons and "ROLLBACK PREPARED" in reasons, reasons
        by_name = {c["cluster"]: c for c in rep["clusters"]}
        ok = by_name[ready_id]
        assert ok["status"] == "ready" and ok["running"] == "15.18" and ok["major"]["to"].startswith("18.")
        assert ok["major"]["method"] == "pg_upgrade"  # pg_upgrade --check passed against a throwaway cluster
        assert ok["window"]["spec"] == "Sun 02:00\u201304:00 Europe/Berlin"
        assert ok["major"]["outage_estimate_s"] < ok["window"]["seconds"]
        assert ok["extension"]["databases"][APP_DB]["queue"] == 0
        assert "newer_installed" in ok["minor"]  # the minor picture was taken (15.20 when installed)
        assert by_name[blocked_id]["running"] == "15.18" and by_name[blocked_id]["window"] == ok["window"]
        md = Path(rep_paths(dr)["markdown"]).read_text()
        assert "1 ready, 1 would not go ahead" in md and f"| {ready_id} | **ready** | 15.18 | 18." in md
        assert f"| {blocked_id} | **not ready** | 15.18 |" in md and f"prepared transaction {GID}" in md

        # read-only: no lock taken, no new cluster, the prepared transaction and the data untouched
        for c in (ready, blocked):
            assert lock_of(c, STATE).holder() is None
            leftovers = [p.name for p in Path(c.datadir).parent.iterdir() if p.name not in ("data", "sock")]
            assert all(not any(Path(c.datadir).parent.joinpath(n).rglob("*")) for n in leftovers), leftovers
        with connect(blocked) as conn:
            assert scalar(conn, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (GID,)) == 1
        with connect(ready) as conn:
            assert int(scalar(conn, "SHOW server_version_num")) // 10000 == 15
    finally:
        with connect(blocked, APP_DB) as conn, conn.cursor() as cur:
            cur.execute(f"ROLLBACK PREPARED '{GID}'")


def rep_paths(dr) -> dict[str, str]:
    paths: dict[str, str] = RunState.for_run(DAG_ID, dr.run_id, STATE).load("report")
    return paths
