import os
import shlex
import subprocess
from types import SimpleNamespace

import pytest

from pgupgrade import commands
from pgupgrade.commands import LocalHost, Redactor, SSHHost
from pgupgrade.errors import CommandError
from pgupgrade.privileges import NotInInventory, SudoRefused


def test_result_is_structured_and_env_pinned():
    res = LocalHost().run(["sh", "-c", 'echo "$LC_ALL"; echo err >&2'])
    assert res.exit_code == 0 and res.stdout == "C\n" and res.stderr == "err\n" and res.duration_s >= 0
    assert res.argv[0] == "sh"


def test_nonzero_exit_raises_typed_error():
    with pytest.raises(CommandError) as err:
        LocalHost().run(["ls", "/definitely/not/here"])
    assert err.value.exit_code == 2 and "No such file" in err.value.stderr


def test_missing_binary_and_timeout():
    with pytest.raises(CommandError) as err:
        LocalHost().run(["/no/such/binary"])
    assert err.value.exit_code == 127
    with pytest.raises(CommandError) as err:
        LocalHost().run(["sleep", "5"], timeout=0.2)
    assert err.value.exit_code is None


def test_argv_is_never_a_shell_string(tmp_path):
    canary = tmp_path / "canary"
    res = LocalHost().run(["echo", f"x; touch {canary}"])
    assert not canary.exists() and res.stdout.strip() == f"x; touch {canary}"
    with pytest.raises(TypeError):
        LocalHost().run("echo hi")  # type: ignore[arg-type]


def test_secrets_redacted_in_output_and_errors():
    host = LocalHost(redactor=Redactor(["hunter2"]))
    res = host.run(["echo", "pw=hunter2"], env={"PGPASSWORD": "other-secret"})
    assert "hunter2" not in res.stdout and "hunter2" not in " ".join(res.argv)
    res = host.run(["sh", "-c", 'echo "$PGPASSWORD"'], env={"PGPASSWORD": "other-secret"})
    assert res.stdout.strip() == "***"
    with pytest.raises(CommandError) as err:
        host.run(["sh", "-c", "echo hunter2 >&2; exit 3"])
    assert "hunter2" not in str(err.value) and err.value.exit_code == 3


def test_runs_as_other_user_when_root():
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root to switch user without a password")
    assert LocalHost().run(["sh", "-c", "id -un"], user="postgres").stdout.strip() == "postgres"


def test_ssh_command_line_quotes_every_word_and_keeps_secrets_off_it():
    line, secret = SSHHost.command_line(
        ["psql", "-c", "select 1; drop table x"], "postgres", "root", {"LC_ALL": "C", "PGPASSWORD": "s3cr3t-pw"}
    )
    assert "'select 1; drop table x'" in line and "runuser -u postgres --" in line and "LC_ALL=C" in line
    assert "s3cr3t-pw" not in line and secret == "s3cr3t-pw\n"
    sudo_line = SSHHost.command_line(["id"], "postgres", "deploy", {"LC_ALL": "C"})[0]
    assert "sudo -n --preserve-env=LC_ALL -u postgres --" not in sudo_line


def test_under_sudo_the_command_line_is_exactly_what_a_sudoers_rule_names():
    """No shell and no --preserve-env under sudo: the wrapper (secrets from stdin, cd /) runs as the login user
    and execs ``sudo -n -u user [-D dir] -- argv``; the password stays off the line."""
    words = shlex.split(
        SSHHost.command_line(
            ["/usr/lib/postgresql/15/bin/pg_ctl", "-D", "/srv/d", "status"],
            "postgres",
            "deploy",
            {"LC_ALL": "C", "PGPASSWORD": "s3cr3t-pw"},
            cwd="/srv/d",
        )[0]
    )
    sudo_at = words.index("sudo")
    pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl"
    assert words[sudo_at:] == ["sudo", "-n", "-u", "postgres", "-D", "/srv/d", "--", pg_ctl, "-D", "/srv/d", "status"]
    assert words[:sudo_at].count("sh") == 1 and "s3cr3t-pw" not in words
    cwd_word = words.index("pgupgrade-run") + 1
    assert words[cwd_word : cwd_word + 3] == ["", "1", "PGPASSWORD"]  # the wrapper stays in /: -D moves sudo
    plain = shlex.split(SSHHost.command_line(["cat", "/x"], "postgres", "deploy", {"LC_ALL": "C"})[0])
    assert plain[plain.index("sudo") :] == ["sudo", "-n", "-u", "postgres", "--", "cat", "/x"]
    as_root = SSHHost.command_line(["cat", "/x"], "postgres", "root", {"LC_ALL": "C"})[0]
    assert "sudo" not in as_root and "runuser -u postgres --" in as_root


