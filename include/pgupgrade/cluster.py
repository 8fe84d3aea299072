"""The cluster model and how its service is controlled.

A cluster is built from a postgres connection (Airflow's or a plain mapping) whose ``extra`` JSON carries
``pg_bindir``, ``pg_datadir``, ``os_user``, ``service`` (``pg_ctl`` | ``systemd:<unit>`` |
``pg_ctlcluster <version> <name>``), optionally ``pg_confdir`` (configuration outside the data directory)
and ``ssh_conn_id`` (absent: the worker is on the database host).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pgupgrade.commands import Host, LocalHost
from pgupgrade.errors import CheckFailed, CommandError, ConfigError

log = logging.getLogger(__name__)

_SERVICE_RE = re.compile(r"^(pg_ctl|systemd:[A-Za-z0-9@._-]+|pg_ctlcluster \d+ [A-Za-z0-9._-]+)$")
_OS_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _abs_path(field_name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(field_name, "is required (an absolute path)")
    if "\x00" in value or not os.path.isabs(value) or ".." in Path(value).parts:
        raise ConfigError(field_name, f"must be an absolute path without '..', got {value!r}")
    return os.path.normpath(value)


@dataclass(frozen=True)
class Cluster:
    name: str
    host: str
    port: int
    dbname: str
    user: str
    bindir: str
    datadir: str
    os_user: str = "postgres"
    service: str = "pg_ctl"
    confdir: str | None = None
    ssh_conn_id: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)
    # where this process reaches the server when not at host/port (a forwarded port: ``tunnel.forward``)
    reach: tuple[str, int] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_connection(
        cls,
        name: str,
        *,
        host: str | None,
        port: int | None,
        schema: str | None,
        login: str | None,
        password: str | None,
        extra: Mapping[str, Any] | str | None,
    ) -> Cluster:
        """Builds a cluster from the parts of a postgres connection. Errors name the missing field."""
        if isinstance(extra, str):
            try:
                extra = json.loads(extra) if extra.strip() else {}
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name}.extra", f"is not valid JSON: {exc}") from None
        extra = dict(extra or {})
        if not isinstance(extra, dict):
            raise ConfigError(f"{name}.extra", "must be a JSON object")
        if not host:
            raise ConfigError(f"{name}.host", "is required (host name or Unix socket directory)")
        bindir = _abs_path(f"{name}.extra.pg_bindir", extra.get("pg_bindir"))
        datadir = _abs_path(f"{name}.extra.pg_datadir", extra.get("pg_datadir"))
        confdir = extra.get("pg_confdir")
        if confdir is not None:
            confdir = _abs_path(f"{name}.extra.pg_confdir", confdir)
        os_user = str(extra.get("os_user", "postgres"))
        if not _OS_USER_RE.match(os_user):
            raise ConfigError(f"{name}.extra.os_user", f"is not a valid OS user name: {os_user!r}")
        service = str(extra.get("service", "pg_ctl"))
        if not _SERVICE_RE.match(service):
            raise ConfigError(
                f"{name}.extra.service",
                f"must be 'pg_ctl', 'systemd:<unit>' or 'pg_ctlcluster <version> <name>', got {service!r}",
            )
        ssh_conn_id = extra.get("ssh_conn_id") or None
        return cls(
            name=name,
            host=host,
            port=int(port or 5432),
            dbname=schema or "postgres",
            user=login or "postgres",
            password=password or None,
            bindir=bindir,
            datadir=datadir,
            os_user=os_user,
            service=service,
            confdir=confdir,
            ssh_conn_id=str(ssh_conn_id) if ssh_conn_id else None,
        )

    def to_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "pg_bindir": self.bindir,
            "pg_datadir": self.datadir,
            "os_user": self.os_user,
            "service": self.service,
        }
        if self.confdir:
            extra["pg_confdir"] = self.confdir
        if self.ssh_conn_id:
            extra["ssh_conn_id"] = self.ssh_conn_id
        return extra

    def with_installation(self, bindir: str, datadir: str | None = None) -> Cluster:
        return replace(self, bindir=bindir, datadir=datadir or self.datadir)

    # -- connection -------------------------------------------------------------------------------
    def conninfo(self, dbname: str | None = None) -> dict[str, Any]:
        host, port = self.reach or (self.host, self.port)
        info: dict[str, Any] = {
            "host": host,
            "port": port,
            "dbname": dbname or self.dbname,
            "user": self.user,
            "connect_timeout": 10,
            "application_name": "pgupgrade",
        }
        if self.password:
            info["password"] = self.password
        return info

    def libpq_env(self, dbname: str | None = None) -> dict[str, str]:
        """Environment for client programs: the password goes in PGPASSWORD, never in argv."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": dbname or self.dbname}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def bin(self, program: str) -> str:
        return str(Path(self.bindir) / program)

    @property
    def config_dir(self) -> str:
        """Where postgresql.conf lives: the conf dir when set, else the data dir."""
        return self.confdir or self.datadir


