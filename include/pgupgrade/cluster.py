"""The cluster model and how its service is controlled.

A cluster is built from a postgres connection (Airflow's or a plain mapping) whose ``extra`` JSON carries
``pg_bindir``, ``pg_datadir``, ``os_user``, ``service`` (``pg_ctl`` | ``systemd:<unit>`` |
``pg_ctlcluster <version> <name>``), optionally ``pg_confdir`` (configuration outside the data directory),
``ssh_conn_id`` (absent: the worker is on the database host), ``new_service`` (the unit a major upgrade's new
cluster runs under, when the old one's is an admin-named systemd unit) and ``standbys`` (the Airflow postgres
connection ids of the cluster's streaming standbys, each with an ``extra`` of its own: ``pgupgrade.topology``). A
standby on another host than its primary names how the primary's host reaches it over SSH for a major upgrade's
rsync: ``ssh_from_primary`` = ``[user@]host[:port]`` (default user: its ``os_user``).
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
_CONN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
_SSH_DEST_RE = re.compile(r"^(?:([a-z_][a-z0-9_-]{0,31})@)?([A-Za-z0-9][A-Za-z0-9.-]{0,252})(?::(\d{1,5}))?$")


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
    # the service the cluster's next major runs under when it cannot be derived from ``service`` (an admin-named
    # systemd unit): connection extra ``new_service``, e.g. ``systemd:pg17.service``
    new_service: str | None = None
    # the connection ids of its streaming standbys (connection extra ``standbys``)
    standbys: tuple[str, ...] = ()
    # a standby's: how its primary's host reaches this host over SSH (connection extra ``ssh_from_primary``)
    ssh_from_primary: str | None = None
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
        parse_service(service, f"{name}.extra.service")
        new_service = extra.get("new_service") or None
        if new_service is not None:
            new_service = str(new_service)
            parse_service(new_service, f"{name}.extra.new_service")
        ssh_conn_id = extra.get("ssh_conn_id") or None
        standbys = extra.get("standbys") or []
        if not isinstance(standbys, list) or not all(isinstance(s, str) and _CONN_ID_RE.match(s) for s in standbys):
            raise ConfigError(f"{name}.extra.standbys", "must be a list of Airflow connection ids, one per standby")
        if name in standbys or len(set(standbys)) != len(standbys):
            raise ConfigError(f"{name}.extra.standbys", "names a connection twice, or the cluster's own")
        ssh_from_primary = extra.get("ssh_from_primary") or None
        if ssh_from_primary is not None and not (
            isinstance(ssh_from_primary, str) and _SSH_DEST_RE.match(ssh_from_primary)
        ):
            raise ConfigError(f"{name}.extra.ssh_from_primary", f"must be [user@]host[:port], got {ssh_from_primary!r}")
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
            new_service=new_service,
            standbys=tuple(standbys),
            ssh_from_primary=ssh_from_primary,
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
        if self.new_service:
            extra["new_service"] = self.new_service
        if self.standbys:
            extra["standbys"] = list(self.standbys)
        if self.ssh_from_primary:
            extra["ssh_from_primary"] = self.ssh_from_primary
        return extra

    def ssh_destination(self) -> tuple[str, int]:
        """(``user@host``, port) of ``ssh_from_primary``; ConfigError when it is not set."""
        m = _SSH_DEST_RE.match(self.ssh_from_primary or "")
        if not m:
            raise ConfigError(f"{self.name}.extra.ssh_from_primary", "is required for a standby on another host")
        return f"{m.group(1) or self.os_user}@{m.group(2)}", int(m.group(3) or 22)

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


@dataclass(frozen=True)
class ServiceSpec:
    """A parsed ``service`` string: ``kind`` (``pg_ctl`` | ``systemd`` | ``pg_ctlcluster``), the unit (systemd) or
    the Debian version and cluster name (pg_ctlcluster)."""

    kind: str
    unit: str | None = None
    version: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        if self.kind == "systemd":
            return f"systemd:{self.unit}"
        if self.kind == "pg_ctlcluster":
            return f"pg_ctlcluster {self.version} {self.name}"
        return "pg_ctl"


def parse_service(service: str, field_name: str = "service") -> ServiceSpec:
    """The service string of a connection extra, validated (ConfigError naming ``field_name``)."""
    if not _SERVICE_RE.match(service):
        raise ConfigError(
            field_name, f"must be 'pg_ctl', 'systemd:<unit>' or 'pg_ctlcluster <version> <name>', got {service!r}"
        )
    if service.startswith("systemd:"):
        return ServiceSpec("systemd", unit=service.split(":", 1)[1])
    if service.startswith("pg_ctlcluster "):
        _, version, name = service.split(" ")
        return ServiceSpec("pg_ctlcluster", version=version, name=name)
    return ServiceSpec("pg_ctl")


def service_for(cluster: Cluster, host: Host | None = None) -> ServiceManager:
    """The service manager the cluster declares (connection extra ``service``): ``PgCtl``, ``PgCtlCluster``
    (Debian's postgresql-common) or ``Systemd``."""
    spec = parse_service(cluster.service)
    if spec.kind == "systemd":
        return Systemd(cluster, host)
    if spec.kind == "pg_ctlcluster":
        return PgCtlCluster(cluster, host)
    return PgCtl(cluster, host)


class _Manager:
    """What every kind shares: whether a postmaster owns the data directory (``pg_ctl status``, whichever
    manager started it), whether it answers, waiting for it."""

    def __init__(self, cluster: Cluster, host: Host | None = None) -> None:
        self.cluster = cluster
        self.host = host or LocalHost()

    @property
    def log_file(self) -> str:
        return str(Path(self.cluster.datadir) / "log" / "pg_ctl.log")

    def _check_mode(self, mode: str) -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ConfigError("stop_mode", f"must be smart, fast or immediate, got {mode!r}")

    def _stopped_after(self) -> None:
        if self.is_running():
            raise CheckFailed(f"cluster {self.cluster.name} still has a postmaster after stop")

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


class Service(_Manager):
    """``pg_ctl`` of the cluster's own installation, as its OS user (``PgCtl``; ``Service`` is its historical
    name): the only kind that takes server options (private starts). Whatever the cluster declares, ``Service``
    controls it by pg_ctl: use ``service_for`` for the declared kind."""

    def start(self, timeout: float = 120, options: str | None = None) -> None:
        c = self.cluster
        self.host.run(["mkdir", "-p", str(Path(self.log_file).parent)], user=c.os_user)
        # pg_ctl -D takes the directory holding postgresql.conf (Debian: /etc/postgresql/N/main).
        argv = [c.bin("pg_ctl"), "-D", c.config_dir, "-l", self.log_file, "-w", "-t", str(int(timeout))]
        if options:
            argv += ["-o", options]
        self.host.run([*argv, "start"], user=c.os_user, timeout=timeout + 30, cwd=c.datadir)
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", timeout: float = 300) -> None:
        c = self.cluster
        self._check_mode(mode)
        if not self.is_running():
            log.info("cluster %s is already stopped", c.name)
            return
        argv = [c.bin("pg_ctl"), "-D", c.datadir, "-m", mode, "-w", "-t", str(int(timeout)), "stop"]
        self.host.run(argv, user=c.os_user, timeout=timeout + 30)
        self._stopped_after()


class _Platform(_Manager):
    """A manager of the platform (pg_ctlcluster, a systemd unit) run as root: it starts the registered cluster as
    configured, so it takes no server options; ``_argv`` says how."""

    kind = ""

    def _argv(self, verb: str, mode: str) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 120, options: str | None = None) -> None:
        if options:
            raise ConfigError(
                "service", f"{self.kind} starts the registered cluster as configured: it takes no server options"
            )
        self.host.run(self._argv("start", ""), user="root", timeout=timeout)
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", timeout: float = 300) -> None:
        self._check_mode(mode)
        if not self.is_running():
            log.info("cluster %s is already stopped", self.cluster.name)
            return
        self.host.run(self._argv("stop", mode), user="root", timeout=timeout)
        self._stopped_after()