def test_local_sudo_prefix(monkeypatch):
    """A non-root worker: ``sudo -n -u user [-D dir] --`` started in / (the worker's directory may be closed to
    the target user), the environment passed as the process environment (sudoers env_keep lets it through)."""
    seen = {}

    def fake_run(full, **kw):
        seen.update(argv=full, cwd=kw["cwd"], env=kw["env"])
        return subprocess.CompletedProcess(full, 0, "ok\n", "")

    monkeypatch.setattr(commands.os, "geteuid", lambda: 4242)
    monkeypatch.setattr(commands.pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="airflow"))
    monkeypatch.setattr(commands.subprocess, "run", fake_run)
    LocalHost().run(["/usr/lib/postgresql/15/bin/pg_ctl", "start"], user="postgres", cwd="/srv/d", env={"PGPORT": "1"})
    assert seen["argv"] == [
        "sudo",
        "-n",
        "-u",
        "postgres",
        "-D",
        "/srv/d",
        "--",
        "/usr/lib/postgresql/15/bin/pg_ctl",
        "start",
    ]
    assert seen["cwd"] == "/" and seen["env"]["PGPORT"] == "1" and seen["env"]["LC_ALL"] == "C"
    LocalHost().run(["cat", "/x"], user="postgres")
    assert seen["argv"] == ["sudo", "-n", "-u", "postgres", "--", "cat", "/x"]
    LocalHost().run(["cat", "/x"], user="airflow")  # already that user: no sudo
    assert seen["argv"] == ["cat", "/x"]


def test_sudo_refusal_raises_naming_the_program_and_the_rule(monkeypatch):
    """sudo's own refusal raises SudoRefused even with check=False: a refused ``test -e`` must not read as a
    missing file. The command's own exit 1 (with its own stderr) stays a plain result."""

    def refused(full, **kw):
        return subprocess.CompletedProcess(full, 1, "", "sudo: a password is required\n")

    monkeypatch.setattr(commands.os, "geteuid", lambda: 4242)
    monkeypatch.setattr(commands.pwd, "getpwuid", lambda uid: SimpleNamespace(pw_name="airflow"))
    monkeypatch.setattr(commands.subprocess, "run", refused)
    with pytest.raises(SudoRefused) as err:
        LocalHost().run(["test", "-e", "/srv/d/PG_VERSION"], user="postgres", check=False)
    text = str(err.value)
    assert "'test' as 'postgres' for login 'airflow'" in text and "a password is required" in text
    assert "airflow ALL = (postgres) NOPASSWD: /usr/bin/test" in text
    monkeypatch.setattr(
        commands.subprocess, "run", lambda full, **kw: subprocess.CompletedProcess(full, 1, "", "rm: cannot remove\n")
    )
    assert LocalHost().run(["rm", "/x"], user="postgres", check=False).exit_code == 1


def test_a_program_missing_from_the_inventory_raises_before_it_runs(monkeypatch):
    ran = []
    monkeypatch.setattr(commands.subprocess, "run", lambda *a, **kw: ran.append(a))
    with pytest.raises(NotInInventory, match=r"'id' as 'postgres'.*INVENTORY does not list 'id'"):
        LocalHost().run(["id", "-un"], user="postgres")
    with pytest.raises(NotInInventory, match="cwd=False"):
        LocalHost().run(["cat", "x"], user="postgres", cwd="/srv")
    with pytest.raises(NotInInventory, match="sudo would drop: PGOPTIONS"):
        LocalHost().run(["cat", "x"], user="postgres", env={"PGOPTIONS": "-c x=1"})
    assert ran == []
    monkeypatch.undo()
    if os.geteuid() == 0:  # a tool outside the library (the bench) opts out
        assert LocalHost(inventory=False).run(["id", "-un"], user="postgres").stdout.strip() == "postgres"
