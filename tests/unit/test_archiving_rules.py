"""Archiving across a major upgrade: how an archive_command names pgBackRest, the support table, the commands run
at opening and after it.

The pgBackRest path after the plan (stanza-upgrade at opening, check and a full backup after it) is DOCUMENTED
AND UNPROVEN against a real pgBackRest: none that supports PostgreSQL 16 or newer is installable here (Debian 12
ships 2.45). The command construction and the sequence (and that a failure alerts instead of raising) are
exercised below with a stand-in ``pgbackrest`` program on the real command runner; the plan's refusal of 2.45
runs against the real pgBackRest in tests/integration/test_archiving.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgupgrade import archiving, pgbackrest
from pgupgrade.archiving import Archiving
from pgupgrade.cluster import Cluster
from pgupgrade.commands import LocalHost
from pgupgrade.state import RunState


def test_archive_command_naming_pgbackrest():
    inv = pgbackrest.from_archive_command("pgbackrest --config=/etc/pgbr/a.conf --stanza=main archive-push %p")
    assert inv == pgbackrest.Invocation("pgbackrest", ("--config=/etc/pgbr/a.conf", "--stanza=main"), "main")
    spaced = pgbackrest.from_archive_command(
        "/usr/bin/pgbackrest --stanza demo --repo1-path=/r --archive-async=y --process-max 4 archive-push %p"
    )
    assert spaced is not None and spaced.program == "/usr/bin/pgbackrest" and spaced.stanza == "demo"
    assert spaced.options == ("--stanza=demo", "--repo1-path=/r")  # archive-push's own options stay there
    assert pgbackrest.from_archive_command("pgbackrest archive-push %p") == pgbackrest.Invocation(
        "pgbackrest", (), None
    )
    wrapped = pgbackrest.from_archive_command("test -f /x || pgbackrest --stanza=s archive-push %p")
    assert wrapped is not None and wrapped.stanza == "s"
    for other in (
        "cp %p /archive/%f",
        "/opt/archive.sh %p %f",
        "wal-g wal-push %p",
        "barman-wal-archive backup pg %p",
        "pgbackrest --stanza=s archive-get %f %p",
        "pgbackrest 'unterminated",
        "",
    ):
        assert pgbackrest.from_archive_command(other) is None, other


def test_support_table_names_the_release_needed():
    assert pgbackrest.parse_version("pgBackRest 2.45\n") == (2, 45, 0)
    assert pgbackrest.parse_version("pgBackRest 2.53.1") == (2, 53, 1)
    with pytest.raises(ValueError):
        pgbackrest.parse_version("command not found")
    debian12 = (2, 45, 0)
    assert pgbackrest.unsupported(debian12, 15) is None
    why = pgbackrest.unsupported(debian12, 16)
    assert why is not None and "pgBackRest 2.45 does not support PostgreSQL 16" in why and "2.46 or newer" in why
    assert "2.53.1" in (pgbackrest.unsupported((2, 53, 0), 17) or "")  # 2.52/2.53 knew only 17's beta catalog
    assert pgbackrest.unsupported((2, 53, 1), 17) is None
    assert "2.55" in (pgbackrest.unsupported((2, 54, 2), 18) or "")
    assert pgbackrest.unsupported((2, 58, 0), 18) is None
    assert "no pgBackRest release is known" in (pgbackrest.unsupported((2, 58, 0), 19) or "")


def test_which_tool():
    assert Archiving("off", "pgbackrest --stanza=s archive-push %p", "").tool == "none"
    assert Archiving("on", "", "").tool == "none"
    assert Archiving("on", "pgbackrest --stanza=s archive-push %p", "").tool == "pgbackrest"
    assert Archiving("always", "/opt/archive.sh %p %f", "").tool == "script/other"
    assert Archiving("on", "", "basic_archive").tool == "archive_library basic_archive"
    assert Archiving("on", "pgbackrest --stanza=s archive-push %p", "").as_dict()["stanza"] == "s"


def test_commands_at_and_after_opening():
    inv = pgbackrest.from_archive_command(
        "pgbackrest --config=/c.conf --pg1-path=/var/lib/postgresql/15/main --stanza=main archive-push %p"
    )
    assert inv is not None
    new = "/var/lib/postgresql/17/main"
    assert archiving.stanza_upgrade_argv(inv, new) == [
        "pgbackrest",
        "--config=/c.conf",
        "--stanza=main",
        f"--pg1-path={new}",
        "--no-online",
        "stanza-upgrade",
    ]
    assert archiving.check_argv(inv, new) == [
        "pgbackrest",
        "--config=/c.conf",
        "--stanza=main",
        f"--pg1-path={new}",
        "check",
    ]
    assert archiving.full_backup_argv(inv, new)[-2:] == ["--type=full", "backup"]


def _stand_in(tmp_path: Path, fail_on: str | None = None) -> tuple[pgbackrest.Invocation, Path]:
    """A ``pgbackrest`` that records its argv (one JSON list a line) and fails for one command."""
    calls = tmp_path / "calls"
    prog = tmp_path / "pgbackrest"
    fail = f'[ "$last" = "{fail_on}" ] && {{ echo "ERROR: [082]: injected" >&2; exit 82; }}' if fail_on else ""
    prog.write_text(
        "#!/bin/sh\n"
        f"python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> {calls}\n"
        'for a in "$@"; do last=$a; done\n'
        f"{fail}\nexit 0\n"
    )
    prog.chmod(0o755)
    return pgbackrest.Invocation(str(prog), ("--config=/c.conf", "--stanza=main"), "main"), calls


def _ctx(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(host=LocalHost(), state=RunState.for_run("dag", "run", tmp_path / "state"))


def _new(tmp_path: Path) -> Cluster:
    # os_user root: the stand-in lives in pytest's root-only temp dir; the runner runs it without switching user
    return Cluster("n", str(tmp_path), 5432, "postgres", "postgres", "/usr/lib/postgresql/17/bin", "/data/17", "root")


def test_pgbackrest_after_open_checks_then_takes_a_full_backup(tmp_path):
    inv, calls = _stand_in(tmp_path)
    ctx = _ctx(tmp_path)
    out = archiving._pgbackrest_after_open(ctx, _new(tmp_path), inv, 17)
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [a[-1] for a in argvs] == ["check", "backup"] and "--type=full" in argvs[1]
    assert all("--pg1-path=/data/17" in a for a in argvs)
    assert out["check"]["ok"] and out["full_backup"]["ok"] and "needs_attention" not in out
    assert "point-in-time recovery for PostgreSQL 17 from that backup on" in out["summary"]
    assert ctx.state.happened("archive_full_backup")


def test_pgbackrest_failure_after_open_needs_attention_and_does_not_raise(tmp_path):
    inv, _ = _stand_in(tmp_path, fail_on="backup")
    ctx = _ctx(tmp_path)
    out = archiving._pgbackrest_after_open(ctx, _new(tmp_path), inv, 17)
    assert out["needs_attention"] and out["check"]["ok"] and not out["full_backup"]["ok"]
    assert "injected" in out["full_backup"]["error"]
    assert "no point-in-time recovery for PostgreSQL 17" in out["summary"]
    assert not ctx.state.happened("archive_full_backup")


def test_hook_runs_with_the_new_cluster_in_its_environment(tmp_path):
    ctx = _ctx(tmp_path)
    seen = tmp_path / "env"
    ok = archiving._run_hook(ctx, _new(tmp_path), ["sh", "-c", f"env > {seen}"], 17)
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["PGUPGRADE_NEW_MAJOR"] == "17" and env["PGUPGRADE_NEW_DATADIR"] == "/data/17"
    assert env["PATH"].startswith("/usr/lib/postgresql/17/bin:") and env["PGPORT"] == "5432"
    assert ok["hook"]["exit_code"] == 0 and not ok["needs_attention"]
    bad = archiving._run_hook(ctx, _new(tmp_path), ["sh", "-c", "echo no >&2; exit 3"], 17)
    assert bad["needs_attention"] and bad["hook"]["exit_code"] == 3 and "no" in bad["hook"]["output_tail"]
    missing = archiving._run_hook(ctx, _new(tmp_path), ["/no/such/hook"], 17)
    assert missing["needs_attention"] and missing["hook"]["exit_code"] == 127
    assert [e["exit_code"] for e in ctx.state.events() if e["event"] == "archive_hook"] == [0, 3, 127]
