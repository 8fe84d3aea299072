"""One command runner: argv lists only, a pinned environment, a timeout, an OS user, secrets redacted.

``LocalHost`` runs on the worker; ``SSHHost`` runs on the database host over an SSH client (the Airflow
adapter builds it from an SSH connection). Neither ever builds a shell string from input: the remote side
receives ``shlex.join(argv)``, which quotes every word.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """Runs commands on this machine. As root it switches user with runuser, otherwise with sudo -n."""

    name: str = "localhost"
    redactor: Redactor = field(default_factory=Redactor)

    def _prefix(self, user: str | None, env_keys: Iterable[str]) -> list[str]:
        if user is None:
            return []
        current = pwd.getpwuid(os.geteuid()).pw_name
        if user == current:
            return []
        if os.geteuid() == 0:
            return ["runuser", "-u", user, "--"]
        keys = ",".join(sorted(env_keys))
        return ["sudo", "-n", f"--preserve-env={keys}", "-u", user, "--"]

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
        full = self._prefix(user, full_env.keys()) + list(argv)
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
                cwd=cwd,
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
        if check and result.exit_code != 0:
            raise CommandError(result.argv, result.exit_code, result.stderr, result.stdout)
        return result


class SSHClientLike(Protocol):
    def exec_command(self, command: str, timeout: float | None = ..., environment: Any = ...) -> Any: ...


@dataclass
class SSHHost:
    """Runs commands on a remote host through a paramiko-style client (``exec_command``)."""

    client: SSHClientLike
    name: str
    redactor: Redactor = field(default_factory=Redactor)

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
        words: list[str] = []
        if user:
            words += ["sudo", "-n", f"--preserve-env={','.join(sorted(full_env))}", "-u", user, "--"]
        words += list(argv)
        command = shlex.join(words)
        if cwd:
            command = f"cd {shlex.quote(cwd)} && {command}"
        log.info("run on %s%s: %s", self.name, f" as {user}" if user else "", self.redactor(shlex.join(argv)))
        started = time.monotonic()
        chan_in, chan_out, chan_err = self.client.exec_command(command, timeout=timeout, environment=full_env)
        if stdin is not None:
            chan_in.write(stdin)
            chan_in.channel.shutdown_write()
        try:
            out = chan_out.read().decode()
            err = chan_err.read().decode()
            code = chan_out.channel.recv_exit_status()
        except TimeoutError:
            raise CommandError([self.redactor(a) for a in argv], None, "timed out") from None
        result = Result(
            argv=[self.redactor(a) for a in argv],
            exit_code=code,
            stdout=self.redactor(out),
            stderr=self.redactor(err),
            duration_s=time.monotonic() - started,
            user=user,
        )
        if check and code != 0:
            raise CommandError(result.argv, code, result.stderr, result.stdout)
        return result
