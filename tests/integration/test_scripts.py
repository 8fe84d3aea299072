"""The standalone scripts — include/scripts/pre-upgrade-checks.sh (bash + psql) and
include/sql/post-upgrade-validation.sql (psql -f) — against real PostgreSQL 15.18 servers seeded with the pg_tviews
stand-in; the seed's "Verification Commands" adapted to this project; and every task of every DAG documented on
its generated guide page.

Where the seed differs: its scripts live in docs/operations/upgrade/scripts/; here docs/operations/upgrade/ holds
only pages that docs/generate/ writes (tests/test_docs.py refuses any other page there), and the scripts live in
include/ — next to the library and in the Docker image — so the verification checks them at those paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgupgrade.cluster import Cluster, Service
from pgupgrade.sql import connect

from pgharness import APP_DB, BACKING, HOST, OS_USER, Pool

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "include" / "scripts" / "pre-upgrade-checks.sh"
VALIDATION = ROOT / "include" / "sql" / "post-upgrade-validation.sql"
DOCS = ROOT / "docs" / "operations" / "upgrade"
VERSION = "15.18"


# -- helpers -------------------------------------------------------------------------------------------------------


def pg_env(cluster: Cluster, dbname: str = APP_DB) -> dict[str, str]:
    """The script's whole interface to the server: libpq variables (trust auth on the socket, no password)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        {"PGHOST": cluster.host, "PGPORT": str(cluster.port), "PGUSER": OS_USER, "PGDATABASE": dbname, "LC_ALL": "C"}
    )
    return env


def make_backup(cluster: Cluster, pool: Pool) -> Path:
    """A real, recent backup: pg_dump -Fc of the app database, run as postgres into a directory it owns."""
    backups = pool.root / f"backups-{cluster.name}"
    backups.mkdir(exist_ok=True)
    shutil.chown(backups, OS_USER, OS_USER)
    target = backups / "app.dump"
    argv = [cluster.bin("pg_dump"), "-h", cluster.host, "-p", str(cluster.port), "-U", OS_USER, "-Fc"]
    HOST.run(
        [*argv, "-f", str(target), APP_DB],
        user=OS_USER,
        timeout=60,
    )
    return target


def pre_checks(cluster: Cluster, backup: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(SCRIPT), "--backup", str(backup), "--psql", cluster.bin("psql"), *args],
        env=pg_env(cluster),
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(res.stdout, res.stderr, sep="\n")
    return res


