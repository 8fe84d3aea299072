"""WAL archiving across a major upgrade, with real archivers.

- pgBackRest (Debian 12's 2.45, a local repository): archiving works on 15; the upgrade to 16 is refused in the
  plan, naming the release needed (2.46), with nothing stopped.
- A plain archive script: a fault drill after the new cluster started privately is rolled back and the archive
  holds no WAL of the new cluster (each segment's system identifier, read from its long page header), the old
  cluster archiving again; then a link upgrade 15 → 17 archives nothing of the new cluster before its public start
  (the archive script's log against the journal) and archives after opening, through the admin's ``archiving``
  hook run with the new cluster in its environment.

DOCUMENTED AND UNPROVEN here: pgBackRest's own path after the plan (stanza-upgrade at opening, check and a full
backup after it): no pgBackRest supporting PostgreSQL 16+ is installable on this machine (Debian 12 has 2.45).
Its command construction and sequence are exercised in tests/unit/test_archiving.py; docs/deploying.md describes
it. NOT COVERED: Barman through the hook (see the note at the end of this file).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from pgupgrade import archiving
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
    conf = upgrade_conf(pool, old, "17", transfer_mode="link")
    track_new(pool, old, conf)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "health_check")
    dr, states = run("pg_major_upgrade", {**conf, "target_major": 17})
    assert dr.state == "failed" and states["upgrade.pg_upgrade"] == "failed", states
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    drill = RunState.for_run("pg_major_upgrade", dr.run_id, STATE)
    drill_sysid = int(drill.first("new_identified")["system_identifier"])
    assert drill_sysid != old_sysid
    assert_rolled_back(old, "pg_major_upgrade", dr.run_id, "restore_backup")
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
    monkeypatch.setenv("AIRFLOW_VAR_PGUPGRADE_HOOKS", json.dumps({"archiving": ["sh", "-c", hook]}))
    home = Path(old.datadir).parent
    conf = {**conf, "new_datadir": str(home / "data17b"), "backup_dir": str(home / "backup-b")}
    new = track_new(pool, old, conf)
    dr, states = run("pg_major_upgrade", {**conf, "target_major": 17})
    assert dr.state == "success", states
    assert states["after.archiving"] == "success", states
    journal = RunState.for_run("pg_major_upgrade", dr.run_id, STATE)
    new_sysid = int(journal.first("new_identified")["system_identifier"])
    public_start = dt.datetime.fromisoformat(journal.first("new_public_start")["at"])
    archived = _archived(arch)
    times = dict((name, at) for at, name in _log(log))
    early = [n for n, s in archived.items() if s == new_sysid and times[n] < public_start]
    assert not early, f"new-cluster WAL archived before its public start at {public_start}: {early}"
    assert set(archived.values()) <= {old_sysid, new_sysid}
    assert all(s == old_sysid for n, s in archived.items() if times[n] < public_start)
    major, datadir, switched = hook_out.read_text().split()
    assert (major, datadir) == ("17", conf["new_datadir"])
    deadline = time.monotonic() + 30
    while switched not in _archived(arch):
        assert time.monotonic() < deadline, f"{switched} (switched by the hook) not archived"
        time.sleep(0.2)
    assert _archived(arch)[switched] == new_sysid
    mine = _switch_and_wait(new, arch)
    assert _archived(arch)[mine] == new_sysid
    assert archiving.configured(new) == archiving.running(new)  # the configuration files as the server reads them
    assert archiving.running(new).tool == "script/other" and archiving.running(new).mode == "on"
    rep = report_of(STATE, "pg_major_upgrade", dr.run_id)
    assert rep["archiving"]["tool"] == "script/other" and rep["archiving"]["hook"]["exit_code"] == 0, rep["archiving"]
    assert not rep["archiving"]["needs_attention"]


# Barman through the hook: NOT COVERED. PyPI's barman 3.20 needs Python >= 3.12 (the project runs 3.11); 3.19.1
# depends on `psycopg2`, built from source (about 70 s here), which installs the same `psycopg2` package as the
# pinned psycopg2-binary: two distributions owning one module in the project's virtualenv. Barman also needs its
# own user, configuration and a streaming or rsync set-up to take a base backup. The hook test above covers what the
# product does with any such tool: an argv run on the database host after opening with the new cluster in its
# environment, its exit status recorded and reported (tests/unit/test_archiving.py: a failing hook needs attention).
