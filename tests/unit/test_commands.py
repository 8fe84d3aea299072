import pytest

from pgupgrade.commands import LocalHost, Redactor, SSHHost
from pgupgrade.errors import CommandError


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
    assert LocalHost().run(["id", "-un"], user="postgres").stdout.strip() == "postgres"


def test_ssh_command_line_quotes_every_word_and_keeps_secrets_off_it():
    line, secret = SSHHost.command_line(
        ["psql", "-c", "select 1; drop table x"], "postgres", "root", {"LC_ALL": "C", "PGPASSWORD": "s3cr3t-pw"}
    )
    assert "'select 1; drop table x'" in line and "runuser -u postgres --" in line and "LC_ALL=C" in line
    assert "s3cr3t-pw" not in line and secret == "s3cr3t-pw\n"
    sudo_line = SSHHost.command_line(["id"], "postgres", "deploy", {"LC_ALL": "C"})[0]
    assert "sudo -n --preserve-env=LC_ALL -u postgres --" in sudo_line
