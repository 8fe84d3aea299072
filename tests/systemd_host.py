"""A database host managed by a real systemd: ``/lib/systemd/systemd`` as PID 1 of namespaces made by the test.

``SystemdHost`` is a ``topology.SecondHost`` (same sshd, key, Airflow SSH connection, ``run``, ``host``) whose
namespace's PID 1 is systemd, booted as a container manager would (``container=pgupgrade-test``):

* PID + mount + UTS + cgroup namespaces (``unshare``; the network is the machine's, see below). systemd sees
  only its own processes; its reboot/poweroff ends its PID namespace, never the machine (the kernel turns a
  ``reboot()`` in a child PID namespace into the end of that namespace). It lives in a cgroup v2 directory of
  its own (``/sys/fs/cgroup/unified/pgupgrade-systemd-<pid>-<n>``), mounted as its ``/sys/fs/cgroup``.
* Its own tmpfs over every directory a booting systemd would clean or write and over what the host keeps to
  itself, so nothing it does reaches the machine: ``/tmp``, ``/var/tmp``, ``/run`` (a systemd that shared the
  machine's ``/tmp`` would wipe it at boot), ``/dev`` (a few device nodes, no ``/dev/kmsg``), ``/var/log``,
  ``/var/lib/systemd``, ``/etc/systemd/system`` (empty: nothing the machine enables is started; ``systemctl
  enable`` writes here only), ``/etc/sudoers.d``, and PostgreSQL's ``/etc/postgresql``, ``/var/lib/postgresql``
  (postgres's home) and ``/usr/lib/postgresql`` (Debian's 15 kept, other majors linked to the test
  installations: ``pg_ctlcluster 17 ...`` works inside). ``/sys`` and ``/proc/sys`` are read-only. The rest of
  the file system (``/usr``, ``/opt/pgbin``, the checkout, ``/etc`` otherwise) is the machine's.
* Units that cannot run in such a container, or would touch the machine (udev, getty, sysctl, binfmt,
  tmpfiles, sysusers, ldconfig, timesyncd, ...), are masked in its ``/etc/systemd/system``; ``start()``
  returns once ``systemctl is-system-running`` says ``running`` (``degraded`` fails, listing the failed
  units).
* Network: the machine's (no ``--net``): the test process and the Airflow workers outside reach its sshd and
  servers over TCP on ``127.0.0.3`` (ports distinct from everything else), as they reach ``SecondHost`` on
  127.0.0.2. A network namespace would leave it a loopback nobody outside can reach.
* sshd runs as a systemd unit (``pgupgrade-sshd.service``), taking key logins as ``postgres``; ``postgres``
  may run, through sudo as root, what ``pgupgrade.privileges.sudoers`` allows it (the namespace's
  ``/etc/sudoers.d/pgupgrade``; ``allow_units`` names the units ``systemctl`` may act on).

Clusters are Debian clusters (``pg_createcluster``), started by ``pg_ctlcluster`` — which redirects to
``systemctl start postgresql@<major>-<name>`` because systemd runs — so ``service`` is
``systemd:postgresql@<major>-<name>``. Everything they leave (config, data, logs) is in the namespace's tmpfs:
it goes with the namespace, nothing to drop on the machine. ``stop()`` kills PID 1 from outside (SIGKILL: the
kernel kills every process of the namespace), checks that none is left and removes the cgroup.

Example (``monkeypatch``: pytest's; the DAG run itself as in tests/integration)::

    with SystemdHost() as dbhost:                     # booted ("running"), sshd up: 1-4 s
        old = dbhost.new_cluster("15", enable=True)  # seeded; old.service == "systemd:postgresql@15-<name>"
        name = dbhost.cluster_name(old)              # the Debian cluster name ("sd<port>")
        dbhost.allow_units(f"postgresql@17-{name}")  # sudo lets postgres start/stop the new unit too
        for key, value in dbhost.connection_env().items():  # AIRFLOW_CONN_DBHOST_SYSTEMD_SSH
            monkeypatch.setenv(key, value)
        ...                                          # run the DAG on old (its ssh_conn_id is set)
        assert dbhost.unit_state(f"postgresql@17-{name}") == ("active", "enabled")
        assert dbhost.unit_state(old) == ("inactive", "disabled")
        dbhost.run(["pg_lsclusters"])                # any command inside, as root (user="postgres": as postgres)
"""

from __future__ import annotations

import itertools
import os
import pwd
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pgupgrade import privileges
from pgupgrade.cluster import Cluster

from pgharness import installation, seed_data
from topology import DB_USER, Namespace, SecondHost, Tmpfs, _wait, port_open

