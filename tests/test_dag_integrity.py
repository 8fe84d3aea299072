"""Every DAG file imports cleanly, touches no database or network while parsing, and is documented."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARSE = textwrap.dedent(
    """
    import json, socket, sys, time
    calls = []
    def refuse(*a, **k):
        calls.append(repr(a)[:200])
        raise OSError("network access at parse time")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    import psycopg2
    psycopg2.connect = refuse
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    elapsed = time.perf_counter() - started
    from airflow.serialization.serialized_objects import DagSerialization
    def serializes(dag):
        try:
            DagSerialization.to_dict(dag)  # what the dag-processor stores for the scheduler and the UI
            return ""
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:2000]
    out = {"errors": {k: str(v)[:2000] for k, v in bag.import_errors.items()}, "calls": calls, "seconds": elapsed,
           "dags": {d.dag_id: {"tags": sorted(d.tags), "doc": bool(d.doc_md and len(d.doc_md) > 200),
                               "owner": d.owner, "paused": d.is_paused_upon_creation,
                               "tasks": [t.task_id for t in d.tasks],
                               "triggers": [t.trigger_dag_id for t in d.tasks if hasattr(t, "trigger_dag_id")],
                               "params": {k: {**v.schema, "description": v.description} for k, v in d.params.items()},
                               "serialization_error": serializes(d)}
                    for d in bag.dags.values()}}
    print("RESULT" + json.dumps(out, default=str))
    """
)
# Every DAG of dags/, so that each gets its own test id at collection (one failing DAG does not hide the others)
# without importing Airflow or parsing the folder at collection: the ids are built by code (loops, library
# constants), so they are listed here, and test_every_parsed_dag_is_listed fails when a DAG is added or removed.
DAG_IDS = [
    "pg15_to_pg16_upgrade",
    "pg16_to_pg17_upgrade",
    "pg17_to_pg18_upgrade",
    "pg_major_upgrade",
    "pg_major_upgrade_cleanup",
    "pg_major_upgrade_rollback",
    "pg_minor_upgrade",
    "pg_minor_upgrade_rollback",
    "pg_preflight_checks",
    "pg_tviews_0_1_to_0_2_migration",
    "pg_tviews_extension_rollback",
    "pg_tviews_minor_update",
]


@pytest.fixture(scope="module")
def parsed(airflow_home):
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PARSE, str(ROOT / "dags")], capture_output=True, text=True, check=True)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    total = time.perf_counter() - started
    print(f"\nparse time of dags/: {out['seconds']:.2f}s in-process ({total:.2f}s with interpreter start-up)")
    return out


def dag(parsed, dag_id):
    assert dag_id in parsed["dags"], f"{dag_id} was not parsed (see test_every_dag_file_imports)"
    return parsed["dags"][dag_id]


def test_every_dag_file_imports(parsed):
    assert parsed["errors"] == {}
    files = sorted(p.name for p in (ROOT / "dags").glob("*.py"))
    assert files and parsed["dags"]


def test_no_database_or_network_access_at_parse_time(parsed):
    assert parsed["calls"] == []


def test_every_parsed_dag_is_listed(parsed):
    assert sorted(parsed["dags"]) == DAG_IDS, "DAG_IDS must name every DAG of dags/, so that each is checked below"


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_every_dag_has_tags_docs_owner(parsed, dag_id):
    d = dag(parsed, dag_id)
    assert d["tags"], dag_id
    assert d["doc"], f"{dag_id} has no runbook doc_md"
    assert d["owner"] == "dba", dag_id


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_rollback_wiring(parsed, dag_id):
    dags = parsed["dags"]
    d = dag(parsed, dag_id)
    if "rollback" in dag_id or "cleanup" in dag_id or "preflight" in dag_id:
        assert "rollback" not in dag_id or d["paused"] is False, f"{dag_id} must be unpaused on creation"
        return
    assert d["paused"] is True, f"{dag_id}: upgrade DAGs are paused on creation"
    assert d["triggers"] and all(t in dags for t in d["triggers"]), f"{dag_id} triggers {d['triggers']}"
    assert {"handover_lock", "trigger_rollback", "finish"} <= set(d["tasks"]), dag_id


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_serializes_for_the_scheduler(parsed, dag_id):
    assert dag(parsed, dag_id)["serialization_error"] == ""


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_params_have_valid_defaults_and_descriptions(parsed, dag_id):
    for name, schema in dag(parsed, dag_id)["params"].items():
        assert schema.get("type"), f"{dag_id}.{name} has no type"
        assert schema.get("description"), f"{dag_id}.{name} has no description"


def test_major_dags_exist(parsed):
    assert {
        "pg15_to_pg16_upgrade",
        "pg16_to_pg17_upgrade",
        "pg17_to_pg18_upgrade",
        "pg_major_upgrade",
        "pg_major_upgrade_rollback",
    } <= set(parsed["dags"])