def validate(cluster: Cluster, dbname: str = APP_DB, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [cluster.bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", *args, "-f", str(VALIDATION)],
        env=pg_env(cluster, dbname),
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(res.stdout, res.stderr, sep="\n")
    return res


def execute(cluster: Cluster, *statements: str, dbname: str = APP_DB) -> None:
    with connect(cluster, dbname) as conn, conn.cursor() as cur:
        for stmt in statements:
            cur.execute(stmt)


def queue_size(cluster: Cluster) -> int:
    with connect(cluster, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tviews_get_queue()")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy(pool: Pool) -> Iterator[tuple[Cluster, Path]]:
    """A seeded cluster with an empty queue and a fresh backup; tests using it change nothing."""
    cluster = pool.new(VERSION)
    execute(cluster, "SELECT pg_tviews_drain_queue()")
    assert queue_size(cluster) == 0
    yield cluster, make_backup(cluster, pool)
    Service(cluster, HOST).stop()


@pytest.fixture
def scratch(pool: Pool) -> Iterator[Cluster]:
    """A seeded cluster a test may break; stopped afterwards (the pool removes it at the end of the session)."""
    cluster = pool.new(VERSION)
    execute(cluster, "SELECT pg_tviews_drain_queue()")
    yield cluster
    Service(cluster, HOST).stop()


# -- pre-upgrade-checks.sh -----------------------------------------------------------------------------------------


def test_pre_upgrade_checks_pass_on_a_healthy_cluster(healthy):
    cluster, backup = healthy
    res = pre_checks(cluster, backup)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAIL" not in res.stdout
    assert "READY: all checks passed" in res.stdout
    # what it looked at: every database, the extension where it is installed, both filesystems, the backup
    for expected in (
        "server is a primary",
        "database reporting:",
        "app: extension pg_tviews 0.1.5 installed",
        "app: 2 TVIEWs",
        "app: queue empty",
        "app: no metadata errors",
        "free space for data: ",
        f"on the filesystem of {cluster.datadir}",
        f"on the filesystem of {backup.parent}",
        f"backup {backup}",
    ):
        assert expected in res.stdout, expected
    assert "reporting: extension" not in res.stdout  # no extension there: no extension checks


def test_pre_upgrade_checks_fail_without_backup(healthy):
    cluster, backup = healthy
    res = pre_checks(cluster, backup.parent / "no-such-backup.dump")
    assert res.returncode == 1
    assert "FAIL: backup missing" in res.stdout
    assert "NOT READY: 1 check(s) failed" in res.stdout


def test_pre_upgrade_checks_fail_on_old_backup_and_too_little_space(healthy, tmp_path):
    cluster, backup = healthy
    old = backup.parent / "old.dump"
    shutil.copy2(backup, old)
    two_days_ago = old.stat().st_mtime - 48 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    try:
        res = pre_checks(cluster, old, "--max-backup-age-hours", "24")
        assert res.returncode == 1
        assert re.search(r"FAIL: backup too old \(.*48 h old, at most 24 h", res.stdout), res.stdout
        assert pre_checks(cluster, old, "--max-backup-age-hours", "72").returncode == 0
    finally:
        old.unlink()
    # the disk check measures the given directories' filesystems, and asks for what --min-free-gb says
    res = pre_checks(cluster, backup, "--min-free-gb", str(10**9), "--data-dir", str(tmp_path))
    assert res.returncode == 1
    assert "FAIL: not enough free space for data: " in res.stdout
    assert f"on the filesystem of {tmp_path}, need {10**9} GiB" in res.stdout
    assert "FAIL: not enough free space for backup: " in res.stdout


def test_pre_upgrade_checks_fail_when_the_queue_is_not_empty(scratch, pool):
    backup = make_backup(scratch, pool)
    execute(scratch, f"INSERT INTO {BACKING} (customer, amount) VALUES ('probe', 1)")  # the trigger enqueues
    assert queue_size(scratch) == 1
    res = pre_checks(scratch, backup)
    assert res.returncode == 1
    assert "FAIL: app: queue not empty (1 entries)" in res.stdout
    assert "NOT READY: 1 check(s) failed" in res.stdout
    # and the post-upgrade validation refuses the same state
    res = validate(scratch)
    assert res.returncode != 0
    assert "queue not empty (1 entries)" in res.stderr


def test_pre_upgrade_checks_fail_when_the_server_is_down(pool, tmp_path):
    cluster = pool.new(VERSION, seed=False)
    Service(cluster, HOST).stop()
    backup = tmp_path / "b.dump"
    backup.write_text("x")
    res = pre_checks(cluster, backup)
    assert res.returncode == 1
    assert "FAIL: server not reachable" in res.stdout
    assert "FAIL: free space of the data directory not checked" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--backup PATH is required"),
        (["--backup", "/x", "--frobnicate"], "unknown argument: --frobnicate"),
        (["--backup", "/x", "--max-backup-age-hours", "a day"], "--max-backup-age-hours must be"),
        (["--backup", "/x", "--min-free-gb", "-1"], "--min-free-gb must be"),
        (["--backup"], "option --backup needs a value"),
        (["--backup", "/x", "--psql", "/nonexistent/psql"], "psql not found"),
    ],
)
def test_pre_upgrade_checks_usage_errors_exit_2(args, message):
    res = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "FAIL" not in res.stdout  # no check ran


def test_pre_upgrade_checks_help_and_shellcheck():
    res = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "--backup PATH" in res.stdout
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    res = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout


# -- post-upgrade-validation.sql -----------------------------------------------------------------------------------


def test_post_upgrade_validation_passes_on_a_healthy_cluster(healthy):
    cluster, _ = healthy
    res = validate(cluster)
    assert res.returncode == 0, res.stderr
    for check in ("server not in recovery", "no invalid indexes", "no disabled pg_tviews_* triggers"):
        assert f"PASS  {check}" in res.stderr
    assert "PASS  pg_tviews version readable: 0.1.5" in res.stderr
    assert "PASS  queue empty" in res.stderr
    assert "FAIL" not in res.stderr
    # a database without the extension: the generic checks only
    res = validate(cluster, "reporting")
    assert res.returncode == 0, res.stderr
    assert "PASS  no invalid indexes" in res.stderr
    assert "extension pg_tviews is not installed in database reporting" in res.stderr


def test_post_upgrade_validation_fails_on_metadata_errors(scratch):
    execute(scratch, "UPDATE pg_tviews_metadata SET last_error = 'x' WHERE entity_name = 'tv_order_totals'")
    res = validate(scratch)
    assert res.returncode == 3  # psql: an error with ON_ERROR_STOP
    assert "post-upgrade validation of database app failed" in res.stderr
    assert "tv_order_totals (error: x)" in res.stderr
    assert "tv_customers" not in res.stderr.split("ERROR:")[1]
    # the names come from psql variables: with an error column that is always NULL the same state passes
    execute(scratch, "ALTER TABLE pg_tviews_metadata ADD COLUMN never_set text")
    assert validate(scratch, APP_DB, "-v", "error_column=never_set").returncode == 0


def test_post_upgrade_validation_fails_on_a_disabled_trigger_and_an_invalid_index(scratch):
    with connect(scratch, APP_DB) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal"
            " AND tgname LIKE 'pg\\_tviews\\_%%'",
            (BACKING,),
        )
        names = [r[0] for r in cur.fetchall()]
    assert len(names) == 1, names
    execute(scratch, f'ALTER TABLE {BACKING} DISABLE TRIGGER "{names[0]}"')
    res = validate(scratch)
    assert res.returncode == 3
    assert f"disabled pg_tviews_* triggers: {BACKING}.{names[0]}" in res.stderr
    # a second problem is listed in the same error, not hidden behind the first
    execute(
        scratch,
        "CREATE TABLE dup (x int)",
        "INSERT INTO dup VALUES (1), (1)",
    )
    subprocess.run(
        [scratch.bin("psql"), "-X", "-c", "CREATE UNIQUE INDEX CONCURRENTLY dup_x ON dup (x)"],
        env=pg_env(scratch),
        capture_output=True,
        timeout=60,
    )  # fails on the duplicate and leaves an invalid index behind
    res = validate(scratch)
    assert res.returncode == 3
    error = res.stderr.split("ERROR:")[1]
    assert "invalid indexes: dup_x" in error and "disabled pg_tviews_* triggers" in error


