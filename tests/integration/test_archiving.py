"""WAL archiving across a major upgrade, with real archivers.

- pgBackRest (Debian 12's 2.45, a local repository): archiving works on 15; the upgrade to 16 is refused in the
  plan, naming the release needed (2.46), with nothing stopped.
- A plain archive script (full tier): a fault drill after the new cluster started privately is rolled back and
  the archive holds no WAL of the new cluster (each segment's system identifier, read from its long page
  header), the old cluster archiving again; then a link upgrade 15 → 17 archives nothing of the new cluster
  before its public start (the archive script's log against the journal) and archives after opening, through
  the admin's ``archiving`` hook run with the new cluster in its environment.
- Barman 3.19.1 from PyPI (its own virtualenv, include/scripts/install.sh), ``archiver = on``: the cluster's
  archive_command delivers into the incoming directory of the Barman server of its major, a base backup of the old
  cluster by ``backup_method = postgres``, ``barman check`` OK. A fault drill rolled back leaves Barman's server
  the old cluster's (``barman check`` OK, a new WAL switch archived); then a link upgrade 15 → 17 whose new
  cluster tries to archive nothing before its public start, and whose ``archiving`` hook does what Barman's
  documentation asks after pg_upgrade (a new system identifier: a server of its own, never the old one's):
  defines ``pg17``, archives a WAL switch, takes a base backup and passes ``barman check``; the old server holds
  only the old cluster's WAL, the new one only the new cluster's.

DOCUMENTED AND UNPROVEN here: pgBackRest's own path after the plan (stanza-upgrade at opening, check and a full
backup after it): no pgBackRest supporting PostgreSQL 16+ is installable on this machine (Debian 12 has 2.45).
Its command construction and sequence are exercised in tests/unit/test_archiving.py; docs/deploying.md describes
it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgupgrade import archiving
from pgupgrade.cluster import Cluster
from pgupgrade.commands import LocalHost
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import assert_rolled_back, report_of, run, upgrade_conf
from pgharness import HOST, OS_USER, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")
STATE = Path(os.environ["PGUPGRADE_STATE_DIR"])
XLP_LONG_HEADER = 0x0002


def _owned_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, OS_USER, OS_USER)
    return path


# -- pgBackRest ----------------------------------------------------------------------------------------------------


def test_pgbackrest_too_old_for_the_target_is_refused_in_the_plan(pool):
    if not shutil.which("pgbackrest"):
        pytest.fail("pgbackrest is not installed: include/scripts/install.sh installs Debian's")
    top = _owned_dir(pool.root / "pgbr")
    for sub in ("repo", "lock", "log", "spool"):
        _owned_dir(top / sub)
    conf_file = top / "pgbackrest.conf"
    push = f"pgbackrest --config={conf_file} --stanza=demo archive-push %p"
    old = pool.new(
        "15.18", "pgbr15", settings={"archive_mode": "on", "archive_command": f"'{push}'", "wal_level": "replica"}
    )
    conf_file.write_text(
        f"[global]\nrepo1-path={top}/repo\nlock-path={top}/lock\nlog-path={top}/log\nspool-path={top}/spool\n"
        "log-level-console=warn\nlog-level-file=off\narchive-timeout=30\n\n"
        f"[demo]\npg1-path={old.datadir}\npg1-port={old.port}\npg1-socket-path={old.host}\n"
    )
    shutil.chown(conf_file, OS_USER, OS_USER)

    def pgbr(*args: str) -> str:  # pgBackRest refuses to run as root
        return HOST.run(["pgbackrest", f"--config={conf_file}", "--stanza=demo", *args], user=OS_USER).stdout

    pgbr("stanza-create")
    pgbr("check")  # a WAL switch pushed through archive-push and found in the repository
    info = json.loads(pgbr("--output=json", "info"))
    assert info[0]["archive"][0]["max"], info  # WAL in the repository (status 2: no backup yet, none needed)

    conf = upgrade_conf(pool, old, "16")
    track_new(pool, old, conf)
    dr, states = run("pg15_to_pg16_upgrade", conf)
    assert dr.state == "failed" and states["plan.plan"] == "failed", states
    state = RunState.for_run("pg15_to_pg16_upgrade", dr.run_id, STATE)
    failure = next(e for e in state.events() if e["event"] == "step" and e["status"] == "failed")
    assert "pgBackRest 2.45 does not support PostgreSQL 16" in failure["error"], failure
    assert "2.46 or newer" in failure["error"] and "stanza demo" in failure["error"], failure
    assert not state.happened("old_stop_requested") and not state.happened("logins_blocked")
    assert served_version(old) == 15 and not Path(str(conf["new_datadir"])).exists()
    pgbr("check")  # the old cluster still archives into its stanza


# -- a plain archive script ------------------------------------------------------------------------------------------

_SCRIPT = """#!/bin/sh
# archive_command = '{script} %p %f': copy into {arch}, log the time and name; an existing file must be identical
dest="{arch}/$2"
if [ -f "$dest" ]; then
    cmp -s "$1" "$dest" && exit 0
    echo "$2 is already archived with other content" >&2
    exit 1
