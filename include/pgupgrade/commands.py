"""One command runner: argv lists only, a pinned environment, a timeout, an OS user, secrets redacted.

``LocalHost`` runs on the worker; ``SSHHost`` runs on the database host over an SSH client (the Airflow
adapter builds it from an SSH connection). Neither ever builds a shell string from input: the remote login
shell receives a ``shlex.join`` of words (every word quoted) around a constant wrapper script. Neither runs a
shell under sudo: a command run as another user is ``sudo -n -u user [-D dir] -- argv`` (``runuser`` as root),
its program listed in ``pgupgrade.privileges`` (checked before it runs), so a sudoers file allows it by name.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import select
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pgupgrade import privileges
from pgupgrade.errors import CommandError

log = logging.getLogger(__name__)

BASE_ENV = {"LC_ALL": "C", "LANG": "C", "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
REDACTED = "***"


class Redactor:
    """Replaces every registered secret in text; the one place that knows the secrets."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if s}

    def add(self, secret: str | None) -> None:
        if secret:
            self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text


@dataclass(frozen=True)
class Result:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    user: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "argv": self.argv,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration_s": round(self.duration_s, 3),
            "user": self.user,
        }


class Host(Protocol):
    """What the library needs of a machine: run an argv as some user, and say which machine it is."""

    name: str
    redactor: Redactor

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
        stdin: str | None = None,
    ) -> Result: ...


def _check_argv(argv: list[str]) -> None:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a non-empty list of str, got {argv!r}")
    if any("\x00" in a for a in argv):
        raise ValueError("argv contains a NUL byte")


@dataclass
class LocalHost:
    """Runs commands on this machine. As root it switches user with runuser, otherwise with ``sudo -n -u user
    [-D dir] -- argv`` (exactly what a sudoers rule names; see pgupgrade.privileges). ``inventory``: a command
    run as another user must be in ``privileges.INVENTORY`` (False only for tools outside the library, such as
    the bench, that run their own commands as postgres)."""

    name: str = "localhost"
    redactor: Redactor = field(default_factory=Redactor)
    inventory: bool = True

    def _prefix(self, user: str | None, cwd: str | None) -> tuple[list[str], str | None, bool]:
        """(the words before argv, the working directory of the process started, whether it is sudo)."""
        if user is None or user == pwd.getpwuid(os.geteuid()).pw_name:
            return [], cwd, False
        if os.geteuid() == 0:
            return ["runuser", "-u", user, "--"], cwd, False
        # exactly the argv a sudoers rule names; the user may not enter the worker's directory: sudo starts in /
        return sudo_prefix(user, cwd), "/", True

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
        stdin: str | None = None,
    ) -> Result:
        _check_argv(argv)
        full_env = {**BASE_ENV, **(env or {})}
        self.redactor.add(full_env.get("PGPASSWORD"))
        if user is not None and self.inventory:
            privileges.require(argv, user, cwd=cwd, env_keys=full_env)
        prefix, proc_cwd, via_sudo = self._prefix(user, cwd)
        full = prefix + list(argv)
        shown = self.redactor(shlex.join(argv))
        log.info("run%s: %s", f" as {user}" if user else "", shown)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                full,
                input=stdin,
                capture_output=True,
                text=True,
                env=full_env,
                cwd=proc_cwd,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise CommandError([self.redactor(a) for a in argv], None, self.redactor(err), self.redactor(out)) from None
        except FileNotFoundError as exc:
            raise CommandError([self.redactor(a) for a in argv], 127, str(exc)) from None
        result = Result(
            argv=[self.redactor(a) for a in argv],
            exit_code=proc.returncode,
            stdout=self.redactor(proc.stdout),
            stderr=self.redactor(proc.stderr),
            duration_s=time.monotonic() - started,
            user=user,
        )
        log.info("exit %s after %.2fs", result.exit_code, result.duration_s)
        if via_sudo and user is not None:
            _raise_if_sudo_refused(result, user, pwd.getpwuid(os.geteuid()).pw_name, self.name)
        if check and result.exit_code != 0:
            raise CommandError(result.argv, result.exit_code, result.stderr, result.stdout)
        return result


def sudo_prefix(user: str, cwd: str | None) -> list[str]:
    """``sudo -n -u user [-D cwd] --``: no shell, no --preserve-env (the sudoers file's env_keep lists what passes);
    a rule per program allows it (pgupgrade.privileges)."""
    return ["sudo", "-n", "-u", user, *(["-D", cwd] if cwd else []), "--"]


# What sudo itself writes when it refuses (exit 1): its own prefix, or the policy's "Sorry, user ..."
_SUDO_REFUSAL = re.compile(r"^(sudo: |Sorry, user )", re.MULTILINE)