# -- the seed's "Verification Commands", adapted ------------------------------------------------------------------


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate" / "__init__.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


@pytest.mark.parametrize(
    "page",
    ["postgresql/minor-version-upgrade.md", "postgresql/pg15-to-pg16.md", "extension/0.1-to-0.2-migration.md"],
)
def test_seed_guides_exist(page):
    assert (DOCS / page).is_file()


def test_seed_scripts_exist_and_are_executable():
    # the seed's docs/operations/upgrade/scripts/ → include/ (see the module docstring)
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)
    assert VALIDATION.is_file()


@pytest.mark.parametrize("page", gen.GUIDES)
def test_seed_guides_have_required_sections(page):
    # the seed's grep -q over every guide; pages that are not procedures (index, troubleshooting, compatibility
    # tables: Page.guide=False in docs/generate/pages.py) have no rollback of their own and are left out
    text = (DOCS / page).read_text()
    missing = [s for s in ("Prerequisites", "Rollback", "Success Criteria") if s not in text]
    assert not missing, f"{page} lacks {missing}"


# -- every task of every DAG on its guide page ---------------------------------------------------------------------

DUMP_TASKS = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    out = {"errors": {k: str(v)[:500] for k, v in bag.import_errors.items()},
           "dags": {d.dag_id: {"tasks": [[t.task_id, t.task_group.group_id if t.task_group else None]
                                         for t in d.tasks],
                               "triggers": [t.trigger_dag_id for t in d.tasks if getattr(t, "trigger_dag_id", None)]}
                    for d in bag.dags.values()}}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def dag_tasks() -> dict:
    res = subprocess.run(
        [sys.executable, "-c", DUMP_TASKS, str(ROOT / "dags")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"},
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, res.stderr[-3000:]
    out = json.loads(line[len("RESULT") :])
    assert not out["errors"], out["errors"]
    return out["dags"]


def pages_of(dags: dict) -> dict[str, list[str]]:
    """DAG id → the generated pages that document it: its own page, the pages of the upgrade DAGs whose rollback
    it is (rendered in their Rollback section), the pages that list it under 'After the upgrade'."""
    out: dict[str, list[str]] = {}
    for page in gen.PAGES:
        if not page.dag or page.dag not in dags:
            continue
        out.setdefault(page.dag, []).append(page.path)
        for rollback in dags[page.dag]["triggers"][:1]:  # generate.dags.rollback_of: the first trigger
            out.setdefault(rollback, []).append(page.path)
        for after in page.after:
            out.setdefault(after, []).append(page.path)
    return out


def test_every_dag_has_a_guide_page(dag_tasks):
    undocumented = sorted(set(dag_tasks) - set(pages_of(dag_tasks)))
    assert not undocumented, f"DAGs no generated page documents: {undocumented}"


def test_every_task_id_appears_on_its_guide_page(dag_tasks):
    missing = []
    for dag_id, pages in pages_of(dag_tasks).items():
        for page in pages:
            text = (DOCS / page).read_text()
            for task_id, group in dag_tasks[dag_id]["tasks"]:
                short = task_id[len(group) + 1 :] if group else task_id
                # a row of a task table (generate.dags.tasks_section): | n | `short` | ...
                if not re.search(rf"^\| \d+ \| `{re.escape(short)}` \|", text, re.M):
                    missing.append(f"{page}: {dag_id}.{task_id}")
                if group and f"**{group}** (task group)" not in text:
                    missing.append(f"{page}: {dag_id} task group {group}")
    assert not missing, "tasks missing from their guide pages:\n" + "\n".join(missing)