fi
cp "$1" "$dest.tmp" && mv "$dest.tmp" "$dest" || exit 1
echo "$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00) $2" >> {log}
"""


def _segment_sysid(path: Path) -> int:
    """The system identifier in a WAL segment's first (long) page header."""
    head = path.read_bytes()[:40]
    _magic, info = struct.unpack_from("<HH", head, 0)
    assert info & XLP_LONG_HEADER, f"{path.name}: no long page header"
    return int(struct.unpack_from("<Q", head, 24)[0])


def _archived(arch: Path) -> dict[str, int]:
    """{segment name: system identifier} of the WAL segments in the archive (not history or backup files)."""
    return {
        p.name: _segment_sysid(p)
        for p in arch.iterdir()
        if len(p.name) == 24 and all(c in "0123456789ABCDEF" for c in p.name)
    }


def _log(log: Path) -> list[tuple[dt.datetime, str]]:
    out = []
    for line in log.read_text().splitlines():
        at, name = line.split()
        out.append((dt.datetime.fromisoformat(at), name))
    return out


def _sysid(cluster) -> int:
    with connect(cluster) as conn:
        return int(scalar(conn, "SELECT system_identifier FROM pg_control_system()"))


def _switch_and_wait(cluster, arch: Path, timeout: float = 30) -> str:
    """A write, a WAL switch; waits until the archive holds the segment switched away from."""
    with connect(cluster) as conn:
        scalar(
            conn, "CREATE TABLE IF NOT EXISTS archive_probe (at timestamptz); INSERT INTO archive_probe VALUES (now())"
        )
        name = str(scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())"))
    deadline = time.monotonic() + timeout
    while not (arch / name).exists():
        assert time.monotonic() < deadline, f"{name} not archived after {timeout}s: {sorted(os.listdir(arch))[-5:]}"
        time.sleep(0.2)
    return name


def _drill(pool, old, monkeypatch) -> tuple[dict, RunState]:
    """A fault drill after the new cluster started (privately), rolled back from the base backup: the conf of the
    link upgrade 15 → 17 it ran, and its journal."""
    conf = upgrade_conf(pool, old, "17", transfer_mode="link")
    track_new(pool, old, conf)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "health_check")
    dr, states = run("pg_major_upgrade", {**conf, "target_major": 17})
    assert dr.state == "failed" and states["upgrade.pg_upgrade"] == "failed", states
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    assert_rolled_back(old, "pg_major_upgrade", dr.run_id, "restore_backup")
    return conf, RunState.for_run("pg_major_upgrade", dr.run_id, STATE)


@dataclass(frozen=True)
class Upgraded:
    conf: dict
    new: Cluster
    new_sysid: int
    public_start: dt.datetime
    report: dict


def _upgrade_with_hook(pool, old, conf, monkeypatch, hook: list[str]) -> Upgraded:
    """The link upgrade 15 → 17 after the drill (new data and backup directories), the admin's archiving hook set."""
    monkeypatch.setenv("AIRFLOW_VAR_PGUPGRADE_HOOKS", json.dumps({"archiving": hook}))
    home = Path(old.datadir).parent
    conf = {**conf, "new_datadir": str(home / "data17b"), "backup_dir": str(home / "backup-b")}
    new = track_new(pool, old, conf)
    dr, states = run("pg_major_upgrade", {**conf, "target_major": 17})
    assert dr.state == "success", states
    assert states["after.archiving"] == "success", states
    journal = RunState.for_run("pg_major_upgrade", dr.run_id, STATE)
    return Upgraded(
        conf,
        new,
        int(journal.first("new_identified")["system_identifier"]),
        dt.datetime.fromisoformat(journal.first("new_public_start")["at"]),
        report_of(STATE, "pg_major_upgrade", dr.run_id),
    )


