"""Debian clusters (postgresql-common) end managed: a cluster made by pg_createcluster and run by pg_ctlcluster is
upgraded through the DAG and ends as pg_upgradecluster leaves one — the new major registered in /etc/postgresql on
the old port, the old one down and manual on another port (pg_lsclusters) — and a rollback after it opened puts
every file of the registration back.

postgresql-common finds a major's programs under /usr/lib/postgresql/<major>; the fixture links the PyPI wheels'
installations of 16 and 17 there (only majors not installed there, removed afterwards) and never touches
/usr/lib/postgresql/15 nor an existing cluster: every cluster here has a unique name and is dropped with
pg_dropcluster at the end. The old cluster is a 16 (the wheel): this machine's Debian 15 is 15.20, newer than the
17.10 wheel, and pg_upgrade from it fails in the schema restore (``unrecognized parameter "pg_attver"``, see
docs/operations/upgrade/postgresql/troubleshooting-upgrades.md) — the same layout and tools either way.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import run, run_triggered_rollback, upgrade_conf
from pgharness import OS_USER, data_checks_out, installation, seed_data, served_version, server_port

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])
LIB, ETC, DATA = Path("/usr/lib/postgresql"), Path("/etc/postgresql"), Path("/var/lib/postgresql")
OLD, NEW = "16", "17"
_names = itertools.count()

if not shutil.which("pg_createcluster"):
    pytest.skip("Debian's postgresql-common is not installed", allow_module_level=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=300)


@pytest.fixture(scope="module")
def debian_majors() -> Iterator[None]:
    """The wheels' 16 and 17 where postgresql-common looks for them: a symlink to each installation (bin, lib and
    share: what pg_createcluster, pg_ctlcluster and pg_lsclusters use); removed afterwards, only those it made."""
    made: list[Path] = []
    for major in (OLD, NEW):
        link = LIB / major
        if not link.exists():
            link.symlink_to(Path(installation(major).bindir).parent)  # installation() adds the stand-in extension
            made.append(link)
    yield
    for path in made:
        path.unlink()


@dataclass
class DebianCluster:
    name: str
    port: int
    cluster: Cluster

    @property
    def old_etc(self) -> Path:
        return ETC / OLD / self.name

    def lsclusters(self) -> dict[str, list[str]]:
        """pg_lsclusters' lines of this cluster name, by major: [port, status, owner, data directory, log]."""
        out = sh("pg_lsclusters", "--no-header").stdout
        return {f[0]: f[2:] for f in (line.split() for line in out.splitlines()) if len(f) > 2 and f[1] == self.name}


@pytest.fixture
def debian_cluster(debian_majors, pool) -> Iterator[DebianCluster]:
    """A Debian cluster of the old major (pg_createcluster, started by pg_ctlcluster) with tuning in conf.d,
    seeded; dropped afterwards with whatever the upgrade made of it (new cluster, data and work directories, logs)."""
    name = f"pgu{os.getpid()}n{next(_names)}"
    port = server_port()  # Debian's clusters listen on localhost too: outside the ephemeral range
    existed = {p: p.exists() for p in (ETC / OLD, ETC / NEW, DATA / OLD, DATA / NEW)}
    sh("pg_createcluster", OLD, name, "-p", str(port), "--locale", "C", "-e", "UTF8", "--", "--auth=trust")
    (ETC / OLD / name / "conf.d" / "tuning.conf").write_text("work_mem = '9MB'\nfsync = off\n")
    shutil.chown(ETC / OLD / name / "conf.d" / "tuning.conf", OS_USER, OS_USER)
    sh("pg_ctlcluster", OLD, name, "start")
    cluster = Cluster(
        name=name,
        host="/var/run/postgresql",
        port=port,
        dbname="postgres",
        user="postgres",
        bindir=str(LIB / OLD / "bin"),
        datadir=str(DATA / OLD / name),
        service=f"pg_ctlcluster {OLD} {name}",
        confdir=str(ETC / OLD / name),
    )
    try:
        seed_data(cluster)
        yield DebianCluster(name, port, cluster)
    finally:
        for major in (NEW, OLD):
            if (ETC / major / name).exists():
                sh("pg_dropcluster", "--stop", major, name, check=False)
                shutil.rmtree(ETC / major / name, ignore_errors=True)  # conf.d/tuning.conf: not pg_dropcluster's
        for leftover, major in ((DATA / NEW / name, NEW), (DATA / OLD / name, OLD)):
            if (leftover / "postmaster.pid").exists():  # e.g. a failed test left a private server
                pg_ctl = f"{installation(major).bindir}/pg_ctl"
                sh("runuser", "-u", OS_USER, "--", pg_ctl, "-D", str(leftover), "-m", "immediate", "-w", "stop",
                   check=False)  # fmt: skip
        for leftover in (DATA / NEW / name, DATA / NEW / f".pgupgrade-{name}", DATA / OLD / name):
            shutil.rmtree(leftover, ignore_errors=True)
        for aside in DATA.glob(f"{OLD}/{name}.failed-*"):
            shutil.rmtree(aside, ignore_errors=True)
        for log in Path("/var/log/postgresql").glob(f"postgresql-*-{name}.log"):
            log.unlink()
        for path, was in existed.items():
            if not was and path.exists() and not any(path.iterdir()):
                path.rmdir()


