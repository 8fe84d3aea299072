"""Hostile trigger confs through real DAG runs (dag.test) of the major, minor and extension DAGs, on one shared
cluster: each is refused before any side effect — the journal records no change, the server was never restarted,
the cluster lock is free again, no backup directory appeared — and the canary file that an injection would
create never appears. CI runs six of them; PGUPGRADE_RELIABILITY_FULL=1 all 21. (The 1,200 generated confs against
the validation alone are in tests/unit/test_params.py.)"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import fault_matrix  # noqa: F401  (puts tests/integration on the path)
import pytest

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import run
from conftest import register_connection
from pgharness import APP_DB, Pool, installation, lock_of

pytestmark = pytest.mark.usefixtures("airflow_home")
MAJOR, MINOR, EXT = "pg15_to_pg16_upgrade", "pg_minor_upgrade", "pg_tviews_0_1_to_0_2_migration"
SHORT = {MAJOR: "major", MINOR: "minor", EXT: "ext"}
CANARY = Path(f"/tmp/pgupgrade-canary-{os.getpid()}")
TOUCH = f"touch {CANARY}"

FULL = os.environ.get("PGUPGRADE_RELIABILITY_FULL") == "1"


# Each refused dag.test run costs 10-25 s of Airflow overhead (bundle sync, 40 tasks marked upstream_failed): CI
# runs the six marked ci=True (every DAG, shell and SQL injection, an unknown key, new = old data directory);
# PGUPGRADE_RELIABILITY_FULL=1 runs all 21.
def case(dag_id: str, over: dict[str, Any], *, ci: bool = False) -> Any:
    skip = pytest.mark.skipif(not (ci or FULL), reason="PGUPGRADE_RELIABILITY_FULL=1 runs it")
    return pytest.param(dag_id, over, marks=[skip])


# (dag, conf overrides) — {old} is the cluster's data directory, {home} its parent
HOSTILE = [
    case(MAJOR, {"backup_dir": f"/tmp/x; {TOUCH}"}, ci=True),
    case(MAJOR, {"new_datadir": f"/tmp/$({TOUCH})"}),
    case(MAJOR, {"new_bindir": f"/tmp/`{TOUCH}`"}),
    case(MAJOR, {"backup_dir": '/tmp/it\'s "quoted"'}),
    case(MAJOR, {"new_datadir": "/tmp/data\x0016"}),
    case(MAJOR, {"new_datadir": "{home}/../../etc/pg"}),
    case(MAJOR, {"new_datadir": "data16"}),
    case(MAJOR, {"backup_dir": "/" + "a" * 5000}),
    case(MAJOR, {"new_datadir": "{old}"}, ci=True),  # the same directory as the old cluster
    case(MAJOR, {"postgres_conn_id": 'x"; DROP TABLE orders; --'}, ci=True),
    case(MAJOR, {"transfer_mode": f"link; {TOUCH}"}),
    case(MAJOR, {"pg_upgrade_options": f"--new-options=-c archive_command='{TOUCH}'"}),  # unknown key
    case(MINOR, {"target_version": f"15.20; {TOUCH}"}, ci=True),
    case(MINOR, {"new_bindir": "/opt/pgbin/15.20/../../../bin"}),
    case(MINOR, {"backup_dir": f"/tmp/b|{TOUCH}"}),
    case(MINOR, {"install_command": ["sh", "-c", TOUCH]}, ci=True),  # install commands are admin configuration
    case(EXT, {"databases": ['app"; DROP TABLE orders; --']}, ci=True),
    case(EXT, {"target_version": "0.2.0'; DROP EXTENSION pg_tviews; --"}),
    case(EXT, {"extension_profile": "../../../etc/passwd"}),
    case(EXT, {"databases": [APP_DB, "$(" + TOUCH + ")"]}),
    case(MAJOR, {"window_end": "$(" + TOUCH + ")"}),
]


@pytest.fixture(scope="module")
def target(pool: Pool) -> Cluster:
    return pool.new("15.18")


def started_at(cluster: Cluster) -> Any:
    with connect(cluster) as conn:
        return scalar(conn, "SELECT pg_postmaster_start_time()")


def base_conf(dag_id: str, cluster: Cluster) -> dict[str, Any]:
    home = Path(cluster.datadir).parent
    conf: dict[str, Any] = {"postgres_conn_id": register_connection(cluster), "backup_dir": str(home / "backup")}
    if dag_id == MAJOR:
        conf |= {"new_bindir": installation("16").bindir, "new_datadir": str(home / "data16")}
    elif dag_id == MINOR:
        conf |= {"installer": "bindir", "target_version": "15.20", "new_bindir": installation("15.20").bindir}
    return conf


def fill(value: Any, cluster: Cluster) -> Any:
    if isinstance(value, str):
        return value.replace("{old}", cluster.datadir).replace("{home}", str(Path(cluster.datadir).parent))
    return value


@pytest.mark.parametrize(("dag_id", "over"), HOSTILE, ids=[f"{SHORT[p.values[0]]}-{i}" for i, p in enumerate(HOSTILE)])
def test_hostile_conf_is_refused_before_any_side_effect(target: Cluster, dag_id: str, over: dict[str, Any]) -> None:
    since = started_at(target)
    conf = {**base_conf(dag_id, target), **{k: fill(v, target) for k, v in over.items()}}
    started = time.monotonic()
    try:
        dr, states = run(dag_id, conf)
    except Exception as exc:  # Airflow's own param validation (types) refuses before a run exists
        assert "ParamValidation" in type(exc).__name__, exc
        states, dr = {}, None
    if dr is not None:
        assert dr.state == "failed", states
        failed = {t for t, s in states.items() if s == "failed"} - {"finish"}
        assert failed and all(t.rsplit(".", 1)[-1] in ("validate_params", "plan") for t in failed), states
        assert states.get("trigger_rollback") in ("skipped", None), states
        assert RunState.for_run(dag_id, dr.run_id).side_effects() == []
    assert not CANARY.exists(), f"an injection ran: {CANARY}"
    assert started_at(target) == since, "the server was restarted"
    assert lock_of(target).holder() is None
    assert not Path(target.datadir).parent.joinpath("backup").exists()
    assert not Path(target.datadir).parent.joinpath("data16").exists()
    with connect(target, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") == 1000
        assert scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews'") == "0.1.5"
    print(f"{dag_id} {sorted(over)}: refused in {time.monotonic() - started:.1f}s")