SYSTEMD = "/lib/systemd/systemd"
CONTAINER = "pgupgrade-test"
# the machine's cgroup v2 hierarchy: hybrid layout (this machine) or unified
CGROUP_ROOT = next(
    (p for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")) if (p / "cgroup.controllers").exists()),
    Path("/sys/fs/cgroup/unified"),
)
SSHD_UNIT = "pgupgrade-sshd.service"
SUDOERS = "/etc/sudoers.d/pgupgrade"
DEBIAN_MAJOR = "15"  # the packaged PostgreSQL (postgresql-15): /usr/lib/postgresql/15
_serial = itertools.count(1)

# Units masked in the namespace: they need hardware, a kernel or a console the namespace lacks, or would change
# the machine (its sysctls, binfmt, /etc/passwd, ld.so.cache, clock, /dev); a tmpfs hides what the others write.
MASKED = (
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-hwdb-update.service",
    "kmod-static-nodes.service",
    "systemd-modules-load.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-sysusers.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "ldconfig.service",
    "systemd-random-seed.service",
    "systemd-timesyncd.service",
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-remount-fs.service",
    "systemd-repart.service",
    "systemd-pstore.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-resolved.service",
    "networking.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "getty.target",
    "getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "serial-getty@.service",
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
)

# /dev: the nodes a server host needs, made afresh (no /dev/kmsg: the journal stays off the machine's log)
_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def _dev_lines() -> list[str]:
    lines = ["mount -t tmpfs -o mode=0755,nosuid,size=4m tmpfs /dev"]
    for node, (major, minor) in _DEVICES.items():
        lines.append(f"mknod -m 0666 /dev/{node} c {major} {minor}")
    return [
        *lines,
        "mkdir /dev/pts /dev/shm",
        "mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts",
        "ln -s pts/ptmx /dev/ptmx",
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm",  # PostgreSQL's dynamic shared memory
        "ln -s /proc/self/fd /dev/fd",
        "ln -s /proc/self/fd/0 /dev/stdin",
        "ln -s /proc/self/fd/1 /dev/stdout",
        "ln -s /proc/self/fd/2 /dev/stderr",
        "touch /dev/console",
        "mount --bind /dev/null /dev/console",
    ]


def _pid_namespace(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def processes_in(pid_ns: str) -> list[int]:
    """PIDs (as this namespace sees them) of the processes whose PID namespace is pid_ns."""
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _pid_namespace(int(d.name)) == pid_ns]


@dataclass
class SystemdHost(SecondHost):
    """A database host whose PID 1 is systemd (see the module doc). A context manager: ``start()`` on entry,
    ``stop()`` on exit. ``majors``: extra PostgreSQL majors linked into the namespace's /usr/lib/postgresql
    (major → installation directory; default: every test installation other than Debian's 15)."""

    hostname: str = "dbhost-systemd"
    address: str = "127.0.0.3"
    ssh_conn_id: str = "dbhost_systemd_ssh"
    majors: Mapping[str, str] | None = None
    boot_timeout: float = 60
    cgroup: Path | None = None
    pid_ns: str = ""
    boot_s: float = 0.0
    units: list[str] = field(default_factory=list)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> SystemdHost:
        return self.start()

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()

    def start(self) -> SystemdHost:
        if not os.access(SYSTEMD, os.X_OK):
            raise RuntimeError(f"{SYSTEMD} missing: install the systemd package")
        if not (CGROUP_ROOT / "cgroup.controllers").exists():
            raise RuntimeError(f"{CGROUP_ROOT} is not a cgroup v2 hierarchy: systemd needs one")
        self.cgroup = CGROUP_ROOT / f"pgupgrade-systemd-{os.getpid()}-{next(_serial)}"
        super().start()
        return self

    def _namespace(self, db_home: str) -> Namespace:
        if self.majors is None:
            self.majors = {}
            for major in ("16", "17", "18"):
                try:
                    self.majors[major] = str(Path(installation(major).bindir).parent)
                except LookupError:
                    continue
        q = shlex.quote
        db = pwd.getpwnam(DB_USER)
        setup = [
            # before systemd: what it must find, and nothing of the machine it could change
            "umount -R /sys/fs/cgroup",  # the machine's hierarchies (in this mount namespace only)
            "mount -o remount,bind,ro /sys",
            "mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup",  # rooted at the namespace's own cgroup
            "mount --bind /proc/sys /proc/sys",
            "mount -o remount,bind,ro /proc/sys",
            "if [ -e /proc/sysrq-trigger ]; then mount --bind /proc/sysrq-trigger /proc/sysrq-trigger; "
            "mount -o remount,bind,ro /proc/sysrq-trigger; fi",
            *_dev_lines(),
            f"install -d -m 2775 -o {DB_USER} -g {db.pw_gid} /run/postgresql",
            f"install -d -m 1775 -o {DB_USER} -g adm /var/log/postgresql",
            "install -d -m 0755 /run/sshd",
            *(f"ln -s /dev/null /etc/systemd/system/{q(unit)}" for unit in MASKED),
            *(f"ln -s {q(path)} /usr/lib/postgresql/{q(major)}" for major, path in sorted(self.majors.items())),
        ]
        init = shlex.join(
            ["exec", "env", "-i", f"container={CONTAINER}", SYSTEMD, "--unit=multi-user.target", "--show-status=no"]
        )
        return Namespace(
            self.hostname,
            tmpfs=[
                Tmpfs("/tmp", "1777"),
                Tmpfs("/var/tmp", "1777"),
                Tmpfs("/run", "0755"),
                Tmpfs("/var/log", "0755"),
                Tmpfs("/var/lib/systemd", "0755"),
                Tmpfs("/etc/systemd/system", "0755"),
                Tmpfs("/etc/sudoers.d", "0755"),
                Tmpfs("/etc/postgresql", "0755", DB_USER),
                Tmpfs(db_home, "0755", DB_USER),
                Tmpfs("/usr/lib/postgresql", "0755"),
            ],
            keep=[Path(f"/usr/lib/postgresql/{DEBIAN_MAJOR}"), self.boot_log.parent],  # the log: seen from outside
            files={
                "/etc/hosts": f"127.0.0.1 localhost\n{self.address} {self.hostname}\n",
                "/etc/hostname": f"{self.hostname}\n",  # what systemd names the host at boot
            },
            setup=setup,
            init=f"{init} >{q(str(self.boot_log))} 2>&1",
            cgroup=self.cgroup,
            die_with_parent=True,  # a test process killed without teardown takes its systemd along
        )

    def _start_sshd(self, db_home: str) -> None:
        """Once systemd has booted: the sudoers file, then SecondHost's sshd (as a unit: _launch_sshd)."""
        assert self.ns is not None
        self.pid_ns = _pid_namespace(self.ns.pid)
        started = time.monotonic()
        self._wait_booted()
        self.boot_s = time.monotonic() - started
        self._write_sudoers()
        super()._start_sshd(db_home)

    def _launch_sshd(self, argv: list[str]) -> None:
        """sshd as a unit of the namespace's systemd, enabled (argv: SecondHost's, run in the foreground)."""
        unit = f"[Unit]\nDescription=sshd of {self.hostname}\n\n[Service]\nExecStart={shlex.join([*argv, '-D'])}\n"
        unit += "\n[Install]\nWantedBy=multi-user.target\n"
        self.run(["tee", f"/etc/systemd/system/{SSHD_UNIT}"], stdin=unit)
        self.systemctl("daemon-reload")
        self.systemctl("enable", "--now", SSHD_UNIT)

    def _wait_booted(self) -> None:
        def state() -> str:
            if self.ns is None or not self.ns.alive:
                raise RuntimeError(f"{self.hostname}: systemd exited during boot")
            res = self.ns.run(["systemctl", "is-system-running"], check=False, timeout=30)
            return res.stdout.strip() if res.stdout.strip() in ("running", "degraded") else ""

        if _wait(state, self.boot_timeout, f"systemd of {self.hostname}") != "running":
            failed = self.systemctl("list-units", "--failed", "--no-legend", check=False)
            raise RuntimeError(f"{self.hostname}: systemd booted degraded; failed units:\n{failed}")

    def stop(self) -> None:
        """Kills the namespace's PID 1 from outside (the kernel kills every process in it); checks that none is
        left; removes its cgroup. Nothing else to undo: all it wrote is in its tmpfs."""
        pid_ns = self.pid_ns or (_pid_namespace(self.ns.pid) if self.ns is not None and self.ns.pid else "")
        if self.ns is not None:
            self.ns.kill()
        super().stop()  # the key directory (the namespace is already gone)
        if pid_ns:
            _wait(lambda: not processes_in(pid_ns), 10, f"the processes of {self.hostname} to end")
        if self.cgroup is not None and self.cgroup.exists():
            for d in sorted(self.cgroup.rglob("*/"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    d.rmdir()
            self.cgroup.rmdir()

    @property
    def boot_log(self) -> Path:
        """systemd's own output (its journal is inside: ``run(["journalctl", ...])``)."""
        assert self.keydir is not None
        return self.keydir / "systemd.log"

    @property
    def alive(self) -> bool:
        return self.ns is not None and self.ns.alive

    # -- commands inside --------------------------------------------------------------------------------------------
    def systemctl(self, *args: str, check: bool = True) -> str:
        """``systemctl args...`` inside, as root; its stdout."""
        return self.run(["systemctl", *args], check=check)

    def _write_sudoers(self) -> None:
        """The namespace's /etc/sudoers.d/pgupgrade: what ``pgupgrade.privileges.sudoers`` lets the login user
        postgres run as root, systemctl limited to ``units``."""
        bindirs = [privileges.DEBIAN_BINDIR, *(f"{p}/bin" for p in sorted((self.majors or {}).values()))]
        text = privileges.sudoers(DB_USER, DB_USER, bindirs=bindirs, units=self.units)
        privileges.check(text)
        self.run(["tee", SUDOERS], stdin=text)
        self.run(["chmod", "0440", SUDOERS])

    def allow_units(self, *units: str) -> None:
        """Lets postgres run ``systemctl`` (as the inventory allows) on these units too, through sudo."""
        self.units += [u for u in units if u not in self.units]
        self._write_sudoers()

    # -- clusters ---------------------------------------------------------------------------------------------------
    @staticmethod
    def cluster_name(cluster: Cluster) -> str:
        """The Debian cluster name of a cluster made by new_cluster (its unit: postgresql@<major>-<name>)."""
        return Path(cluster.datadir).name

    def new_cluster(
        self,
        version: str = DEBIAN_MAJOR,
        name: str | None = None,
        *,
        seed: bool = True,
        checksums: bool = False,
        enable: bool = False,
        start_conf: str = "manual",
        settings: dict[str, str] | None = None,
    ) -> Cluster:
        """A Debian cluster (``pg_createcluster <major> <name>``) listening on address:port (trust from
        127.0.0.1/8), started by ``pg_ctlcluster <major> <name> start`` — redirected to ``systemctl start
        postgresql@<major>-<name>`` — and enabled with ``enable``. ``start_conf``: its start.conf; ``manual``
        (default) keeps Debian's generator from linking it under postgresql.service, so ``systemctl is-enabled``
        says ``enabled``/``disabled`` as systemctl enable/disable left it (``auto``: ``enabled-runtime``).
        Returns it as the product sees it: service ``systemd:postgresql@<major>-<name>``, reached over TCP,
        acted on through ssh_conn_id."""
        major = version.split(".")[0]
        if self._next_port == 0:
            raise RuntimeError("start() the host first")
        port = self._port()
        name = name or f"sd{port}"
        unit = f"postgresql@{major}-{name}"
        initdb = ["--", "--data-checksums"] if checksums else []
        self.run(["pg_createcluster", major, name, "--port", str(port), "--start-conf", start_conf, *initdb], stdin="")
        confdir = f"/etc/postgresql/{major}/{name}"
        # values as written in postgresql.conf (as SecondHost.new_cluster's settings); the last line wins
        options = {"listen_addresses": f"'{self.address}'", "fsync": "off", "work_mem": "'7MB'", **(settings or {})}
        conf = "".join(f"{k} = {v}\n" for k, v in options.items())
        self.run(["tee", "-a", f"{confdir}/postgresql.conf"], user=DB_USER, stdin=conf)
        hba = f"{confdir}/pg_hba.conf"  # trust first: Debian's file asks a password of 127.0.0.1/32
        rules = "host all all 127.0.0.1/8 trust\nhost replication all 127.0.0.1/8 trust\n" + self.run(["cat", hba])
        self.run(["tee", hba], user=DB_USER, stdin=rules)
        self.allow_units(unit)
        self.run(["pg_ctlcluster", major, name, "start"])  # redirected to systemctl start <unit>
        if enable:
            self.systemctl("enable", unit)
        _wait(lambda: port_open(self.address, port), 30, f"{unit} on {self.address}:{port}")
        bindir = f"/usr/lib/postgresql/{major}/bin"
        cluster = Cluster(
            name=name,
            host=self.address,
            port=port,
            dbname="postgres",
            user=DB_USER,
            bindir=bindir if major == DEBIAN_MAJOR else f"{(self.majors or {})[major]}/bin",
            datadir=f"/var/lib/postgresql/{major}/{name}",
            os_user=DB_USER,
            service=f"systemd:{unit}",
            confdir=confdir,
            ssh_conn_id=self.ssh_conn_id,
        )
        self.clusters.append(cluster)
        if seed:
            seed_data(cluster)
        return cluster

    def unit_state(self, unit_or_cluster: str | Cluster) -> tuple[str, str]:
        """(``systemctl is-active``, ``systemctl is-enabled``) of a unit, or of a cluster's systemd unit."""
        unit = unit_or_cluster
        if isinstance(unit, Cluster):
            unit = unit.service.removeprefix("systemd:")
        active = self.systemctl("is-active", unit, check=False).strip()
        enabled = self.systemctl("is-enabled", unit, check=False).strip()
        return active, enabled