def _conf(pool, dc: DebianCluster, **over: object) -> dict[str, object]:
    conf = upgrade_conf(pool, dc.cluster, NEW, target_major=int(NEW), **over)
    conf["new_datadir"] = ""  # the plan's default: /var/lib/postgresql/17/<name>, as pg_upgradecluster
    conf["backup_dir"] = str(DATA / NEW / f".pgupgrade-{dc.name}" / "backup")
    return conf


def assert_registered(dc: DebianCluster) -> None:
    """The state pg_upgradecluster leaves: the new major on the old port and socket, configured from /etc (conf.d
    carried), the old one down and manual on another port."""
    now = dc.lsclusters()
    assert now[NEW][:4] == [str(dc.port), "online", "postgres", f"{DATA}/{NEW}/{dc.name}"], now
    assert now[OLD][1] == "down" and now[OLD][0] != str(dc.port), now
    assert (dc.old_etc / "start.conf").read_text().split()[-1] == "manual"
    new_etc = ETC / NEW / dc.name
    assert [ln for ln in (new_etc / "start.conf").read_text().splitlines() if ln and not ln.startswith("#")] == ["auto"]
    assert (new_etc / "conf.d" / "tuning.conf").exists() and (new_etc / "pg_ctl.conf").exists()
    assert served_version(dc.cluster) == int(NEW)  # same socket directory and port as before
    with connect(dc.cluster) as conn:
        assert scalar(conn, "SHOW work_mem") == "9MB"  # conf.d/tuning.conf, carried
        assert scalar(conn, "SHOW config_file") == f"{new_etc}/postgresql.conf"
        assert scalar(conn, "SHOW data_directory") == f"{DATA}/{NEW}/{dc.name}"
        assert scalar(conn, "SHOW hba_file") == f"{new_etc}/pg_hba.conf"
        assert scalar(conn, "SHOW cluster_name") == f"{NEW}/{dc.name}"
    assert not (DATA / NEW / dc.name / "postgresql.conf").exists()  # the configuration lives in /etc only


@pytest.mark.parametrize(
    ("mode", "path"), [("link", "restore_backup"), pytest.param("copy", "old_intact", marks=pytest.mark.full)]
)
def test_rollback_after_opening_restores_the_registration_exactly(pool, debian_cluster, monkeypatch, mode, path):
    """CI's case (link): the upgrade registers the new major and opens; a failure after opening
    (after_open_failure=rollback) triggers the rollback — from the base backup in link mode, the old cluster
    untouched in copy mode — which puts every file of the registration back."""
    dc = debian_cluster
    before = dc.lsclusters()
    assert before == {OLD: [str(dc.port), "online", "postgres", f"{DATA}/{OLD}/{dc.name}",
                            f"/var/log/postgresql/postgresql-{OLD}-{dc.name}.log"]}  # fmt: skip
    files = {p: p.read_bytes() for p in sorted(dc.old_etc.rglob("*")) if p.is_file()}
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "refresh_tviews")  # the first step after opening
    # after_open_failure=rollback: a failure after opening triggers the rollback (default: alert, keep serving)
    dr, states = run("pg_major_upgrade", _conf(pool, dc, transfer_mode=mode, after_open_failure="rollback"))
    assert dr.state == "failed" and states["after.refresh_tviews"] == "failed", states
    journal = RunState.for_run(dr.dag_id, dr.run_id, STATE)
    events = [e["event"] for e in journal.events()]
    assert events.index("debian_registered") < events.index("debian_old_moved") < events.index("opened"), events
    assert_registered(dc)  # as it opened
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    rdr, rstates = run_triggered_rollback("pg_major_upgrade_rollback", dr.run_id)
    assert rdr.state == "success", rstates
    decision = RunState.for_run("pg_major_upgrade_rollback", rdr.run_id, STATE).load("decision")
    assert decision["path"] == path, decision
    assert dc.lsclusters() == before  # started by pg_ctlcluster on its port; the new major unregistered
    assert not (ETC / NEW / dc.name).exists()
    assert {p: p.read_bytes() for p in sorted(dc.old_etc.rglob("*")) if p.is_file()} == files  # byte for byte
    assert journal.happened("registration_reversed")
    aside = list((DATA / NEW / f".pgupgrade-{dc.name}").glob(f"etc-{NEW}-{dc.name}.rolled-back-*"))
    assert len(aside) == 1 and (aside[0] / "postgresql.conf").exists()  # moved aside, not deleted
    assert served_version(dc.cluster) == int(OLD)
    data_checks_out(dc.cluster)


@pytest.mark.full  # the same registration as the CI case, through link mode; ~3 min
def test_link_upgrade_registers_the_new_major_as_pg_upgradecluster_does(pool, debian_cluster):
    dc = debian_cluster
    dr, states = run("pg_major_upgrade", _conf(pool, dc, transfer_mode="link"))
    assert dr.state == "success", {t: s for t, s in states.items() if s != "success"}
    assert_registered(dc)
    data_checks_out(dc.cluster)
    # the platform controls it now: pg_ctlcluster <new> <name> stops and starts it
    sh("pg_ctlcluster", NEW, dc.name, "stop")
    assert dc.lsclusters()[NEW][1] == "down"
    sh("pg_ctlcluster", NEW, dc.name, "start")
    assert dc.lsclusters()[NEW][1] == "online"
