"""What every rollback shares: the rollback DAGs' params, what going back would lose, the restore from the run's
backup (a base backup plus the old cluster's WAL, or the logical backup into a fresh cluster) and the rollback
run's report."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import replace
from typing import Any

from pgupgrade import backup, checks, facts, registration, services, versions
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import Host
from pgupgrade.errors import CheckFailed, UnsafeState
from pgupgrade.params import Field
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.services import stop_if_running
from pgupgrade.sql import connect, fetch_named
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)


def rollback_needed(state: RunJournal, after_open_failure: str) -> tuple[bool, str]:
    """Whether a failed run starts its rollback, and why: only a run that changed something needs a way back, and
    once the validated new version serves clients a later failure alerts instead, unless the run asked for the
    rollback (``after_open_failure``)."""
    if not state.side_effects():
        return False, "the run failed before it changed anything (only read-only steps ran)"
    if state.happened("opened") and after_open_failure != "rollback":
        return False, (
            "the run failed after the validated new version opened to clients: it keeps serving "
            "(after_open_failure=alert); the rollback DAG stays available by hand"
        )
    return True, "the run changed the cluster"


FIELDS: list[Field] = [
    Field(
        name="postgres_conn_id",
        type="string",
        default="pg_upgrade_target",
        title="Cluster connection",
        description="The cluster's Airflow postgres connection (as the upgrade run had it).",
        section="Cluster",
        kind="conn_id",
    ),
    Field(
        name="upgrade_dag_id",
        type="string",
        default="pg15_to_pg16_upgrade",
        title="Upgrade DAG",
        description="The DAG of the run to roll back.",
        section="Run",
        kind="conn_id",
    ),
    Field(
        name="upgrade_run_id",
        type="string",
        default="",
        title="Upgrade run id",
        description="The run to roll back (its journal decides the path).",
        section="Run",
    ),
    Field(
        name="accept_data_loss",
        type="boolean",
        default=False,
        title="Accept data loss",
        description="Allow a path that loses writes made after the backup or in the new cluster.",
        section="Safety",
    ),
    Field(
        name="reason",
        type="string",
        default="",
        title="Reason",
        description="Why (for the audit trail).",
        section="Run",
    ),
]


def data_loss_risks(
    upgrade_state: RunJournal, opened_changes: list[str] | None = None, *, bridged: bool = False
) -> list[str]:
    """What going back would lose. ``opened_changes``: the differences between the new cluster now and its facts
    when it opened (None: not measured, so any client write is assumed). ``bridged``: the old cluster's WAL
    from the backup to its stop is at hand, so writes made after the backup are not lost."""
    risks = []
    if upgrade_state.happened("opened"):
        if opened_changes is None:
            risks.append("clients were let into the new cluster: their writes are not in the backup")
        elif opened_changes:
            risks.append("clients wrote to the new cluster since it opened: " + "; ".join(opened_changes[:5]))
    manifest = upgrade_state.load("backup")
    before = upgrade_state.load("facts_before")
    if manifest is None:
        risks.append("the upgrade run has no backup on record")
    elif before is not None and not bridged:
        diffs = facts.compare(manifest["facts"], before)
        if diffs:
            risks.append("data changed between the backup and the stop: " + "; ".join(diffs[:5]))
    return risks


def stop_new(upgrade_state: RunJournal, old: Cluster, host: Host) -> dict[str, Any]:
    """Stops the new cluster: a registered one through its own service by the registration's reversal
    (``registration.unregister``, returned), then by pg_ctl from its data directory — until it is registered it
    runs there (e.g. a dump/restore into it stopped by a crash, or validated privately), where the old cluster's
    unit or ``pg_ctlcluster`` would act on the old cluster instead."""
    undone = registration.unregister(upgrade_state, old, host)
    plan = upgrade_state.load("plan") or {}
    new = plan.get("new")
    if new and upgrade_state.happened("new_initdb"):
        exists = host.run(["test", "-e", f"{new['datadir']}/PG_VERSION"], check=False).exit_code == 0
        unregistered = replace(old, bindir=new["bindir"], datadir=new["datadir"], confdir=None, service="pg_ctl")
        if exists and stop_if_running(unregistered, host):
            log.info("stopped the new cluster in %s", new["datadir"])
        if exists and not upgrade_state.happened("new_tablespaces_set_aside"):
            major = versions.Version.parse(new["version"]).major
            moved = set_aside_version_dirs(new["datadir"], major, old.os_user, host)
            upgrade_state.record("new_tablespaces_set_aside", moved=moved)
    return undone


def set_aside_version_dirs(datadir: str, major: int, user: str, host: Host) -> list[str]:
    """The ``PG_<major>_<catalog version>`` directories in every tablespace location ``datadir``'s pg_tblspc links
    to, moved aside (``.rolled-back-<time>``, never deleted): a rolled-back new cluster's out of the way of the
    next run (pg_upgrade refuses a new cluster whose tablespace directory exists), a failed old one's out of the way
    of a restore's CREATE TABLESPACE at the same location. Returns where they went."""
    links = host.run(
        ["find", f"{datadir}/pg_tblspc", "-mindepth", "1", "-maxdepth", "1", "-type", "l", "-printf", "%l\\n"],
        user=user,
        check=False,
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    moved = []
    for location in links.stdout.splitlines() if links.exit_code == 0 else []:
        found = host.run(
            ["find", location, "-mindepth", "1", "-maxdepth", "1", "-type", "d",
             "-regextype", "posix-extended", "-regex", f".*/PG_{major}_[0-9]+"],
            user=user,
            check=False,
        )  # fmt: skip
        for version_dir in found.stdout.splitlines():
            aside = f"{version_dir}.rolled-back-{stamp}"
            host.run(["mv", "--", version_dir, aside], user=user)
            log.info("tablespace directory %s moved aside to %s", version_dir, aside)
            moved.append(aside)
    return moved


_WAL_FILE_RE = re.compile(r"[0-9A-F]{24}|[0-9A-F]{8}\.history")


def wal_bridge(upgrade_state: RunJournal, datadir: str, host: Host) -> dict[str, Any] | None:
    """The base backup and the old cluster's WAL from the backup's start to its stop, when the run took one
    and ``datadir`` (the old data directory, or where it was moved aside) still holds the backup's first WAL
    segment (the slot kept every later one). None otherwise."""
    base = (upgrade_state.load("backup") or {}).get("base")
    stopped = upgrade_state.first("old_stopped") or {}
    if not base or not stopped.get("checkpoint_lsn"):
        return None
    if host.run(["test", "-f", f"{datadir}/pg_wal/{base['start_wal_file']}"], check=False).exit_code != 0:
        log.warning("%s/pg_wal no longer holds %s: the base backup alone would miss writes", datadir,
                    base["start_wal_file"])  # fmt: skip
        return None
    return {"base": base, "until_lsn": stopped["checkpoint_lsn"]}


# entries of a data directory that the server (initdb, pg_basebackup, the postmaster) owns; everything else in
# it is the admin's: included configuration (conf.d), SSL keys and certificates, ...
_SERVER_OWNED = frozenset({
    "base", "global", "PG_VERSION", "postmaster.opts", "postmaster.pid", "current_logfiles", "log",
    "backup_label", "backup_label.old", "backup_manifest", "tablespace_map", "tablespace_map.old",
    "standby.signal", "recovery.signal",
})  # fmt: skip
_CONFIG_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")


def carry_config_from(aside: str, old: Cluster, host: Host) -> None:
    """The configuration of the data directory moved aside into the rebuilt one: all of it when it lives in the
    data directory — the configuration files and every entry the server does not own (included files and
    directories such as conf.d, SSL files) — else postgresql.auto.conf (ALTER SYSTEM; never WAL-logged, so
    neither a base backup nor initdb has its latest state)."""
    user = old.os_user
    for name in _CONFIG_FILES:
        if not old.confdir or name == "postgresql.auto.conf":
            host.run(["cp", "--", f"{aside}/{name}", f"{old.datadir}/{name}"], user=user, check=False)
    if old.confdir:
        return
    listed = host.run(["find", aside, "-mindepth", "1", "-maxdepth", "1", "-printf", "%f\\n"], user=user)
    for name in listed.stdout.splitlines():
        if name.startswith("pg_") or name in _SERVER_OWNED or name in _CONFIG_FILES:
            continue
        host.run(["rm", "-rf", "--", f"{old.datadir}/{name}"], user=user)  # as the backup had it: replaced
        host.run(["cp", "-a", "--", f"{aside}/{name}", f"{old.datadir}/{name}"], user=user)


def restore_base(old: Cluster, host: Host, bridge: dict[str, Any], aside: str) -> dict[str, Any]:
    """Rebuilds the old data directory from the base backup plus the WAL segments the old cluster wrote from the
    backup's start on (copied from the directory moved aside; the backup itself is never changed), then starts
    it where no client reaches it: crash recovery replays to the end of that WAL, which must reach the old
    cluster's shutdown checkpoint. Stopped again; the caller starts it normally."""
    base, user = bridge["base"], old.os_user
    backup.BASE.restore(old, host, base)
    names = host.run(["ls", "--", f"{aside}/pg_wal"], user=user).stdout.split()
    wal = sorted(
        n for n in names if _WAL_FILE_RE.fullmatch(n) and (n.endswith(".history") or n >= base["start_wal_file"])
    )
    for i in range(0, len(wal), 200):
        host.run(["cp", "-t", f"{old.datadir}/pg_wal", "--", *(f"{aside}/pg_wal/{n}" for n in wal[i : i + 200])],
                 user=user, timeout=3600)  # fmt: skip
    carry_config_from(aside, old, host)
    sock = services.socket_path(f"{old.datadir}/rollback")
    private = services.private_cluster(old, old.datadir, old.bindir, sock, host)
    services.start_private(private, host, sock)
    try:
        with connect(private) as conn:
            reached = fetch_named(conn, "wal-since", {"since": bridge["until_lsn"]})[0]
    finally:
        service_for(private, host).stop("fast")
    if int(reached["bytes"]) < 0:
        raise CheckFailed(
            f"the rebuilt old cluster's WAL ends at {reached['lsn']}, before the old cluster's shutdown checkpoint "
            f"{bridge['until_lsn']}: WAL is missing; it stays stopped (the old data directory is at {aside})"
        )
    log.info("old cluster rebuilt from %s and %d WAL files; replay reached %s (stopped at %s)", base["dir"],
             len(wal), reached["lsn"], bridge["until_lsn"])  # fmt: skip
    return {"wal_files": len(wal), "replayed_to": reached["lsn"], "stopped_at": bridge["until_lsn"]}


def restore_from_backup(
    upgrade_state: RunJournal,
    old: Cluster,
    host: Host,
    *,
    accept_data_loss: bool,
    opened_changes: list[str] | None = None,
) -> str:
    moved = upgrade_state.first("old_moved_aside")
    bridge = wal_bridge(upgrade_state, moved["to"] if moved else old.datadir, host)
    risks = data_loss_risks(upgrade_state, opened_changes, bridged=bridge is not None)
    manifest = upgrade_state.load("backup")
    if manifest is None:
        raise UnsafeState(
            "no backup on record for the upgrade run: cannot restore; the old data directory is "
            "left as it is for manual recovery"
        )
    if risks and not accept_data_loss:
        raise UnsafeState("refusing to restore the backup: " + "; ".join(risks) + " (set accept_data_loss=true)")
    if bridge is not None:
        free, need = checks.free_bytes(host, old.datadir), int(bridge["base"]["bytes"])
        if free < need:
            raise UnsafeState(f"rebuilding the old cluster copies its base backup ({need} bytes) next to the old "
                              f"data directory, where {free} bytes are free; nothing done")  # fmt: skip
    plan = upgrade_state.load("plan")
    stop_new(upgrade_state, old, host)
    stop_if_running(old, host)
    aside = f"{old.datadir}.failed-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}"
    if not upgrade_state.happened("old_moved_aside"):
        upgrade_state.record("old_moved_aside", to=aside)
        host.run(["mv", "--", old.datadir, aside], user=old.os_user)
    else:
        aside = (upgrade_state.first("old_moved_aside") or {})["to"]
    if bridge is not None:
        upgrade_state.record("old_rebuilt", **restore_base(old, host, bridge, aside))
        service_for(old, host).start()
        return aside
    inst = versions.inspect(old.bindir, host)
    if host.run(["test", "-e", f"{old.datadir}/PG_VERSION"], check=False).exit_code != 0:
        host.run(["rm", "-rf", "--", old.datadir], user=old.os_user)  # a half-done initdb of this rollback
        initdb(inst, old.datadir, InitdbOptions(**plan["initdb"]), os_user=old.os_user, host=host)
        carry_config_from(aside, old, host)
    # the failed old cluster's tablespace files stay with its data directory, aside; CREATE TABLESPACE refuses a
    # location that holds its major's directory
    set_aside_version_dirs(aside, versions.Version.parse(plan["old"]["version"]).major, old.os_user, host)
    service_for(old, host).start()
    backup.LOGICAL.restore(old, host, manifest)
    return aside


def write_report(ctx: Any, **extra: Any) -> dict[str, str]:
    """A rollback run's report: its path and why, which upgrade run it undid, and what the caller adds."""
    from pgupgrade import report

    decision = ctx.state.load("decision") or {}
    failed = [e for e in ctx.state.events() if e["event"] == "step" and e["status"] == "failed"]
    rep = report.build(
        ctx.state,
        status="failed" if failed else "success",
        extra={
            "rollback_path": decision.get("path"),
            "rollback_reason": decision.get("why"),
            "accepted_data_loss": decision.get("accepted_data_loss"),
            "upgrade_run": f"{ctx.params['upgrade_dag_id']}/{ctx.params['upgrade_run_id']}",
            **extra,
        },
    )
    json_path, md_path = report.write(ctx.state, rep, root=ctx.store.root)
    return {"json": str(json_path), "markdown": str(md_path)}