PgCtl = Service


class PgCtlCluster(_Platform):
    """Debian's ``pg_ctlcluster <version> <name>`` as root (on a systemd host it hands start and stop to
    ``postgresql@<version>-<name>``): the binaries of /usr/lib/postgresql/<version>, the configuration of
    /etc/postgresql/<version>/<name>."""

    kind = "pg_ctlcluster"

    def __init__(self, cluster: Cluster, host: Host | None = None) -> None:
        super().__init__(cluster, host)
        spec = parse_service(cluster.service)
        self.version, self.name = str(spec.version), str(spec.name)

    @property
    def log_file(self) -> str:
        return f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log"  # pg_ctlcluster's default

    def _argv(self, verb: str, mode: str) -> list[str]:
        return ["pg_ctlcluster", self.version, self.name, verb, *(["-m", mode] if mode else [])]


class Systemd(_Platform):
    """``systemctl start|stop <unit>`` as root; the unit decides how the server runs (its stop mode too)."""

    kind = "a systemd unit"

    def __init__(self, cluster: Cluster, host: Host | None = None) -> None:
        super().__init__(cluster, host)
        self.unit = str(parse_service(cluster.service).unit)

    @property
    def log_file(self) -> str:
        m = _DEBIAN_UNIT_RE.match(self.unit)
        # Debian's postgresql@ units log where pg_ctlcluster does; other units log to the journal (no file)
        return f"/var/log/postgresql/postgresql-{m.group(1)}-{m.group(2)}.log" if m else ""

    def _argv(self, verb: str, mode: str) -> list[str]:
        return ["systemctl", verb, self.unit]  # the unit decides the stop mode


# Debian's templated unit of cluster <version>/<name>
_DEBIAN_UNIT_RE = re.compile(r"^postgresql@(\d+)-([A-Za-z0-9._-]+?)(?:\.service)?$")


def debian_unit(unit: str) -> tuple[str, str] | None:
    """(version, cluster name) of Debian's ``postgresql@<version>-<name>.service``; None for any other unit."""
    m = _DEBIAN_UNIT_RE.match(unit)
    return (m.group(1), m.group(2)) if m else None
