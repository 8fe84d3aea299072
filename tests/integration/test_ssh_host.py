"""The SSH host runner against a real sshd (Debian openssh-server) on 127.0.0.1, started here with its own
config, host key and authorized key: the runner's guarantees over a real link, a full minor upgrade 15.18 →
15.20 whose every command goes through sshd, and a link dropped in the middle of a step (the step fails naming
the SSH connection; the rollback brings 15.18 back)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pgupgrade import facts
from pgupgrade.airflow.connections import host_for
from pgupgrade.cluster import Cluster
from pgupgrade.commands import SSHConnectionLost, SSHHost
from pgupgrade.errors import ConfigError
from pgupgrade.state import RunState, state_root

from airflow_helpers import ROLLBACK, UPGRADE, minor_conf, run, run_triggered_rollback
from pgharness import Pool, data_checks_out, installation, same_rows, served
from sshd_harness import Sshd, pids, running_sshd

pytestmark = pytest.mark.usefixtures("airflow_home")
SSH_CONN = "pg_db_host_ssh"


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as daemon:
        yield daemon


def _state(pid: int) -> str:
    """The process state letter ("" when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@pytest.fixture
def ssh_conn(sshd: Sshd, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Airflow SSH connection to the database host, verifying its host key."""
    host_key = sshd.host_key
    conn = {
        "conn_type": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "login": "root",
        "extra": {"key_file": str(sshd.home / "client_ed25519"), "host_key": host_key, "look_for_keys": "false"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SSH_CONN.upper()}", json.dumps(conn))
    return SSH_CONN


def over_ssh(cluster: Cluster) -> Cluster:
    return replace(cluster, ssh_conn_id=SSH_CONN)


def test_runner_over_a_real_sshd(sshd: Sshd, ssh_conn: str) -> None:
    """As LocalHost: runuser to switch user (logged in as root), the pinned environment, cwd, stdin, quoting;
    the password never in a remote command line; a dead link re-established before the next command; a
    read-only command re-run once when its link drops; any other command fails naming the connection."""
    host = host_for(
        Cluster("db", "127.0.0.1", 5432, "postgres", "postgres", "/usr/bin", "/srv/db", ssh_conn_id=SSH_CONN)
    )
    assert isinstance(host, SSHHost) and host.conn_id == ssh_conn
    tmp_path = sshd.home / "work"  # a directory the postgres user can enter
    tmp_path.mkdir(mode=0o755)
    canary = tmp_path / "canary"
    res = host.run(
        [
            "sh",
            "-c",
            'id -un; echo "$LC_ALL $PWD"; cat; echo "$1"; echo "$PGPASSWORD"; ps -eo args',
            "sh",
            f"x; touch {canary}",
        ],
        user="postgres",
        cwd=str(tmp_path),
        stdin="from stdin\n",
        env={"PGPASSWORD": "pw-over-ssh-7"},
    )
    lines = res.stdout.splitlines()
    assert lines[:5] == ["postgres", f"C {tmp_path}", "from stdin", f"x; touch {canary}", "***"], lines
    assert res.stdout.count("***") == 1  # the password was in the environment, in no process's argv
    assert not canary.exists()
    sock = host.client.get_transport().sock  # a vanished peer is noticed by TCP within ~90 s
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 90000

    for pid in sshd.children():  # the link dies between two commands: the next one reconnects
        os.kill(pid, signal.SIGKILL)
    assert host.run(["true"]).exit_code == 0

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: got.update(res=host.run(["cat", str(fifo)], timeout=30)))
    reader.start()
    first = _wait_for(lambda: _pid_running(["cat", str(fifo)]))
    sshd.drop_connection_of(first)
    os.kill(first, signal.SIGKILL)  # the dropped session's cat (no longer reachable by anyone)
    _wait_for(lambda: _pid_running(["cat", str(fifo)], not_pid=first))
    fifo.write_text("after the drop\n")
    reader.join(30)
    assert got["res"].stdout == "after the drop\n"

    started = tmp_path / "started"
    failed: dict[str, BaseException] = {}

    def long_write() -> None:
        try:
            host.run(["sh", "-c", f"touch {started}; sleep 30"], timeout=60)
        except BaseException as exc:
            failed["exc"] = exc

    writer = threading.Thread(target=long_write)
    writer.start()
    _wait_for(started.exists)
    sleeper = _wait_for(lambda: _pid_running(["sleep", "30"]))
    sshd.drop_connection_of(sleeper)
    writer.join(30)
    os.kill(sleeper, signal.SIGKILL)
    exc = failed["exc"]
    assert isinstance(exc, SSHConnectionLost) and f"SSH connection {ssh_conn!r}" in str(exc), exc
    assert "outcome on the host is unknown" in str(exc)
    assert "Accepted publickey for root from 127.0.0.1" in sshd.log


def _pid_running(argv: list[str], not_pid: int = 0) -> int:
    want = "\0".join(argv).encode() + b"\0"
    for pid in pids():
        try:
            if pid != not_pid and Path(f"/proc/{pid}/cmdline").read_bytes() == want:
                return pid
        except OSError:
            continue
    return 0


def _wait_for(probe, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {probe}"
        time.sleep(0.02)
    return value


def test_minor_upgrade_through_sshd(pool: Pool, sshd: Sshd, ssh_conn: str) -> None:
    old = over_ssh(pool.new("15.18"))
    conf = minor_conf(old)
    sessions = sshd.sessions()
    dr, states = run(UPGRADE, conf)
    assert dr.state == "success", states
    num, text = served(old)
    assert num == 150020 and text.startswith("PostgreSQL 15.20")
    data_checks_out(old)
    state = RunState.for_run(UPGRADE, dr.run_id, state_root())
    same_rows(state.load("facts_before"), state.load("facts_after"))
    ran = sshd.sessions() - sessions
    assert ran >= 20, f"only {ran} commands went through sshd"  # stop, start, status checks, backup, ...
    print(f"minor upgrade through sshd: {ran} remote commands")


def slow_start_bindir(root: Path) -> tuple[str, Path]:
    """15.20's bin directory (symlinks) whose pg_ctl, asked to start, first writes progress dots for 20 s (as a
    slow start does) and a marker holding its pid: time for the test to cut the SSH link under it."""
    real = Path(installation("15.20").bindir)
    bindir, marker = root / "slow-15.20" / "bin", root / "slow-start.pid"
    bindir.mkdir(parents=True)
    for f in real.iterdir():
        if f.name != "pg_ctl":
            (bindir / f.name).symlink_to(f)
    (bindir / "pg_ctl").write_text(
        "#!/bin/sh\n"
        'case " $* " in *" start "*)\n'
        f"  echo $$ > {marker}\n"
        "  i=0; while [ $i -lt 200 ]; do printf . || exit 1; sleep 0.1; i=$((i + 1)); done ;;\n"
        "esac\n"
        f'exec {real}/pg_ctl "$@"\n'
    )
    (bindir / "pg_ctl").chmod(0o755)
    for d in (bindir, bindir.parent):
        d.chmod(0o755)
    return str(bindir), marker


def test_link_dropped_mid_step_then_rollback(pool: Pool, sshd: Sshd, ssh_conn: str) -> None:
    old = over_ssh(pool.new("15.18"))
    before = facts.snapshot(old)
    bindir, marker = slow_start_bindir(Path(old.datadir).parent)
    conf = minor_conf(old, new_bindir=bindir)
    killed: list[int] = []
    ended: list[bool] = []

    def cut_the_link() -> None:
        pid = int(_wait_for(lambda: marker.exists() and marker.read_text().strip(), timeout=120))
        killed.extend(sshd.drop_connection_of(pid))
        # the orphaned command dies at its next write (SIGPIPE): nothing starts behind the rollback's back
        ended.append(_wait_for(lambda: _state(pid) in ("", "Z"), timeout=10))

    cutter = threading.Thread(target=cut_the_link, daemon=True)
    cutter.start()
    dr, states = run(UPGRADE, conf)
    cutter.join(5)
    assert killed and ended == [True], "the link was never cut"
    assert dr.state == "failed" and states["cutover"] == "failed", states
    assert states["trigger_rollback"] == "success", states
    state = RunState.for_run(UPGRADE, dr.run_id, state_root())
    error = next(e["error"] for e in state.events() if e["event"] == "step" and e["status"] == "failed")
    assert f"SSH connection {ssh_conn!r} (127.0.0.1:{sshd.port}) lost while running" in error, error

    rb, rb_states = run_triggered_rollback(ROLLBACK, dr.run_id)
    assert rb.state == "success", rb_states
    num, text = served(old)
    assert num == 150018 and text == state.load("plan")["old"]["version_text"]
    data_checks_out(old)
    same_rows(before, facts.snapshot(old))


def test_unknown_ssh_connection_and_refused_key_are_clear_errors(
    sshd: Sshd, ssh_conn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad input before any command: an ssh_conn_id that names no connection, and a key the host refuses, each
    fail with a ConfigError naming the connection field (and, for the key, the host and login)."""
    db = Cluster("db", "127.0.0.1", 5432, "postgres", "postgres", "/usr/bin", "/srv/db", ssh_conn_id="no_such_ssh")
    with pytest.raises(ConfigError, match=r"db\.extra\.ssh_conn_id: no Airflow SSH connection 'no_such_ssh'"):
        host_for(db)
    stranger = tmp_path / "stranger_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{SSH_CONN.upper()}"])
    conn["extra"]["key_file"] = str(stranger)
    monkeypatch.setenv("AIRFLOW_CONN_STRANGER_SSH", json.dumps(conn))
    with pytest.raises(
        ConfigError, match=r"cannot log in to 127\.0\.0\.1:\d+ as 'root' with connection 'stranger_ssh'"
    ):
        host_for(replace(db, ssh_conn_id="stranger_ssh"))