@pytest.mark.full  # CI proves the same rule through Barman (below), a real archiver
def test_script_archive_holds_no_wal_of_the_new_cluster_before_opening(pool, monkeypatch):
    top = _owned_dir(pool.root / "script-archive")
    arch, log, script = _owned_dir(top / "wal"), top / "archive.log", top / "archive.sh"
    script.write_text(_SCRIPT.format(script=script, arch=arch, log=log))
    script.chmod(0o755)
    log.touch()
    shutil.chown(log, OS_USER, OS_USER)
    # archive_timeout: a segment switch every second of WAL activity, so that a server archiving during its private
    # phase would push segments (1 MiB segments keep that cheap)
    settings = {"archive_mode": "on", "archive_command": f"'{script} %p %f'", "archive_timeout": "'1s'"}
    old = pool.new("15.18", "arch15", settings=settings, wal_mb=1)
    old_sysid = _sysid(old)
    _switch_and_wait(old, arch)

    # 1. a fault drill after the new cluster started (privately): rolled back; the archive stays the old cluster's
    conf, drill = _drill(pool, old, monkeypatch)
    assert int(drill.first("new_identified")["system_identifier"]) != old_sysid
    archived = _archived(arch)
    assert set(archived.values()) == {old_sysid}, {n: s for n, s in archived.items() if s != old_sysid}
    again = _switch_and_wait(old, arch)  # the old cluster archives again, into the same archive
    assert _archived(arch)[again] == old_sysid
    with connect(old) as conn:
        failed = scalar(conn, "SELECT failed_count FROM pg_stat_archiver")
    assert failed == 0  # nothing it re-archived after the rollback conflicted with the archive

    # 2. the upgrade, the admin's archiving hook switching WAL on the new cluster from its environment
    hook_out = top / "hook.out"
    hook = (
        f'echo "$PGUPGRADE_NEW_MAJOR $PGUPGRADE_NEW_DATADIR" > {hook_out}; '
        f'psql -XAtc "SELECT pg_walfile_name(pg_switch_wal())" >> {hook_out}'
    )
    up = _upgrade_with_hook(pool, old, conf, monkeypatch, ["sh", "-c", hook])
    new, new_sysid, public_start = up.new, up.new_sysid, up.public_start
    archived = _archived(arch)
    times = dict((name, at) for at, name in _log(log))
    early = [n for n, s in archived.items() if s == new_sysid and times[n] < public_start]
    assert not early, f"new-cluster WAL archived before its public start at {public_start}: {early}"
    assert set(archived.values()) <= {old_sysid, new_sysid}
    assert all(s == old_sysid for n, s in archived.items() if times[n] < public_start)
    major, datadir, switched = hook_out.read_text().split()
    assert (major, datadir) == ("17", up.conf["new_datadir"])
    deadline = time.monotonic() + 30
    while switched not in _archived(arch):
        assert time.monotonic() < deadline, f"{switched} (switched by the hook) not archived"
        time.sleep(0.2)
    assert _archived(arch)[switched] == new_sysid
    mine = _switch_and_wait(new, arch)
    assert _archived(arch)[mine] == new_sysid
    assert archiving.configured(new) == archiving.running(new)  # the configuration files as the server reads them
    assert archiving.running(new).tool == "script/other" and archiving.running(new).mode == "on"
    rep = up.report
    assert rep["archiving"]["tool"] == "script/other" and rep["archiving"]["hook"]["exit_code"] == 0, rep["archiving"]
    assert not rep["archiving"]["needs_attention"]


# -- Barman (PyPI) through the hook -----------------------------------------------------------------------------------

