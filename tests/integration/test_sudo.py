"""Least privilege for real: a non-root login user (``pgupgrade-ci``, made here and removed again) allowed only
the generated sudoers file (/etc/sudoers.d/pgupgrade-ci-test, checked with visudo, removed again) reaches the
database host through a real sshd and runs a throwaway cluster's initdb, start (in its data directory: sudo -D),
psql with a password, stop and pg_controldata as ``postgres`` through real sudo; commands the file does not
allow are refused with an error naming the program and the rule; no secret is ever in a command line."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from pgupgrade import privileges, services
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import LocalHost, SSHHost
from pgupgrade.privileges import NotInInventory, SudoRefused
from pgupgrade.scratch import create_cluster

from pgharness import installation
from sshd_harness import Sshd, free_port, pids, ppid, running_sshd

LOGIN = "pgupgrade-ci"
SUDOERS = Path("/etc/sudoers.d/pgupgrade-ci-test")  # sudo reads no file in sudoers.d whose name has a dot
REMOVED_RULE = "PGUPGRADE_DU"  # as an admin who took one rule out
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes an OS user and a sudoers file: needs root")


@pytest.fixture(scope="module")
def login_user() -> Iterator[str]:
    for tool in ("sudo", "visudo"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing: include/scripts/install.sh installs the sudo package")
    home = Path(tempfile.mkdtemp(prefix="pgupgrade-ci-home-"))
    try:
        pwd.getpwnam(LOGIN)  # left by an interrupted run: reused, and removed at the end
    except KeyError:
        subprocess.run(["useradd", "--system", "--home-dir", str(home), "--shell", "/bin/sh", LOGIN], check=True)
    subprocess.run(["usermod", "-p", "*", "-d", str(home), LOGIN], check=True)  # not locked: sshd lets it in
    shutil.chown(home, LOGIN)
    try:
        yield LOGIN
    finally:
        SUDOERS.unlink(missing_ok=True)
        deadline = time.monotonic() + 15  # the killed sessions of the user may take a moment to go
        while subprocess.run(["userdel", LOGIN], capture_output=True, check=False).returncode == 8:
            assert time.monotonic() < deadline, f"{LOGIN} still has processes"
            time.sleep(0.2)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def sudoers(login_user: str) -> Iterator[str]:
    bindirs = [privileges.DEBIAN_BINDIR, *filter(None, os.environ.get("PGUPGRADE_BINDIRS", "").split(":"))]
    text = privileges.sudoers(login_user, "postgres", bindirs=bindirs, units=["pgupgrade-ci-test.service"])
    text = "".join(ln for ln in text.splitlines(keepends=True) if not ln.rstrip().endswith(f": {REMOVED_RULE}"))
    privileges.check(text)
    staged = SUDOERS.with_name(".pgupgrade-ci-test")  # ignored by sudo until renamed
    staged.write_text(text)
    staged.chmod(0o440)
    staged.rename(SUDOERS)
    try:
        yield text
    finally:
        SUDOERS.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def sshd(login_user: str) -> Iterator[Sshd]:
    with running_sshd() as daemon:  # stopped (with its sessions of the user) before the user is removed
        yield daemon


def _client(sshd: Sshd, user: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = paramiko.Ed25519Key.from_private_key_file(str(sshd.home / "host_ed25519"))
    client.get_host_keys().add(f"[127.0.0.1]:{sshd.port}", key.get_name(), key)
    client.connect(
        "127.0.0.1", sshd.port, username=user, key_filename=str(sshd.client_key), look_for_keys=False, allow_agent=False
    )
    return client


@pytest.fixture(scope="module")
def ssh(sshd: Sshd, sudoers: str, login_user: str) -> Iterator[SSHHost]:
    host = SSHHost(_client(sshd, login_user), f"127.0.0.1:{sshd.port}", connect=lambda: _client(sshd, login_user))
    try:
        yield host
    finally:
        if isinstance(host.client, paramiko.SSHClient):
            host.client.close()


@pytest.fixture(scope="module")
def cluster(ssh: SSHHost) -> Iterator[Cluster]:
    """A throwaway 15.18 cluster made and started entirely through SSH + sudo; stopped by root at the end."""
    base = Path(tempfile.mkdtemp(prefix="pgupgrade-sudo-"))
    base.chmod(0o755)
    home = base / "pg"
    home.mkdir(mode=0o755)
    shutil.chown(home, "postgres", "postgres")
    inst = installation("15.18")
    made = create_cluster(
        inst,
        str(home / "data"),
        name="sudo_ci",
        port=free_port(),  # names the Unix socket: the cluster listens on nothing else
        socket_dir=str(home / "sock"),
        host=ssh,
        settings={"fsync": "off"},
    )
    try:
        yield made
    finally:
        LocalHost().run(
            [made.bin("pg_ctl"), "-D", made.datadir, "-m", "immediate", "stop"], user="postgres", check=False
        )
        shutil.rmtree(base, ignore_errors=True)


def test_a_cluster_lives_through_sudo_only(ssh: SSHHost, cluster: Cluster, sshd: Sshd) -> None:
    """initdb, start (sudo -D into the data directory the login user cannot enter), psql with PGPASSWORD and the
    libpq environment (env_keep), stop, pg_controldata: each as postgres under sudo, no secret in any argv."""
    assert ssh.run(["test", "-x", cluster.datadir], check=False).exit_code == 1  # as pgupgrade-ci itself
    svc = service_for(cluster, ssh)
    assert svc.is_running()
    secret = f"sudo-pw-{secrets.token_hex(8)}"
    env = {**cluster.libpq_env("postgres"), "PGPASSWORD": secret}
    seen: dict[str, object] = {}

    def psql() -> None:
        seen["res"] = ssh.run(
            [cluster.bin("psql"), "-X", "-At", "-c", "select pg_sleep(2)", "-c", "\\getenv pw PGPASSWORD",
             "-c", "\\echo :pw", "-c", "\\getenv l LC_ALL", "-c", "\\echo :l", "-c", "select current_user"],
            user="postgres", env=env, timeout=60,
        )  # fmt: skip

    runner = threading.Thread(target=psql)
    runner.start()
    in_argv, under_sudo = [], []
    while runner.is_alive():
        for pid in pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if secret.encode() in argv:
                in_argv.append(argv)
            if argv.startswith(cluster.bin("psql").encode() + b"\0"):
                status = Path(f"/proc/{pid}/status").read_text()
                parent = Path(f"/proc/{ppid(pid)}/comm").read_text().strip() if ppid(pid) else ""
                uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
                under_sudo.append((pwd.getpwuid(uid).pw_name, parent))
    runner.join()
    assert not in_argv, in_argv  # ps never shows the password
    lines = seen["res"].stdout.splitlines()  # type: ignore[attr-defined]
    assert lines[1:] == ["***", "C", "postgres"], lines  # the password arrived (redacted in the result), LC_ALL too
    assert ("postgres", "sudo") in under_sudo, under_sudo
    svc.stop()
    assert not svc.is_running()
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", services.checkpoint_lsn(cluster, ssh))
    svc.start()
    assert svc.accepts_connections()
    assert "Accepted publickey for pgupgrade-ci from 127.0.0.1" in sshd.log


def test_what_the_rules_do_not_allow_is_refused_naming_the_program(ssh: SSHHost, cluster: Cluster) -> None:
    with pytest.raises(SudoRefused) as err:  # the rule the admin removed
        ssh.run(["du", "-sb", "--", cluster.datadir], user="postgres")
    text = str(err.value)
    assert "refused to run 'du' as 'postgres' for login 'pgupgrade-ci'" in text, text
    assert "pgupgrade-ci ALL = (postgres) NOPASSWD: /usr/bin/du" in text and "pgupgrade.privileges" in text
    with pytest.raises(SudoRefused, match="'sh' as 'postgres'"):  # sh only for pg_upgrade's delete_old_cluster.sh
        ssh.run(["sh", "-c", "id"], user="postgres", check=False)  # check=False: refused is not "exit 1"
    for argv in (  # as root: only the library's argument shapes
        ["systemctl", "restart", "pgupgrade-ci-test.service"],
        ["apt-get", "install", "-y", "curl"],
        ["install", "-m", "0644", "-t", "/etc/cron.d", "--", f"{cluster.datadir}/PG_VERSION"],
    ):
        with pytest.raises(SudoRefused, match=f"'{argv[0]}' as 'root'"):
            ssh.run(argv, user="root")
    assert not Path("/etc/cron.d/PG_VERSION").exists()
    with pytest.raises(NotInInventory, match="'id' as 'postgres'"):  # not even sent to the host
        ssh.run(["id", "-un"], user="postgres")
    assert ssh.run(["test", "-e", f"{cluster.datadir}/PG_VERSION"], user="postgres").exit_code == 0


SNIPPET = """
import json, sys
from pgupgrade.commands import LocalHost
from pgupgrade.privileges import SudoRefused
bindir, datadir = sys.argv[1:]
host = LocalHost()
out = {"controldata": host.run([bindir + "/pg_controldata", "-D", datadir], user="postgres").stdout}
out["status"] = host.run([bindir + "/pg_ctl", "-D", datadir, "status"], user="postgres", cwd=datadir).exit_code
try:
    host.run(["du", "-sb", datadir], user="postgres")
