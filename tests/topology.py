"""A distributed deployment on one machine, for tests: hosts made of Linux namespaces, no containers.

``Namespace``: a UTS + mount + PID namespace made with ``unshare`` — its own hostname, its own tmpfs over the
directories a host keeps to itself (``/tmp``, homes, ...), an ``/etc/hosts`` naming it; the rest of the file
system (``/opt/pgbin``, the checkout) stays shared. The network is the machine's: hosts differ by loopback
address (127.0.0.x). Killing the namespace's first process (SIGKILL) kills everything in it, as a host dies.

``SecondHost``: a database host — its own ``sshd`` (Debian openssh-server, own config and host key) on
``127.0.0.2:<port>`` taking key logins as the ``postgres`` OS user only, and PostgreSQL clusters listening on
127.0.0.2 with data, sockets and home in the namespace. Reached by the workers only over TCP.

``DistributedAirflow``: an ``AirflowStack`` with the CeleryExecutor (Debian ``redis-server`` as broker, result
backend in the metadata database) and two ``airflow celery worker`` processes, each in its own namespace
(hostname ``worker-a`` / ``worker-b``, own ``/tmp``, own empty home and ``PGUPGRADE_STATE_DIR``), running as the
non-root OS user ``airflow``.
"""

from __future__ import annotations

import ctypes
import grp
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import BASE_ENV, Redactor, Result
from pgupgrade.errors import CommandError
from pgupgrade.scratch import InitdbOptions, create_cluster, write_settings
from pgupgrade.sql import connect

from airflow_stack import ROOT, AirflowStack, free_port
from pgharness import installation, seed_data

SSHD = "/usr/sbin/sshd"
REDIS = "/usr/bin/redis-server"
WORKER_USER = "airflow"
DB_USER = "postgres"
DBHOST_ADDRESS = "127.0.0.2"
CONTROL_CONN_ID = "pgupgrade_control"  # the library's default (pgupgrade.airflow.store)


def ensure_user(name: str = WORKER_USER) -> pwd.struct_passwd:
    """A system user without a login shell; its home (/home/<name>) never exists outside a namespace."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        options = ["--system", "--user-group", "--no-create-home", "--home-dir", f"/home/{name}"]
        subprocess.run(
            ["useradd", *options, "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _wait(ok: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = ok()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout}s")
        time.sleep(interval)


def port_open(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def hidden_ancestor(path: Path) -> Path | None:
    """The topmost directory above path (or path) that other users cannot enter, if any."""
    current = Path("/")
    for part in path.parts[1:]:
        current = current / part
        try:
            mode = current.stat().st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return current
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent thread ends (``unshare --kill-child`` passes it on)."""
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


@dataclass(frozen=True)
class Tmpfs:
    path: str
    mode: str = "0755"
    owner: str = "root"