# include/scripts/install.sh installs Barman 3.19.1 in a virtualenv of its own, as a tool of the database host
BARMAN = Path(os.environ.get("PGUPGRADE_TOOLS", "/opt/pgupgrade-tools")) / "barman" / "bin" / "barman"
TOOLS = LocalHost(inventory=False)  # Barman is the admin's tool, not a command of the library

# The archive script routes by the cluster's major so that the new cluster, archiving from its public start on, never
# pushes WAL into the old cluster's server before the hook has given it one of its own; it logs every call, failed
# ones too: a new cluster archiving before its public start would show, whether or not a server took its WAL.
_BARMAN_ARCHIVE = """#!/bin/sh
# archive_command = '{script} %p %f' (run in the data directory): delivers the segment into the incoming directory
# of the Barman server of this cluster's major (pg<PG_VERSION>, archiver = on); logs every call: time, major, name,
# outcome. No server for that major yet: fails, and PostgreSQL keeps the segment until there is one.
major="$(cat PG_VERSION)"
dest="{home}/pg$major/incoming"
at="$(date -u +%Y-%m-%dT%H:%M:%S.%6N+00:00)"
if [ ! -d "$dest" ]; then
    echo "$at $major $2 no-server" >> {log}
    exit 1
fi
cp "$1" "$dest/.$2" && mv "$dest/.$2" "$dest/$2" || exit 1
echo "$at $major $2 delivered" >> {log}
"""

# What the Barman admin runs, as the Barman user, for the cluster in the environment: the archiving hook's (the new
# cluster, after opening) and, before the upgrade, the same for the old one. A Barman server keeps one system
# identifier for its whole history and pg_upgrade makes a new one, so Barman's documentation says not to reuse the
# old server's definition: the new major gets a server of its own, pg<major>, with a base backup and its WAL; the
# old server keeps the old major's backups and WAL.
_BARMAN_SERVER = """#!/bin/sh
set -eu
name="pg$PGUPGRADE_NEW_MAJOR"
conf="{confd}/$name.conf"
cat > "$conf.tmp" <<EOF
[$name]
description = PostgreSQL $PGUPGRADE_NEW_MAJOR in $PGUPGRADE_NEW_DATADIR
conninfo = host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE
streaming_conninfo = host=$PGHOST port=$PGPORT user=$PGUSER
backup_method = postgres
archiver = on
path_prefix = $PGUPGRADE_NEW_BINDIR
EOF
mv "$conf.tmp" "$conf"
barman() {{ {barman} -c {barman_conf} "$@"; }}
barman check "$name" > /dev/null || true  # makes the server's directories (no WAL archived yet: not OK)
barman switch-wal --force --archive --archive-timeout 60 "$name"
barman backup --wait --wait-timeout 120 "$name"
barman check "$name"
"""


def _attempts(log: Path) -> list[tuple[dt.datetime, str, str, str]]:
    """(time, major of the cluster archiving, file name, outcome) of every archive_command call."""
    out = []
    for line in log.read_text().splitlines():
        at, major, name, outcome = line.split()
        out.append((dt.datetime.fromisoformat(at), major, name, outcome))
    return out


def _barman_wal(server_dir: Path) -> dict[str, int]:
    """{segment name: system identifier} of the WAL segments a Barman server holds: delivered into its incoming
    directory and not processed yet, or in its archive (wals/<timeline and log>/)."""
    wals = server_dir / "wals"
    dirs = [server_dir / "incoming", *(d for d in wals.iterdir() if d.is_dir())] if wals.is_dir() else []
    return {name: sysid for d in dirs if d.is_dir() for name, sysid in _archived(d).items()}