def _raise_if_sudo_refused(result: Result, user: str, login: str | None, where: str) -> None:
    """sudo's refusal (no rule for the program, -D not allowed, a password asked for) as SudoRefused, whatever
    ``check`` says: a refused ``test -e`` must not read as "the file is not there"."""
    if result.exit_code == 1 and not result.stdout and _SUDO_REFUSAL.search(result.stderr):
        raise privileges.SudoRefused(result.argv, user, login, where, result.stderr)


class SSHClientLike(Protocol):
    """What SSHHost needs of a paramiko ``SSHClient``: its transport (None or inactive once the link is gone)."""

    def get_transport(self) -> Any: ...


# The remote side of SSHHost.run, always this constant text (input reaches it only as positional parameters):
# $1 working directory ("" = /: the login user's home may be closed to the target user), $2 how many secret
# variables follow by name; their values arrive as the first lines of stdin (never in a command line the
# host's ps could show), then the command's own stdin.
_REMOTE_WRAPPER = (
    'dir=${1:-/}; n=$2; shift 2; while [ "$n" -gt 0 ]; do IFS= read -r v || exit 125; export "$1=$v"; shift; '
    'n=$((n - 1)); done; cd -- "$dir" || exit 127; exec "$@"'
)
SECRET_ENV = frozenset({"PGPASSWORD"})
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Commands that only read: run again once over a fresh connection when the link drops while they run.
_READ_ONLY = frozenset(
    {
        "cat",
        "df",
        "dpkg-query",
        "pg_controldata",
        "pg_isready",
        "pg_lsclusters",
        "ps",
        "readlink",
        "stat",
        "tail",
        "test",
    }
)


def read_only(argv: list[str]) -> bool:
    """Whether running argv twice is harmless (it changes nothing on the host)."""
    prog = os.path.basename(argv[0])
    if prog == "pg_ctl":
        return argv[-1] == "status"
    if prog == "postgres":
        return len(argv) == 2 and argv[1] in ("-V", "--version")
    return prog in _READ_ONLY


def _dead_peer_detection(sock: Any) -> None:
    """TCP keepalive and a user timeout on the SSH socket: a peer that vanished without closing (host down,
    network cut) ends the connection within about 90 s instead of the kernel's ~15 minutes, so the command
    fails as SSHConnectionLost rather than waiting out its own timeout. Linux options; skipped elsewhere."""
    if not isinstance(sock, socket.socket):  # e.g. a ProxyCommand
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 90000)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class SSHConnectionLost(CommandError):
    """The SSH connection dropped while a command ran on the remote host: its outcome there is unknown."""

    def __init__(self, argv: list[str], where: str, detail: str) -> None:
        super().__init__(argv, None, detail)
        self.args = (
            f"SSH connection {where} lost while running {argv[0]!r} (its outcome on the host is unknown): {detail}",
        )


