"""A real sshd (Debian openssh-server) on 127.0.0.1 with its own config, host key and authorized key, for the
tests that reach a database host over SSH (test_ssh_host: logged in as root; test_sudo: as a non-root user)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    listener: subprocess.Popen[bytes]
    port: int
    home: Path

    @property
    def log(self) -> str:
        return (self.home / "sshd.log").read_text()

    def sessions(self) -> int:
        return self.log.count("Starting session: command for root from 127.0.0.1")

    def children(self) -> list[int]:
        """PIDs of the per-connection sshd processes below the listener."""
        return [p for p in pids() if ppid(p) == self.listener.pid]

    def drop_connection_of(self, pid: int) -> list[int]:
        """Kills the sshd processes that serve the session pid runs in: its client sees the link drop."""
        killed, p = [], ppid(pid)
        while p and p != self.listener.pid:
            if comm(p) == "sshd":
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            p = ppid(p)
        return killed

    @property
    def host_key(self) -> str:
        """The host's public key as ``type base64`` (what an SSH connection's ``host_key`` extra holds)."""
        return " ".join((self.home / "host_ed25519.pub").read_text().split()[:2])

    @property
    def client_key(self) -> Path:
        return self.home / "client_ed25519"


def pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_sshd() -> Iterator[Sshd]:
    """An sshd on a free port of 127.0.0.1 accepting the client key for any user (root included), stopped
    (with the sessions of clients that never closed) and removed afterwards."""
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} missing: include/scripts/install.sh installs openssh-server")
    home = Path(tempfile.mkdtemp(prefix="pgupgrade-sshd-"))
    home.chmod(0o755)
    for key in ("host_ed25519", "client_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True)
    shutil.copy(home / "client_ed25519.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home}/host_ed25519\n"
        f"AuthorizedKeysFile {home}/authorized_keys\n"
        f"PidFile {home}/sshd.pid\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nStrictModes no\nLogLevel VERBOSE\n"
        # bash sources ~/.bashrc for a command run by sshd unless SHLVL says it is nested: this machine's root
        # profile (pyenv init) would add 0.2-1 s to each of the ~100 commands of an upgrade
        "SetEnv SHLVL=1\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory (systemd makes it)
    with open(home / "sshd.log", "wb") as log:
        listener = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")], stderr=log)
    daemon = Sshd(listener, port, home)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert listener.poll() is None and time.monotonic() < deadline, daemon.log
                time.sleep(0.05)
        yield daemon
    finally:
        sessions = daemon.children()  # of clients that never closed (asked before the listener goes)
        listener.terminate()
        listener.wait(10)
        for pid in sessions:
            if comm(pid) == "sshd":
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)
