"""The inventory of commands run as another user, and the sudoers file generated from it.

Two guards keep the inventory complete: the runner refuses a program it does not list before running it (every
integration test that runs a step proves that step's commands listed), and the static scan below reads every
``.run(..., user=...)`` call of the library — also those no test runs (apt, systemd, the cleanup DAG)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgupgrade import privileges
from pgupgrade.cluster import Cluster
from pgupgrade.commands import BASE_ENV
from pgupgrade.minor.installers import APT_ENV
from pgupgrade.privileges import ADMIN_COMMAND, INVENTORY, RunsAs, lookup, require, sudoers

LIBRARY = Path(privileges.__file__).resolve().parent
ROOT_DIR = LIBRARY.parents[1]

# .run(..., user=...) calls whose argv the scan cannot read (built in a variable): what each runs, read by hand.
# A new call of this kind fails the scan until it is added here (and its program to the inventory).
DYNAMIC = {
    "archiving.py:pgbackrest_version": ["pgbackrest"],  # the program as the archive_command names it
    "archiving.py:upgrade_stanza": ["pgbackrest"],
    "archiving.py:_pgbackrest_after_open": ["pgbackrest"],
    "backup.py:restore": ["{bindir}/pg_restore"],
    "backup.py:take_base": ["{bindir}/pg_basebackup"],
    "backup.py:restore_custom": ["{bindir}/pg_restore"],
    "cluster.py:Service.start": ["{bindir}/pg_ctl"],
    "cluster.py:Service.stop": ["{bindir}/pg_ctl"],
    "cluster.py:_Platform.start": ["pg_ctlcluster", "systemctl"],  # PgCtlCluster._argv, Systemd._argv
    "cluster.py:_Platform.stop": ["pg_ctlcluster", "systemctl"],
    "major/plan.py:pg_upgrade_check": ["{bindir}/pg_upgrade"],
    "major/after.py:analyze": ["{bindir}/vacuumdb"],
    "major/transfer.py:run_pg_upgrade": ["{bindir}/pg_upgrade"],
    "major/standbys.py:plan_routes": ["ssh"],  # _ssh_argv
    "major/standbys.py:_sync": ["rsync"],  # rsync_argv
    "major/standbys.py:_ship_wal": ["rsync"],
    "minor/installers.py:apt_install": ["apt-get"],
    "minor/installers.py:run_install_command": [ADMIN_COMMAND],
    "extension/source.py:install_files": [ADMIN_COMMAND],
}


def _program(node: ast.expr) -> str | None:
    """argv[0] of a literal argv list: a literal name, ``x.bin("name")`` or ``f"{bindir}/name"``."""
    if not isinstance(node, ast.List) or not node.elts:
        return None
    first = node.elts[0]
    if isinstance(first, ast.Starred) and isinstance(first.value, ast.List):
        return _program(first.value)
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    if (
        isinstance(first, ast.Call)
        and isinstance(first.func, ast.Attribute)
        and first.func.attr == "bin"
        and first.args
        and isinstance(first.args[0], ast.Constant)
    ):
        return f"{privileges.BINDIR}{first.args[0].value!s}"
    if isinstance(first, ast.JoinedStr) and isinstance(first.values[-1], ast.Constant):
        tail = str(first.values[-1].value)
        if tail.startswith("/") and tail.count("/") == 1:
            return f"{privileges.BINDIR}{tail[1:]}"
    return None


def _calls_as_another_user() -> list[tuple[str, int, str, RunsAs, ast.Call]]:
    """(file, line, enclosing function, role, call) of every ``.run(`` call passing ``user=``."""
    found = []
    for path in sorted(LIBRARY.rglob("*.py")):
        rel = str(path.relative_to(LIBRARY))
        tree = ast.parse(path.read_text())
        stack: list[str] = []

        def visit(node: ast.AST, stack: list[str] = stack, rel: str = rel) -> None:
            named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stack.append(node.name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run":
                user = next((k.value for k in node.keywords if k.arg == "user"), None)
                if user is not None and not (isinstance(user, ast.Constant) and user.value is None):
                    root = isinstance(user, ast.Constant) and user.value == "root"
                    where = ".".join(s for s in stack if not s.startswith("<"))
                    found.append((rel, node.lineno, where, RunsAs.ROOT if root else RunsAs.OS_USER, node))
            for child in ast.iter_child_nodes(node):
                visit(child)
            if named:
                stack.pop()

        visit(tree)
    return found


def test_every_call_as_another_user_is_in_the_inventory() -> None:
    calls = _calls_as_another_user()
    assert len(calls) > 60, "the scan found too few calls: is it still reading the library?"
    missing, unread = [], []
    for rel, line, func, role, call in calls:
        if rel == "commands.py":
            continue  # the runner itself
        program = _program(call.args[0]) if call.args else None
        programs = [program] if program else DYNAMIC.get(f"{rel}:{func}")
        if programs is None:
            unread.append(f"{rel}:{line} ({func})")
            continue
        for p in programs:
            if p == ADMIN_COMMAND:
                assert role == RunsAs.ROOT, f"{rel}:{line}: the admin's install command runs as root"
                continue
            probe = p.replace(privileges.BINDIR, "/usr/lib/postgresql/17/bin/")
            if lookup(probe, role) is None:
                missing.append(f"{rel}:{line} ({func}) runs {p!r} as {role.value}")
    assert not unread, f"argv not readable by the scan: add these to DYNAMIC (and the inventory): {unread}"
    assert not missing, f"missing from pgupgrade.privileges.INVENTORY: {missing}"
    stale = {k for k in DYNAMIC if k not in {f"{r}:{f}" for r, _, f, _, _ in calls}}
    assert not stale, f"DYNAMIC names calls that no longer exist: {stale}"


def test_inventory_entries_are_used() -> None:
    """Every entry is reached by some call: the inventory lists nothing the library does not run."""
    used = set()
    for rel, _, func, role, call in _calls_as_another_user():
        program = _program(call.args[0]) if call.args else None
        for p in [program] if program else DYNAMIC.get(f"{rel}:{func}", []):
            used.add((p, role))
    unused = [e.program for e in INVENTORY if (e.program, e.runs_as) not in used]
    assert unused == [], unused


def test_runtime_check() -> None:
    assert require(["/opt/pg/17/bin/pg_ctl", "start"], "postgres", cwd="/srv/d").name == "pg_ctl"
    assert require(["/usr/bin/cat", "/x"], "postgres").program == "cat"
    assert require(["/usr/local/sbin/pg-install", "15.20"], "root").why == ADMIN_COMMAND
    assert lookup("cat", RunsAs.ROOT) is None and lookup("apt-get", RunsAs.OS_USER) is None
    with pytest.raises(privileges.NotInInventory, match="INVENTORY does not list 'nano' for os_user"):
        require(["nano"], "postgres")
    with pytest.raises(privileges.NotInInventory, match="'/tmp/x/cat' as 'postgres'"):
        require(["/tmp/x/cat"], "postgres")  # a system program only from a system directory
    with pytest.raises(privileges.NotInInventory, match="apt-get"):
        require(["apt-get", "install"], "postgres")


def test_env_keep_covers_what_the_library_passes() -> None:
    cluster = Cluster("c", "/tmp", 5432, "postgres", "postgres", "/usr/bin", "/srv/d", password="pw")
    passed = {*BASE_ENV, *cluster.libpq_env("db"), *APT_ENV}
    assert passed - set(privileges.ENV_KEEP) == {"PATH"}  # sudo's secure_path


def _rules(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith(("#", "Defaults", "Cmnd_Alias"))]


def test_sudoers_one_rule_per_program_no_all_command() -> None:
    text = sudoers(
        "airflow", "postgres", bindirs=["/usr/lib/postgresql/*/bin", "/opt/pg/17/bin"], units=["postgresql@17-main"]
    )
    rules = _rules(text)
    assert all(r.startswith("airflow ALL = (") for r in rules)
    assert not any(r.rstrip().endswith(" ALL") or "NOPASSWD: ALL" in r for r in rules), rules
    assert "SETENV" not in text and "sh -c" not in text
    assert 'Defaults:airflow env_keep += "' in text and "PGPASSWORD" in text
    assert len(rules) == len(INVENTORY)  # each program once, as its user
    assert "airflow ALL = (postgres) CWD=* NOPASSWD: PGUPGRADE_PG_CTL" in text
    assert "airflow ALL = (postgres) NOPASSWD: PGUPGRADE_CAT" in text
    assert "Cmnd_Alias PGUPGRADE_PG_CTL = /usr/lib/postgresql/*/bin/pg_ctl, /opt/pg/17/bin/pg_ctl" in text
    assert "/usr/bin/systemctl ^((start|stop|enable|disable) postgresql@17-main|daemon-reload)$" in text
    same = sudoers("postgres", "postgres", bindirs=["/usr/lib/postgresql/*/bin"])
    assert {r.split("(")[1].split(")")[0] for r in _rules(same)} == {"root"}  # logged in as the OS user
    assert "SYSTEMCTL" not in same  # no unit named: systemctl not allowed
    with pytest.raises(ValueError, match="absolute"):
        sudoers("airflow", install_commands=["pg-install"])
    with pytest.raises(ValueError, match="login"):
        sudoers("airflow ALL", "postgres")


@pytest.mark.skipif(not shutil.which("visudo"), reason="visudo (sudo) not installed")
def test_generated_file_passes_visudo() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pgupgrade.privileges", "--login", "airflow", "--check", "--unit", "pg@x",
         "--install-command", "/usr/local/sbin/pg-install", "--bindir", "/usr/lib/postgresql/*/bin"],
        capture_output=True, text=True, check=False, cwd=ROOT_DIR,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "PGUPGRADE_ROOT_INSTALL_COMMAND_1 = /usr/local/sbin/pg-install" in res.stdout
    with pytest.raises(ValueError, match="visudo rejects"):
        privileges.check("airflow ALL = (postgres) NOPASSWD: nonsense(\n")
