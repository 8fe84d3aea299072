"""Session fixtures: a pool of real PostgreSQL servers and an isolated Airflow home.

Airflow reads its configuration at import time, so the environment is set here, before any test module
imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# the shared checks in the helper modules (data_checks_out, assert_rolled_back, ...) report values as in test modules
pytest.register_assert_rewrite("airflow_helpers", "pgharness")

ROOT = Path(__file__).resolve().parents[1]
_PGBIN = Path(os.environ.get("PGUPGRADE_PGBIN", "/opt/pgbin"))
os.environ.setdefault(  # as include/scripts/env.sh: Debian packages unpacked, and the wheels' copies
    "PGUPGRADE_BINDIRS",
    os.pathsep.join(
        str(p) for p in [*sorted(_PGBIN.glob("*/usr/lib/postgresql/*/bin")), *sorted(_PGBIN.glob("*/*/pginstall/bin"))]
    ),
)
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="pgupgrade-airflow-")
os.environ.update(
    {
        "AIRFLOW_HOME": _AIRFLOW_HOME,
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PGUPGRADE_STATE_DIR": str(Path(_AIRFLOW_HOME) / "pgupgrade-state"),
    }
)

from pgupgrade.cluster import Cluster  # noqa: E402

from pgharness import Pool, connection_env, postmasters_under  # noqa: E402


@pytest.fixture(scope="session")
def pool() -> Iterator[Pool]:
    p = Pool()
    yield p
    p.close()
    left = postmasters_under(p.root)
    p.remove()
    assert not left, f"postmasters left behind: {left}"


@pytest.fixture(scope="session")
def airflow_home() -> str:
    """An isolated AIRFLOW_HOME with its metadata DB migrated once per session."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
    )
    return _AIRFLOW_HOME


def register_connection(cluster: Cluster, conn_id: str | None = None) -> str:
    """Makes the cluster an Airflow connection (environment-variable secrets backend)."""
    name, value = connection_env(cluster, conn_id)
    os.environ[name] = value
    return conn_id or cluster.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The full tier (marker ``full``) runs only with PGUPGRADE_RELIABILITY_FULL=1: CI runs one case of each
    acceptance item, the full tier every combination."""
    if os.environ.get("PGUPGRADE_RELIABILITY_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="full tier: PGUPGRADE_RELIABILITY_FULL=1 runs it")
    for item in items:
        if item.get_closest_marker("full"):
            item.add_marker(skip)
