"""The systemd-managed database host (tests/systemd_host.py): a real systemd as PID 1 of namespaces made by the
test boots without touching the machine (its /tmp, processes, /etc, hostname); a Debian cluster started by
``pg_ctlcluster`` runs as ``postgresql@15-<name>.service`` (pg_ctlcluster redirects to systemctl), answers over
TCP, is enabled; the product reaches the host over SSH as postgres and acts on the unit through real sudo; the
host's teardown (or its own poweroff) ends every process of it and nothing else."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgupgrade.airflow.connections import host_for
from pgupgrade.commands import SSHHost
from pgupgrade.privileges import SudoRefused
from pgupgrade.sql import connect

from systemd_host import MASKED, SSHD_UNIT, SUDOERS, SystemdHost, processes_in
from topology import _wait

pytestmark = [
    pytest.mark.usefixtures("airflow_home"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts, namespaces and a cgroup: needs root"),
]


def _machine_state(name: str) -> dict[str, object]:
    """What the host would have changed on the machine had it escaped its namespace (its cluster name: what
    that cluster would have left). Other tests may change the machine's /etc/postgresql meanwhile: only the
    host's own paths are compared."""
    unit = f"postgresql@15-{name}.service"
    paths = [
        f"/etc/postgresql/15/{name}",
        f"/var/lib/postgresql/15/{name}",
        f"/var/log/postgresql/postgresql-15-{name}.log",
        f"/etc/systemd/system/multi-user.target.wants/{unit}",
        f"/etc/systemd/system/{SSHD_UNIT}",
        *(f"/etc/systemd/system/{masked}" for masked in MASKED),
        SUDOERS,
        "/run/systemd/system",  # made by a booting systemd (the machine has none)
        "/var/lib/systemd/linger",
    ]
    return {
        "hostname": socket.gethostname(),
        "machine-id": Path("/etc/machine-id").read_text(),
        "/etc/systemd/system": sorted(str(p) for p in Path("/etc/systemd/system").rglob("*")),
        **{p: os.path.lexists(p) for p in paths},
    }


@pytest.fixture
def bystander() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A file and a process of the machine's /tmp, as other tests' servers and sockets there."""
    fd, name = tempfile.mkstemp(prefix="pgupgrade-sentinel-", dir="/tmp")
    os.write(fd, b"still here\n")
    os.close(fd)
    proc = subprocess.Popen(["sleep", "3001"], cwd="/tmp")
    try:
        yield Path(name), proc
    finally:
        proc.kill()
        proc.wait(10)
        Path(name).unlink(missing_ok=True)


def test_cluster_under_systemd_in_a_namespace(
    bystander: tuple[Path, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel, sleeper = bystander
    name = f"sd{os.getpid()}"  # the cluster's
    before = _machine_state(name)
    with SystemdHost() as dbhost:
        assert dbhost.ns is not None
        pid1, pid_ns = dbhost.ns.pid, dbhost.pid_ns
        # systemd is PID 1 of its own PID namespace, booted "running" (nothing failed), as a container
        assert dbhost.run(["cat", "/proc/1/comm"]).strip() == "systemd"
        assert dbhost.systemctl("is-system-running").strip() == "running"
        assert dbhost.run(["systemd-detect-virt", "--container"]).strip() == "container-other"
        assert dbhost.run(["hostname"]).strip() == dbhost.hostname
        inside = dbhost.run(["ps", "-eo", "args"])
        assert "sleep 3001" not in inside and "/lib/systemd/systemd" in inside, inside
        assert sentinel.name not in dbhost.run(["ls", "-A", "/tmp"])  # its own /tmp

        # pg_ctlcluster start is redirected to systemctl start postgresql@15-<name>: systemd runs the server
        cluster = dbhost.new_cluster("15", name, seed=False)
        assert dbhost.cluster_name(cluster) == name
        unit = f"postgresql@15-{name}"
        assert cluster.service == f"systemd:{unit}"
        assert dbhost.unit_state(cluster) == ("active", "disabled")
        main_pid = dbhost.systemctl("show", "--property=MainPID", "--value", unit).strip()
        postmaster = dbhost.run(["head", "-1", f"{cluster.datadir}/postmaster.pid"], user="postgres").strip()
        assert main_pid == postmaster != "0"
        with connect(cluster) as conn, conn.cursor() as cur:  # from outside, over TCP
            cur.execute("SELECT host(inet_server_addr()), current_setting('data_directory')")
            assert cur.fetchone() == (dbhost.address, cluster.datadir)
        dbhost.systemctl("enable", unit)
        assert dbhost.unit_state(cluster) == ("active", "enabled")
        assert dbhost.run(["test", "-L", f"/etc/systemd/system/multi-user.target.wants/{unit}.service"]) == ""
        assert _machine_state(name) == before  # the unit, cluster and sudoers file exist in the namespace only

        # the product reaches it over SSH as postgres; root's commands go through real sudo (the sudoers file
        # pgupgrade.privileges generates), pg_ctlcluster redirecting to systemctl there too
        monkeypatch.setenv(*next(iter(dbhost.connection_env().items())))
        host = host_for(cluster)
        assert isinstance(host, SSHHost)
        assert host.run(["id", "-un"]).stdout.strip() == "postgres"
        assert host.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
        host.run(["pg_ctlcluster", "15", name, "stop"], user="root")
        assert dbhost.unit_state(cluster) == ("inactive", "enabled")
        host.run(["systemctl", "start", unit], user="root")
        assert host.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
        with pytest.raises(SudoRefused):  # sudo allows systemctl on the named units only
            host.run(["systemctl", "stop", "pgupgrade-sshd.service"], user="root")
        journal = dbhost.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit])
        assert journal.count(f"Started {unit}.service") == 2, journal
        host.client.close()

    # teardown: PID 1 killed from outside, every process of the namespace gone, nothing else
    with pytest.raises(ProcessLookupError):
        os.kill(pid1, 0)
    assert processes_in(pid_ns) == []
    assert dbhost.cgroup is not None and not dbhost.cgroup.exists()
    assert sentinel.read_text() == "still here\n" and sleeper.poll() is None
    assert _machine_state(name) == before


def test_poweroff_inside_ends_the_namespace_only(bystander: tuple[Path, subprocess.Popen[bytes]]) -> None:
    """systemd's own poweroff (as on a real host) stops it and its namespace: the machine and its /tmp stay."""
    sentinel, sleeper = bystander
    with SystemdHost() as dbhost:
        assert dbhost.ns is not None
        pid_ns = dbhost.pid_ns
        dbhost.systemctl("poweroff", "--no-block")
        _wait(lambda: not dbhost.alive, 30, "systemd to power its namespace off")
        assert processes_in(pid_ns) == []
    assert sentinel.read_text() == "still here\n" and sleeper.poll() is None