class ServiceManager(Protocol):
    """Starts, stops and watches one cluster: the only way the library changes whether a cluster runs."""

    cluster: Cluster

    @property
    def log_file(self) -> str: ...
    def start(self, timeout: float = 120, options: str | None = None) -> None: ...
    def stop(self, mode: str = "fast", timeout: float = 300) -> None: ...
    def is_running(self) -> bool: ...
    def accepts_connections(self) -> bool: ...
    def wait_ready(self, timeout: float = 120) -> float: ...


def service_for(cluster: Cluster, host: Host | None = None) -> ServiceManager:
    """The service manager the cluster declares (connection extra ``service``): today every kind — ``pg_ctl``,
    ``systemd:<unit>``, ``pg_ctlcluster <major> <name>`` — is handled by ``Service``."""
    return Service(cluster, host)


class Service:
    """Starts, stops and watches one cluster through its declared service manager."""

    def __init__(self, cluster: Cluster, host: Host | None = None) -> None:
        self.cluster = cluster
        self.host = host or LocalHost()

    @property
    def _pgdata_arg(self) -> str:
        # pg_ctl -D takes the directory holding postgresql.conf (Debian: /etc/postgresql/N/main).
        return self.cluster.config_dir

    @property
    def log_file(self) -> str:
        return str(Path(self.cluster.datadir) / "log" / "pg_ctl.log")

    def start(self, timeout: float = 120, options: str | None = None) -> None:
        c = self.cluster
        kind = c.service.split(":", 1)[0].split(" ", 1)[0]
        if kind == "pg_ctl":
            self.host.run(["mkdir", "-p", str(Path(self.log_file).parent)], user=c.os_user)
            argv = [c.bin("pg_ctl"), "-D", self._pgdata_arg, "-l", self.log_file, "-w", "-t", str(int(timeout))]
            if options:
                argv += ["-o", options]
            self.host.run([*argv, "start"], user=c.os_user, timeout=timeout + 30, cwd=c.datadir)
        elif kind == "systemd":
            self.host.run(["systemctl", "start", c.service.split(":", 1)[1]], user="root", timeout=timeout)
        else:
            _, ver, name = c.service.split(" ")
            self.host.run(["pg_ctlcluster", ver, name, "start"], user="root", timeout=timeout)
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", timeout: float = 300) -> None:
        c = self.cluster
        if mode not in ("smart", "fast", "immediate"):
            raise ConfigError("stop_mode", f"must be smart, fast or immediate, got {mode!r}")
        if not self.is_running():
            log.info("cluster %s is already stopped", c.name)
            return
        kind = c.service.split(":", 1)[0].split(" ", 1)[0]
        if kind == "pg_ctl":
            argv = [c.bin("pg_ctl"), "-D", c.datadir, "-m", mode, "-w", "-t", str(int(timeout)), "stop"]
            self.host.run(argv, user=c.os_user, timeout=timeout + 30)
        elif kind == "systemd":
            self.host.run(["systemctl", "stop", c.service.split(":", 1)[1]], user="root", timeout=timeout)
        else:
            _, ver, name = c.service.split(" ")
            self.host.run(["pg_ctlcluster", ver, name, "stop", "-m", mode], user="root", timeout=timeout)
        if self.is_running():
            raise CheckFailed(f"cluster {c.name} still has a postmaster after stop")

    def is_running(self) -> bool:
        """True while a postmaster owns the data directory (postmaster.pid names a live process)."""
        res = self.host.run(
            [self.cluster.bin("pg_ctl"), "-D", self.cluster.datadir, "status"],
            user=self.cluster.os_user,
            check=False,
            timeout=30,
        )
        if res.exit_code == 0:
            return True
        if res.exit_code in (3, 4):
            return False
        raise CommandError(res.argv, res.exit_code, res.stderr, res.stdout)

    def accepts_connections(self) -> bool:
        c = self.cluster
        res = self.host.run([c.bin("pg_isready"), "-h", c.host, "-p", str(c.port), "-t", "2"], check=False, timeout=30)
        return res.exit_code == 0

    def wait_ready(self, timeout: float = 120) -> float:
        """Polls pg_isready until the server accepts connections; returns the seconds waited."""
        started = time.monotonic()
        while True:
            if self.accepts_connections():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise CheckFailed(f"cluster {self.cluster.name} did not accept connections within {timeout}s")
            time.sleep(0.2)