except SudoRefused as exc:
    out["refused"] = str(exc)
print(json.dumps(out))
"""


def test_local_host_as_the_non_root_user(cluster: Cluster, sudoers: str, login_user: str) -> None:
    """LocalHost in a worker that is not root (run here as pgupgrade-ci by runuser, with Debian's python3 and a
    world-readable copy of the library's source: the checkout may sit in root's closed home): the same sudo rules."""
    python = "/usr/bin/python3"
    include = Path(tempfile.mkdtemp(prefix="pgupgrade-library-"))
    include.chmod(0o755)
    shutil.copytree(Path(privileges.__file__).resolve().parent, include / "pgupgrade")
    shutil.copytree(Path(privileges.__file__).resolve().parents[1] / "sql", include / "sql")
    subprocess.run(["chmod", "-R", "go+rX", str(include)], check=True)
    try:
        _as_login_user(python, include, cluster, login_user)
    finally:
        shutil.rmtree(include, ignore_errors=True)


def _as_login_user(python: str, include: Path, cluster: Cluster, login_user: str) -> None:
    if not os.access(python, os.X_OK):
        pytest.skip("no /usr/bin/python3 for the non-root user")
    res = subprocess.run(
        ["runuser", "-u", login_user, "--", "env", f"PYTHONPATH={include}", python, "-c", SNIPPET,
         cluster.bindir, cluster.datadir],
        capture_output=True, text=True, timeout=120, cwd="/", check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "Database cluster state:               in production" in out["controldata"]
    assert out["status"] == 0
    assert "refused to run 'du' as 'postgres' for login 'pgupgrade-ci'" in out["refused"]