class _Lost(Exception):
    """Internal: the link dropped; ``sent`` says whether the command may have started."""

    def __init__(self, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.sent = sent


@dataclass
class SSHHost:
    """Runs commands on a remote host over SSH (a paramiko ``SSHClient``), exactly as LocalHost runs them: the
    same pinned environment (sent inside the command, as sshd drops most variables; secrets such as PGPASSWORD
    on stdin), ``runuser`` to switch user when logged in as root, otherwise the wrapper (as the login user) execs
    ``sudo -n -u user [-D dir] -- argv``, a total deadline; sudo's refusal raises ``privileges.SudoRefused``.

    ``connect`` (e.g. ``SSHHook.get_conn``) makes a new client: a link found dead before a command starts is
    re-established, and a read-only command (``read_only``) whose link dropped mid-way is run once more. Any
    other command whose link drops raises SSHConnectionLost naming ``conn_id``: it is never run twice."""

    client: SSHClientLike
    name: str
    redactor: Redactor = field(default_factory=Redactor)
    conn_id: str | None = None
    connect: Callable[[], SSHClientLike] | None = None
    inventory: bool = True  # as LocalHost's

    @property
    def where(self) -> str:
        return f"{self.conn_id!r} ({self.name})" if self.conn_id else repr(self.name)

    def _transport(self) -> Any:
        transport = self.client.get_transport()
        if (transport is None or not transport.is_active()) and self.connect is not None:
            log.warning("SSH connection %s is down: connecting again", self.where)
            try:
                self.client = self.connect()
            except Exception as exc:  # paramiko and socket errors of every kind
                raise _Lost(f"reconnecting failed: {type(exc).__name__}: {exc}", sent=False) from None
            transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise _Lost("the connection is closed", sent=False)
        _dead_peer_detection(transport.sock)
        return transport

    def _login(self, transport: Any) -> str | None:
        name = transport.get_username()
        return str(name) if name else None

    @staticmethod
    def command_line(
        argv: list[str], user: str | None, login: str | None, env: Mapping[str, str], cwd: str | None = None
    ) -> tuple[str, str]:
        """(the command line for the remote login shell, every word quoted; the secret lines for stdin)."""
        bad = [k for k in env if not _ENV_KEY_RE.match(k)]
        if bad:
            raise ValueError(f"not environment variable names: {bad!r}")
        secrets = {k: v for k, v in env.items() if k in SECRET_ENV}
        if any("\n" in v for v in secrets.values()):
            raise ValueError("a secret environment value contains a newline")
        plain = {k: v for k, v in env.items() if k not in SECRET_ENV}
        words = ["env", "-i", *(f"{k}={v}" for k, v in sorted(plain.items()))]
        after: list[str] = []
        if user and user != login:
            if login == "root":
                words += ["runuser", "-u", user, "--"]
            else:  # the wrapper runs as the login user (in /) and execs exactly sudo's argv
                after, cwd = sudo_prefix(user, cwd), None
        words += ["sh", "-c", _REMOTE_WRAPPER, "pgupgrade-run", cwd or "", str(len(secrets)), *sorted(secrets)]
        return shlex.join([*words, *after, *argv]), "".join(f"{secrets[k]}\n" for k in sorted(secrets))

    def _once(
        self, argv: list[str], user: str | None, env: dict[str, str], cwd: str | None, stdin: str | None, timeout: float
    ) -> tuple[int, bytes, bytes, str | None]:
        transport = self._transport()
        login = self._login(transport)
        command, secret_lines = self.command_line(argv, user, login, env, cwd)
        deadline = time.monotonic() + timeout
        try:
            chan = transport.open_session(timeout=min(timeout, 30))
        except Exception as exc:  # nothing was sent yet: safe to try again over a new connection
            raise _Lost(f"opening a session failed: {type(exc).__name__}: {exc}", sent=False) from None
        try:
            chan.settimeout(timeout)  # bounds the writes below; reads wait in select() against the deadline
            chan.exec_command(command)
            data = (secret_lines + (stdin or "")).encode()
            if data:
                chan.sendall(data)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()

            def drain() -> None:
                while chan.recv_ready():
                    out.extend(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.extend(chan.recv_stderr(65536))

            while not ((chan.eof_received or chan.closed) and chan.status_event.is_set()):
                drain()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    chan.close()
                    raise CommandError(
                        [self.redactor(a) for a in argv],
                        None,
                        self.redactor(f"timed out after {timeout:g}s on {self.name}\n{err.decode(errors='replace')}"),
                        self.redactor(out.decode(errors="replace")),
                    )
                if chan.eof_received or chan.closed:
                    chan.status_event.wait(min(remaining, 1.0))
                else:
                    select.select([chan], [], [], min(remaining, 1.0))
            drain()
        except CommandError:
            raise
        except TimeoutError:
            raise CommandError(
                [self.redactor(a) for a in argv], None, f"timed out after {timeout:g}s on {self.name} (stdin not read)"
            ) from None
        except Exception as exc:  # socket errors, paramiko.SSHException, EOFError: the link failed mid-way
            raise _Lost(f"{type(exc).__name__}: {exc}", sent=True) from None
        finally:
            chan.close()
        code = chan.exit_status
        if code == -1 and not transport.is_active():
            raise _Lost("the connection closed before the command's exit status arrived", sent=True)
        return code, bytes(out), bytes(err), login

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
        stdin: str | None = None,
    ) -> Result:
        _check_argv(argv)
        full_env = {**BASE_ENV, **(env or {})}
        self.redactor.add(full_env.get("PGPASSWORD"))
        if user is not None and self.inventory:
            privileges.require(argv, user, cwd=cwd, env_keys=full_env)
        shown = [self.redactor(a) for a in argv]
        log.info("run on %s over ssh%s: %s", self.where, f" as {user}" if user else "", self.redactor(shlex.join(argv)))
        started = time.monotonic()
        attempts = 2 if self.connect is not None else 1
        login: str | None = None
        for attempt in range(1, attempts + 1):
            try:
                code, out, err, login = self._once(argv, user, full_env, cwd, stdin, timeout)
                break
            except _Lost as lost:
                again = attempt < attempts and (not lost.sent or read_only(argv))
                if not again:
                    raise SSHConnectionLost(shown, self.where, self.redactor(str(lost))) from None
                log.warning("SSH connection %s lost (%s): running %s again", self.where, lost, shown[0])
        result = Result(
            argv=shown,
            exit_code=code,
            stdout=self.redactor(out.decode(errors="replace")),
            stderr=self.redactor(err.decode(errors="replace")),
            duration_s=time.monotonic() - started,
            user=user,
        )
        log.info("exit %s after %.2fs", result.exit_code, result.duration_s)
        if user and user != login and login != "root":
            _raise_if_sudo_refused(result, user, login, self.where)
        if check and code != 0:
            why = result.stderr or ("no exit status from the host (killed by a signal?)" if code == -1 else "")
            raise CommandError(result.argv, code, why, result.stdout)
        return result