def test_barman_through_the_hook_holds_no_wal_of_the_new_cluster_before_opening(pool, monkeypatch):
    if not BARMAN.is_file():
        pytest.fail(f"{BARMAN} is missing: include/scripts/install.sh installs Barman in a virtualenv of its own")
    top = _owned_dir(pool.root / "barman")
    home, confd = _owned_dir(top / "home"), _owned_dir(top / "barman.d")
    barman_conf, log = top / "barman.conf", top / "archive.log"
    script, server_script = top / "archive.sh", top / "barman-server.sh"
    barman_conf.write_text(
        f"[barman]\nbarman_user = {OS_USER}\nbarman_home = {home}\nconfiguration_files_directory = {confd}\n"
        f"log_file = {top}/barman.log\nlog_level = INFO\n"
    )
    script.write_text(_BARMAN_ARCHIVE.format(script=script, home=home, log=log))
    server_script.write_text(_BARMAN_SERVER.format(confd=confd, barman=BARMAN, barman_conf=barman_conf))
    for path in (script, server_script):
        path.chmod(0o755)
    log.touch()
    for path in (barman_conf, log):
        shutil.chown(path, OS_USER, OS_USER)
    as_barman = ["runuser", "-u", OS_USER, "--"]  # Barman's user is postgres here

    def barman(*args: str, check: bool = True):
        return TOOLS.run([str(BARMAN), "-c", str(barman_conf), *args], user=OS_USER, cwd="/", timeout=180, check=check)

    settings = {"archive_mode": "on", "archive_command": f"'{script} %p %f'", "archive_timeout": "'1s'"}
    old = pool.new("15.18", "barman15", settings=settings, wal_mb=1)
    old_sysid = _sysid(old)
    # the old cluster's Barman server pg15: a base backup (pg_basebackup 15), its WAL archived, `barman check` OK
    TOOLS.run([*as_barman, str(server_script)], env=archiving.hook_env(old, 15), cwd="/", timeout=300)
    pg15, pg17 = home / "pg15", home / "pg17"
    assert set(_barman_wal(pg15).values()) == {old_sysid}

    # 1. a fault drill after the new cluster started (privately): rolled back; Barman's pg15 stays the old cluster's
    conf, _ = _drill(pool, old, monkeypatch)
    assert {major for _at, major, _name, _outcome in _attempts(log)} == {"15"}  # the drill's cluster archived nothing
    assert not pg17.exists()
    again = _switch_and_wait(old, pg15 / "incoming")  # the old cluster archives into pg15 again
    barman("archive-wal", "pg15")
    barman("check", "pg15")  # its archive valid: no duplicate with other content (archiver errors), systemid coherent
    held = _barman_wal(pg15)
    assert set(held.values()) == {old_sysid} and held[again] == old_sysid
    assert not (pg15 / "incoming" / again).exists()  # in Barman's archive

    # 2. the upgrade; after opening the hook gives the new cluster its Barman server, pg17
    hook = [*as_barman, str(server_script)]
    up = _upgrade_with_hook(pool, old, conf, monkeypatch, hook)
    new, new_sysid, public_start, rep = up.new, up.new_sysid, up.public_start, up.report
    assert rep["archiving"]["hook"]["exit_code"] == 0, rep["archiving"]
    assert rep["archiving"]["hook"]["argv"] == hook and not rep["archiving"]["needs_attention"], rep["archiving"]

    attempts = _attempts(log)
    early = [(at, name) for at, major, name, _outcome in attempts if major != "15" and at < public_start]
    assert not early, f"the new cluster archived before its public start at {public_start}: {early}"
    assert set(_barman_wal(pg15).values()) == {old_sysid}  # nothing of the new cluster in the old server
    held = _barman_wal(pg17)
    assert held and set(held.values()) == {new_sysid}, held
    assert any(major == "17" and outcome == "delivered" for _at, major, _name, outcome in attempts)
    mine = _switch_and_wait(new, pg17 / "incoming")
    barman("archive-wal", "pg17")
    assert _barman_wal(pg17)[mine] == new_sysid and not (pg17 / "incoming" / mine).exists()
    barman("check", "pg17")
    backup = json.loads(barman("-f", "json", "show-backup", "pg17", "latest").stdout)["pg17"]  # the hook's
    assert backup["status"] == "DONE" and backup["system_id"] == str(new_sysid), backup
    assert backup["pgdata_directory"] == up.conf["new_datadir"] and backup["postgresql_version"] // 10000 == 17, backup
    # the old server's definition names the port the new cluster now serves: Barman refuses it (a new system id)
    res = barman("check", "pg15", check=False)
    assert res.exit_code != 0 and "systemid coherence: FAILED" in res.stdout, res.stdout
    assert archiving.running(new).tool == "script/other" and archiving.configured(new) == archiving.running(new)