@dataclass
class Namespace:
    """A host: UTS + mount + PID namespaces held by a shell that is their PID 1.

    ``tmpfs``: directories the host keeps to itself (empty at start). ``keep``: paths that stay visible as in the
    main file system (bind-mounted back) although a tmpfs above would hide them — e.g. the checkout under a
    mode-700 /root, whose topmost closed directory gets a mode-755 tmpfs. ``files``: files replaced in the
    namespace only (path → content). ``setup``: shell lines run after the mounts (as root, in the namespace).
    ``init``: a shell command the namespace's PID 1 execs once set up (default: a bash loop reaping orphans).
    ``cgroup``: a cgroup v2 directory (made here) the namespace lives in, with a cgroup namespace rooted there.
    ``die_with_parent``: the namespace is killed when the thread that started it ends (the test process killed
    without its teardown), rather than left running."""

    hostname: str
    tmpfs: list[Tmpfs] = field(default_factory=list)
    keep: list[Path] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    init: str | None = None
    cgroup: Path | None = None
    die_with_parent: bool = False
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0  # the namespace's PID 1, as the main PID namespace sees it
    staging: Path | None = None

    def _script(self) -> str:
        q = shlex.quote
        lines = ["set -eu", f"hostname {q(self.hostname)}"]
        mounts = [Path(t.path) for t in self.tmpfs]
        extra: list[Tmpfs] = []
        rebind: list[Path] = []
        for path in self.keep:
            closed = hidden_ancestor(path)
            if closed is not None and closed not in mounts:
                mounts.append(closed)
                extra.append(Tmpfs(str(closed), "0755"))
            if closed is not None or any(path.is_relative_to(m) for m in mounts):
                rebind.append(path)
        for i, path in enumerate(rebind):  # held open: still reachable once a tmpfs hides them
            lines.append(f"exec {10 + i}<{q(str(path))}")
        assert self.staging is not None
        for i, target in enumerate(self.files):
            lines.append(f"mount --bind {q(str(self.staging / str(i)))} {q(target)}")
        for t in [*self.tmpfs, *extra]:
            user = pwd.getpwnam(t.owner)
            opts = f"mode={t.mode},uid={user.pw_uid},gid={user.pw_gid}"
            lines += [f"mkdir -p {q(t.path)}", f"mount -t tmpfs -o {opts} tmpfs {q(t.path)}"]
        for i, path in enumerate(rebind):
            kind = "-d" if path.is_dir() else "-f"
            make = (
                f"mkdir -p {q(str(path))}" if path.is_dir() else f"mkdir -p {q(str(path.parent))}; touch {q(str(path))}"
            )
            lines += [
                f"[ {kind} {q(str(path))} ] || {{ {make}; }}",
                f"mount -c --bind /proc/self/fd/{10 + i} {q(str(path))}",
            ]
            lines.append(f"exec {10 + i}<&-")
        lines += [*self.setup, "echo ready", "exec >/dev/null 2>&1 </dev/null"]
        # PID 1: orphans (daemonized servers) are reparented here; bash reaps them on SIGCHLD
        lines.append(self.init or "while :; do sleep 3600 & wait $! || true; done")
        return "\n".join(lines)

    def start(self, timeout: float = 30) -> Namespace:
        self.staging = Path(tempfile.mkdtemp(prefix=f"pgupgrade-ns-{self.hostname}-"))
        for i, (target, content) in enumerate(self.files.items()):
            dst = self.staging / str(i)
            dst.write_text(content)
            st = os.stat(target)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private"]
        if self.cgroup is not None:  # joined before unshare: the new cgroup namespace is rooted there
            self.cgroup.mkdir()
            argv = ["sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"', str(self.cgroup), *argv, "--cgroup"]
        self.proc = subprocess.Popen(
            [*argv, "--kill-child=SIGKILL", "bash", "-c", self._script()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the setup's "ready" (or EOF when it failed)
        if line.strip() != b"ready":
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            self.proc.wait(10)
            shutil.rmtree(self.staging, ignore_errors=True)
            raise RuntimeError(f"namespace {self.hostname}: setup failed: {err}")
        self.pid = _wait(lambda: next(iter(_children(self.proc.pid)), 0) if self.proc else 0, timeout, "ns pid 1")
        shutil.rmtree(self.staging, ignore_errors=True)  # bind mounts keep what they need
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def enter(self, user: str | None = None, cwd: str = "/") -> list[str]:
        """The argv prefix that runs a command in this namespace (as user: runuser, no login shell)."""
        prefix = ["/usr/bin/nsenter", "-t", str(self.pid), "-m", "-u", "-p", "--", "/usr/bin/env", "-C", cwd]
        return prefix + (["/usr/sbin/runuser", "-u", user, "--"] if user and user != "root" else [])

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        check: bool = True,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str = "/",
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.enter(user, cwd), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            check=check,
            timeout=timeout,
        )

    def popen(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        log: BinaryIO,
        cwd: str = "/",
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.enter(user, cwd), *argv],
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL to the namespace's PID 1: the kernel kills every process in it (the host "dies")."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.pid = 0


@dataclass
class NamespaceHost:
    """The library's ``Host`` protocol for commands run inside a namespace (as LocalHost runs them locally)."""

    ns: Namespace
    name: str = ""
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
        full_env = {**BASE_ENV, **(env or {})}
        started = time.monotonic()
        try:
            proc = self.ns.run(argv, user=user, check=False, stdin=stdin, env=full_env, cwd=cwd or "/", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CommandError(argv, None, f"timed out after {timeout}s in namespace {self.ns.hostname}") from None
        res = Result(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started, user)
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr, proc.stdout)
        return res


@dataclass
class SecondHost:
    """A second database host (see the module doc). ``start()``, ``new_cluster(...)``, ``ssh_connection()``,
    ``run(argv, user=...)``, ``stop()``."""

    hostname: str = "dbhost2"
    address: str = DBHOST_ADDRESS
    ssh_conn_id: str = "dbhost2_ssh"
    key_owner: str = WORKER_USER  # who must read the client's private key (the Airflow worker user)
    ns: Namespace | None = None
    ssh_port: int = 0
    keydir: Path | None = None
    clusters: list[Cluster] = field(default_factory=list)
    _next_port: int = 0

    @property
    def key_file(self) -> Path:
        assert self.keydir is not None
        return self.keydir / "id_ed25519"

    @property
    def host(self) -> NamespaceHost:
        assert self.ns is not None
        return NamespaceHost(self.ns, name=self.hostname)

    def run(self, argv: list[str], *, user: str | None = None, check: bool = True, stdin: str | None = None) -> str:
        """Runs argv inside the host (as root, or as user); returns stdout."""
        assert self.ns is not None
        return self.ns.run(argv, user=user, check=check, stdin=stdin).stdout

    def start(self) -> SecondHost:
        if not os.access(SSHD, os.X_OK):
            raise RuntimeError(f"{SSHD} missing: include/scripts/install.sh installs openssh-server")
        owner = ensure_user(self.key_owner)
        self.keydir = Path(tempfile.mkdtemp(prefix=f"pgupgrade-{self.hostname}-key-"))
        self.keydir.chmod(0o755)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgupgrade-tests", "-f", str(self.key_file)],
            check=True,
        )
        os.chown(self.key_file, owner.pw_uid, owner.pw_gid)  # 0600: the worker user's, and root's
        db = pwd.getpwnam(DB_USER)
        try:
            self.ns = self._namespace(db.pw_dir).start()
            self._start_sshd(db.pw_dir)
        except BaseException:
            self.stop()
            raise
        # as pgharness: below the ephemeral range, above the product's private ports
        self._next_port = 30000 + (os.getpid() % 60) * 40
        return self

    def _namespace(self, db_home: str) -> Namespace:
        return Namespace(
            self.hostname,
            tmpfs=[
                Tmpfs("/tmp", "1777"),
                Tmpfs("/var/run/postgresql", "2775", DB_USER),
                Tmpfs(db_home, "0755", DB_USER),
            ],
            files={
                "/etc/hosts": f"127.0.0.1 localhost\n{self.address} {self.hostname}\n",
            },
        )

    def _launch_sshd(self, argv: list[str]) -> None:
        """Starts sshd (argv: its program, config and log options) inside the host."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory (systemd makes it)
        self.run(argv)  # daemonizes (child of the ns's PID 1)

    def _start_sshd(self, db_home: str) -> None:
        self.ssh_port = free_port()
        d = "/tmp/sshd"
        self.run(["mkdir", "-m", "0700", d])
        self.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host_ed25519"])
        pub = (self.keydir / "id_ed25519.pub").read_text() if self.keydir else ""
        self.run(["mkdir", "-m", "0700", "-p", f"{db_home}/.ssh"], user=DB_USER)
        self.run(["tee", f"{db_home}/.ssh/authorized_keys"], user=DB_USER, stdin=pub)
        self.run(["chmod", "0600", f"{db_home}/.ssh/authorized_keys"], user=DB_USER)  # sshd's StrictModes
        config = (
            f"ListenAddress {self.address}:{self.ssh_port}\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n"
            # UsePAM: PAM's account phase lets a key log in to an account whose password is locked (Debian's
            # postgres); sshd without PAM refuses it. (A namespace-only /etc/shadow does not last: the kernel detaches
            # that mount when the main system replaces /etc/shadow, e.g. a useradd in another test.)
            "AuthorizedKeysFile .ssh/authorized_keys\nUsePAM yes\nPermitRootLogin no\n"
            f"AllowUsers {DB_USER}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "LogLevel VERBOSE\nSetEnv SHLVL=1\n"  # SHLVL: see tests/integration/test_ssh_host.py
        )
        self.run(["tee", f"{d}/sshd_config"], stdin=config)
        self._launch_sshd([SSHD, "-f", f"{d}/sshd_config", "-E", f"{d}/sshd.log"])
        _wait(lambda: port_open(self.address, self.ssh_port), 10, f"sshd on {self.address}:{self.ssh_port}")

    @property
    def sshd_log(self) -> str:
        return self.run(["cat", "/tmp/sshd/sshd.log"], check=False)

    def ssh_connection(self) -> dict[str, Any]:
        """The Airflow SSH connection (conn_type ssh) to this host as the postgres OS user."""
        return {
            "conn_type": "ssh",
            "host": self.address,
            "port": self.ssh_port,
            "login": DB_USER,
            "extra": {"key_file": str(self.key_file), "no_host_key_check": True, "look_for_keys": False},
        }

    def connection_env(self) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` for ``ssh_connection()``."""
        return {f"AIRFLOW_CONN_{self.ssh_conn_id.upper()}": json.dumps(self.ssh_connection())}

    def ssh_argv(self, *command: str) -> list[str]:
        """An OpenSSH client command line that runs command on this host."""
        return [
            "ssh",
            "-i",
            str(self.key_file),
            "-p",
            str(self.ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            f"{DB_USER}@{self.address}",
            *command,
        ]

    def _port(self) -> int:
        while True:
            self._next_port += 1
            if not port_open(self.address, self._next_port) and not port_open("127.0.0.1", self._next_port):
                return self._next_port

    def new_cluster(
        self,
        version: str = "15.18",
        name: str | None = None,
        *,
        seed: bool = True,
        checksums: bool = False,
        settings: dict[str, str] | None = None,
    ) -> Cluster:
        """A cluster created and started inside the host as the postgres OS user: data in its home, socket in
        its /var/run/postgresql, listening on address:port (trust from 127.0.0.1/8); the returned Cluster
        connects over TCP and acts on the host through ssh_conn_id."""
        assert self.ns is not None
        inst = installation(version)
        port = self._port()
        name = name or f"{self.hostname}_pg{inst.major}_{port}"
        home = f"{pwd.getpwnam(DB_USER).pw_dir}/{name}"
        local = create_cluster(
            inst,
            f"{home}/data",
            name=name,
            port=port,
            socket_dir="/var/run/postgresql",
            os_user=DB_USER,
            options=InitdbOptions(checksums=checksums),
            settings={"listen_addresses": f"'{self.address}'", "work_mem": "'7MB'", "fsync": "off", **(settings or {})},
            host=self.host,
            start=False,
        )
        hba = f"{local.datadir}/pg_hba.conf"
        rules = "host all all 127.0.0.1/8 trust\nhost replication all 127.0.0.1/8 trust\n"  # standbys: .standby()
        self.host.run(["sh", "-c", 'cat >> "$1"', "sh", hba], user=DB_USER, stdin=rules)
        service_for(local, self.host).start()
        cluster = replace(local, host=self.address, ssh_conn_id=self.ssh_conn_id)
        self.clusters.append(cluster)
        if seed:
            seed_data(cluster)
        return cluster

    def standby(self, primary: Cluster, name: str) -> Cluster:
        """A streaming standby of ``primary`` (on another host) in this host: ``pg_basebackup -R`` over TCP with
        a physical slot named ``name`` (``-C -S``), its own port, ``cluster_name`` = ``name``; data directory
        ``<home>/<name>/data``; its connection says how the primary's host reaches this one (``ssh_from_primary``,
        see ``trust_ssh_from``)."""
        port = self._port()
        home = f"{pwd.getpwnam(DB_USER).pw_dir}/{name}"
        self.run(["mkdir", "-p", home], user=DB_USER)
        self.run(
            [primary.bin("pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", primary.user,
             "-D", f"{home}/data", "-R", "-C", "-S", name, "-X", "stream", "-c", "fast", "-w"],
            user=DB_USER,
        )  # fmt: skip
        settings = {"port": str(port), "listen_addresses": f"'{self.address}'", "cluster_name": f"'{name}'",
                    "unix_socket_directories": "'/var/run/postgresql'"}  # fmt: skip
        write_settings(self.host, f"{home}/data/postgresql.conf", settings, DB_USER)
        standby = replace(
            primary, name=name, port=port, host=self.address, datadir=f"{home}/data", ssh_conn_id=self.ssh_conn_id,
            standbys=(), ssh_from_primary=f"{DB_USER}@{self.address}:{self.ssh_port}",
        )  # fmt: skip
        service_for(standby, self.host).start()
        self.clusters.append(standby)
        return standby

    def trust_ssh_from(self, other: SecondHost) -> None:
        """``other``'s postgres OS user logs in here over SSH with a key of its own (made on first use), this
        host's key in its known_hosts: what a DBA sets up for the rsync of a major upgrade's standbys."""
        ssh = f"{pwd.getpwnam(DB_USER).pw_dir}/.ssh"
        other.run(["sh", "-c", 'test -f "$1" || ssh-keygen -q -t ed25519 -N "" -f "$1"', "sh", f"{ssh}/id_ed25519"],
                  user=DB_USER)  # fmt: skip
        pub = other.run(["cat", f"{ssh}/id_ed25519.pub"], user=DB_USER)
        self.run(["sh", "-c", 'cat >> "$1"', "sh", f"{ssh}/authorized_keys"], user=DB_USER, stdin=pub)
        known = other.run(["ssh-keyscan", "-p", str(self.ssh_port), self.address], user=DB_USER)
        other.run(["sh", "-c", 'cat >> "$1"', "sh", f"{ssh}/known_hosts"], user=DB_USER, stdin=known)

    def stop(self) -> None:
        if self.ns is not None and self.ns.alive:
            for c in self.clusters:  # a clean stop first; the namespace's end kills whatever is left
                self.ns.run(
                    [c.bin("pg_ctl"), "-D", c.datadir, "-m", "immediate", "-w", "stop"], user=DB_USER, check=False
                )
            self.ns.kill()
        if self.keydir is not None:
            shutil.rmtree(self.keydir, ignore_errors=True)


@dataclass
class Redis:
    """Debian's redis-server on 127.0.0.1:<free port>, its own config and directory, no persistence; runs as the
    package's ``redis`` user when it exists."""

    home: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        if not os.access(REDIS, os.X_OK):
            raise RuntimeError(f"{REDIS} missing: include/scripts/install.sh installs redis-server")
        self.port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)
        conf = self.home / "redis.conf"
        conf.write_text(
            f'bind 127.0.0.1\nport {self.port}\ndir {self.home}\nsave ""\nappendonly no\ndaemonize no\n'
            'protected-mode yes\nlogfile ""\n'
        )
        conf.chmod(0o644)
        user = ["runuser", "-u", "redis", "--"] if _has_user("redis") else []
        with open(self.home / "redis.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*user, REDIS, str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(lambda: port_open("127.0.0.1", self.port), 10, "redis")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def control_database(cluster: Cluster, dbname: str = "pgupgrade_control") -> dict[str, str]:
    """Creates dbname on cluster (reached over TCP); the environment that names it as the control database."""
    with connect(cluster) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    conn_value = {"conn_type": "postgres", "host": cluster.host, "port": cluster.port, "schema": dbname}
    return {f"AIRFLOW_CONN_{CONTROL_CONN_ID.upper()}": json.dumps({**conn_value, "login": cluster.user})}


@dataclass
class CeleryWorker:
    name: str
    ns: Namespace
    proc: subprocess.Popen[bytes]
    log: Path


class DistributedAirflow(AirflowStack):
    """AirflowStack with the CeleryExecutor and celery workers in their own namespaces (see the module doc).

    The metadata cluster must listen on TCP (its ``host`` an address): the workers' /tmp hides socket dirs.
    ``shared`` paths (e.g. the second host's key directory) stay visible in the workers. ``control_db``: the run
    store's control database (``pgupgrade_control``, a database on the metadata cluster, which is never
    upgraded) unless extra_env names one: worker-local state files are refused under the CeleryExecutor."""

    def __init__(
        self,
        metadata_cluster: Cluster,
        extra_env: dict[str, str] | None = None,
        *,
        workers: tuple[str, ...] = ("worker-a", "worker-b"),
        concurrency: int = 1,
        shared: list[Path] | None = None,
        heartbeat_timeout_s: int = 30,
        control_db: bool = True,
    ) -> None:
        if metadata_cluster.host.startswith("/"):
            raise ValueError("the metadata cluster must be reached over TCP (host an address, not a socket dir)")
        self.redis = Redis(Path(tempfile.mkdtemp(prefix="pgupgrade-e2e-redis-")))
        self.worker_names, self.concurrency = workers, concurrency
        self.shared = list(shared or [])
        self.user = ensure_user(WORKER_USER)
        env = dict(extra_env or {})
        if control_db and f"AIRFLOW_CONN_{CONTROL_CONN_ID.upper()}" not in env:
            env.update(control_database(metadata_cluster))
        self.redis.start()
        try:
            super().__init__(
                metadata_cluster,
                env,
                executor="CeleryExecutor",
                broker_url=self.redis.url,
                heartbeat_timeout_s=heartbeat_timeout_s,
            )
        except BaseException:
            self.redis.stop()
            raise
        self.logs = self.home / "logs"  # shared by every component: the UI reads the workers' task logs here
        self.logs.mkdir(exist_ok=True)
        os.chown(self.logs, self.user.pw_uid, self.user.pw_gid)
        self.home.chmod(0o755)
        self.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(self.logs)
        self.workers: dict[str, CeleryWorker] = {}

    def worker_env(self, name: str, index: int) -> dict[str, str]:
        home = f"/home/{WORKER_USER}"
        return {
            **self.env,
            "HOME": home,
            "USER": WORKER_USER,
            "LOGNAME": WORKER_USER,
            "AIRFLOW_HOME": f"{home}/airflow",
            "PGUPGRADE_STATE_DIR": f"{home}/pgupgrade-state",
            "TMPDIR": "/tmp",
            "PATH": f"{Path(sys.executable).parent}:{BASE_ENV['PATH']}",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow.utils.net.getfqdn",
        }

    def _namespace(self, name: str) -> Namespace:
        keep = [ROOT, Path(sys.prefix), Path(sys.base_prefix), self.logs, *self.shared]
        if not os.stat(ROOT).st_mode & stat.S_IXOTH:
            raise RuntimeError(f"{ROOT} is not enterable by other users: the {WORKER_USER} user cannot read it")
        return Namespace(
            name,
            tmpfs=[Tmpfs("/tmp", "1777"), Tmpfs("/home", "0755")],
            keep=keep,
            # getfqdn() (the task instance's hostname) resolves the name here, never through DNS
            files={"/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {name}\n"},
        )

    def start_worker(self, name: str) -> CeleryWorker:
        index = self.worker_names.index(name)
        ns = self._namespace(name).start()
        home = f"/home/{WORKER_USER}"
        ns.run(["install", "-d", "-m", "0700", "-o", WORKER_USER, "-g", grp.getgrgid(self.user.pw_gid).gr_name, home])
        env = self.worker_env(name, index)
        for d in (env["AIRFLOW_HOME"], env["PGUPGRADE_STATE_DIR"]):
            ns.run(["mkdir", "-p", d], user=WORKER_USER)
        log = self.home / f"{name}.log"
        argv = [sys.executable, "-m", "airflow", "celery", "worker", "--concurrency", str(self.concurrency)]
        argv += ["--celery-hostname", name]
        with open(log, "ab") as out:
            proc = ns.popen(argv, user=WORKER_USER, env=env, log=out, cwd=home)
        worker = CeleryWorker(name, ns, proc, log)
        self.workers[name] = worker
        return worker

    def wait_workers_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            for w in self.workers.values():
                if w.proc.poll() is not None:
                    raise RuntimeError(f"celery worker {w.name} exited: see {w.log}")
            return all(f"{w.name} ready.".encode() in w.log.read_bytes() for w in self.workers.values())

        _wait(ready, timeout, "celery workers", interval=0.5)

    def start(self) -> DistributedAirflow:
        try:
            self.airflow("db", "migrate")
            self.launch()
            for name in self.worker_names:  # they start (~20 s of imports) while the api-server does
                self.start_worker(name)
            self.wait_healthy()
            self.wait_workers_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def worker_run(self, name: str, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs argv in the worker's namespace as the worker user, with the worker's environment."""
        w = self.workers[name]
        env = self.worker_env(name, self.worker_names.index(name))
        return w.ns.run(argv, user=WORKER_USER, env=env, cwd=f"/home/{WORKER_USER}", check=check)

    def kill_worker(self, name: str) -> None:
        """SIGKILL to the worker's whole namespace: the celery worker, its pool and its task processes die at
        once, as when its machine dies. ``start_worker(name)`` brings a fresh one back."""
        w = self.workers.pop(name)
        w.ns.kill()
        try:
            w.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait(10)

    def stop(self) -> None:
        for name in list(self.workers):
            w = self.workers[name]
            try:  # a warm shutdown first (the worker finishes or gives back its tasks), then the namespace dies
                os.killpg(w.proc.pid, signal.SIGTERM)
                w.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            self.kill_worker(name)
        super().stop()
        self.redis.stop()
        shutil.rmtree(self.redis.home, ignore_errors=True)
