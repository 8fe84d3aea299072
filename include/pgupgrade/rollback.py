"""Rollback of a major upgrade: decided from facts on disk (journal, pg_control files), not from the conf.

Paths:
- ``old_running``: the failure came before the old cluster stopped: give logins back.
- ``old_intact``: the old cluster's files were never changed (failure before the transfer, copy/clone mode,
  dump/restore): stop the new one, start the old one.
- ``restore_pg_control``: link mode, pg_upgrade renamed global/pg_control and the new cluster never started:
  rename it back, start the old one.
- ``restore_backup``: link mode after the new cluster started (or unknown), or swap mode after the transfer
  began: the old files are no longer trustworthy; the old data directory is moved aside (never deleted) and
  the old cluster is rebuilt: from the run's base backup plus the WAL the old data directory kept from the
  backup's start to its stop (every write included, proven by the replayed LSN), else from the logical backup
  into a fresh cluster of the old major. Refused when that would lose data — the logical backup predates
  writes, or clients wrote to the new cluster — unless ``accept_data_loss``.

After the new cluster opened to clients every path discards what they wrote since: the refusal states how many
bytes of WAL the new cluster has written since it opened, and with ``accept_data_loss`` the report records them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import replace
from typing import Any

from pgupgrade import backup, checks, facts, upgrade, versions
from pgupgrade.cluster import Cluster, Service
from pgupgrade.commands import Host
from pgupgrade.errors import CheckFailed, ConfigError, PgUpgradeError, UnsafeState
from pgupgrade.params import Field
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.sql import connect, fetch_named, psycopg2
from pgupgrade.state import RunState

log = logging.getLogger(__name__)

FIELDS: list[Field] = [
    Field(
        "postgres_conn_id",
        "string",
        "pg_upgrade_target",
        "Cluster connection",
        "The cluster's Airflow postgres connection (as the upgrade run had it).",
        "Cluster",
        kind="conn_id",
    ),
    Field(
        "upgrade_dag_id",
        "string",
        "pg15_to_pg16_upgrade",
        "Upgrade DAG",
        "The DAG of the run to roll back.",
        "Run",
        kind="conn_id",
    ),
    Field(
        "upgrade_run_id", "string", "", "Upgrade run id", "The run to roll back (its journal decides the path).", "Run"
    ),
    Field(
        "accept_data_loss",
        "boolean",
        False,
        "Accept data loss",
        "Allow a path that loses writes made after the backup or in the new cluster.",
        "Safety",
    ),
    Field("reason", "string", "", "Reason", "Why (for the audit trail).", "Run"),
]


def assess(upgrade_state: RunState, old: Cluster, host: Host) -> tuple[str, str]:
    """(path, why) from the upgrade run's journal and the old data directory."""
    plan = upgrade_state.load("plan") or {}
    if upgrade_state.happened("old_cluster_deleted"):
        return "restore_backup", "the old cluster was deleted by pg_major_upgrade_cleanup"
    if not upgrade_state.happened("old_stop_requested"):
        return "old_running", "the old cluster was never stopped by the upgrade run"
    if not upgrade_state.happened("transfer_started"):
        return "old_intact", "the old cluster was stopped but no transfer began: its files are unchanged"
    event = upgrade_state.first("transfer_started") or {}
    mode = event.get("mode")
    if event.get("method") == "dump_restore" or mode in ("copy", "clone"):
        return "old_intact", f"{event.get('method')} {mode or ''} never writes the old data directory".replace(
            "  ", " "
        )
    control = upgrade.pg_control_state(host, old.datadir, old.os_user)
    started = upgrade_state.happened("new_started")
    if mode == "link" and not started:
        if control["pg_control.old"] and not control["pg_control"]:
            return "restore_pg_control", (
                "link mode: pg_upgrade renamed global/pg_control to pg_control.old and the "
                "new cluster never started, so the old files are unchanged"
            )
        if control["pg_control"]:
            return "old_intact", "link mode, but pg_upgrade stopped before it disabled the old cluster"
    why = (
        f"{mode} mode and the new cluster started (marker in the journal): the old files may share changed "
        "blocks with the new cluster"
        if started
        else f"{mode} mode after the transfer began"
    )
    if not plan:
        why += "; no plan on disk"
    return "restore_backup", why


def data_loss_risks(
    upgrade_state: RunState, opened_changes: list[str] | None = None, *, bridged: bool = False
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


def wal_since_open(upgrade_state: RunState, new: Cluster) -> dict[str, Any] | None:
    """How much WAL the opened new cluster has written since it opened: its LSN now minus its LSN at opening
    (the ``opened`` journal event's ``wal_lsn``; else the facts taken just before opening, which also count the
    restart onto the public port). None when the new cluster does not answer or no start LSN is on record."""
    opened = upgrade_state.first("opened") or {}
    since, basis = opened.get("wal_lsn"), "opening"
    if not since:
        since, basis = (upgrade_state.load("facts_after") or {}).get("wal_lsn"), "validation before opening"
    if not since:
        return None
    try:
        with connect(new) as conn:
            row = fetch_named(conn, "wal-since", {"since": since})[0]
    except psycopg2.Error as exc:
        log.warning("cannot read the new cluster's WAL position: %s", exc)
        return None
    return {"bytes": int(row["bytes"]), "since_lsn": since, "now_lsn": row["lsn"], "since": basis}


def describe_wal(wal: dict[str, Any] | None) -> str:
    if wal is None:
        return "an unknown amount of WAL (the new cluster's WAL position could not be read)"
    return f"{wal['bytes']} bytes of WAL written since {wal['since']} (LSN {wal['since_lsn']} → {wal['now_lsn']})"


def changes_since_open(upgrade_state: RunState, old: Cluster, host: Host) -> dict[str, Any]:
    """What clients did to the opened new cluster: ``wal`` (wal_since_open, measured first, before this
    function writes anything) and ``changes``: the differences between its facts now and those taken before it
    opened, after blocking logins and ending client sessions (None when that cannot be measured). Logins are
    given back if anything changed (the rollback then refuses and the new cluster keeps serving)."""
    plan = upgrade_state.load("plan") or {}
    after = upgrade_state.load("facts_after")
    out: dict[str, Any] = {"wal": None, "changes": None}
    if not plan.get("new") or after is None:
        return out
    new = replace(old, bindir=plan["new"]["bindir"], datadir=plan["new"]["datadir"], confdir=None)
    try:
        if not Service(new, host).accepts_connections():
            return out
        out["wal"] = wal_since_open(upgrade_state, new)
        roles = checks.block_logins(new)
        checks.terminate_clients(new)
        content = any("md5" in t for db in after["databases"].values() for t in db["tables"].values())
        diffs = facts.compare(after, facts.snapshot(new, content=content))
        if diffs:
            checks.unblock_logins(new, roles)
        out["changes"] = diffs
    except (PgUpgradeError, psycopg2.Error) as exc:
        log.warning("cannot compare the new cluster with its facts at opening: %s", exc)
    return out


def decide(upgrade_state: RunState, old: Cluster, host: Host, *, accept_data_loss: bool) -> dict[str, Any]:
    """The path and why. After the new cluster opened to clients, going back discards what they wrote: refused
    (with the WAL byte count) when its facts differ from those at opening or cannot be compared, unless
    accept_data_loss — then the decision records the loss accepted."""
    if not upgrade_state.dir.exists():
        raise ConfigError("upgrade_run_id", f"no state for {upgrade_state.dag_id} run {upgrade_state.run_id!r}")
    done = upgrade_state.first("rolled_back")
    if done:
        raise UnsafeState(
            f"upgrade run {upgrade_state.run_id} was already rolled back ({done['at']}): the old cluster serves "
            "again and may hold newer writes; nothing done"
        )
    path, why = assess(upgrade_state, old, host)
    decision: dict[str, Any] = {"path": path, "why": why, "opened_changes": None}
    if path != "old_running" and upgrade_state.happened("opened"):
        since_open = changes_since_open(upgrade_state, old, host)
        opened_changes, wal = since_open["changes"], since_open["wal"]
        decision.update(opened_changes=opened_changes, wal_since_open=wal)
        if opened_changes is None or opened_changes:
            what = (
                "could not be compared with"
                if opened_changes is None
                else "differs from (" + "; ".join(opened_changes[:5]) + ")"
            )
            loss = f"going back loses what they wrote: {describe_wal(wal)}"
            if not accept_data_loss:
                raise UnsafeState(
                    f"clients were let into the new cluster and it {what} its state at opening: {loss} (path "
                    f"would be {path}: {why}); set accept_data_loss=true to go ahead"
                )
            decision["accepted_data_loss"] = {
                "wal_bytes": wal["bytes"] if wal else None,
                "wal": wal,
                "changes": opened_changes,
                "what": f"the new cluster {what} its state at opening; {loss}",
            }
            log.warning("accept_data_loss=true: %s", decision["accepted_data_loss"]["what"])
    log.info("rollback path: %s, because %s", path, why)
    return decision


def stop_if_running(cluster: Cluster, host: Host) -> bool:
    svc = Service(cluster, host)
    if host.run(["test", "-e", f"{cluster.datadir}/postmaster.pid"], check=False).exit_code == 0 and svc.is_running():
        svc.stop("fast")
        return True
    return False


def stop_new(upgrade_state: RunState, old: Cluster, host: Host) -> None:
    plan = upgrade_state.load("plan") or {}
    new = plan.get("new")
    if new and upgrade_state.happened("new_initdb"):
        exists = host.run(["test", "-e", f"{new['datadir']}/PG_VERSION"], check=False).exit_code == 0
        if exists and stop_if_running(replace(old, bindir=new["bindir"], datadir=new["datadir"], confdir=None), host):
            log.info("stopped the new cluster in %s", new["datadir"])


def empty_unused_new(upgrade_state: RunState, old: Cluster, host: Host) -> bool:
    """The new data directory holds only initdb's output when no transfer began: emptied (the directory itself
    stays, it may be a mount point) so that a new run can use it. The caller has stopped the new cluster."""
    plan = upgrade_state.load("plan") or {}
    made = upgrade_state.first("new_initdb")
    if (
        not made
        or upgrade_state.happened("transfer_started")
        or made.get("datadir") != plan.get("new", {}).get("datadir")
        or host.run(["test", "-d", made["datadir"]], check=False).exit_code != 0  # a failed initdb removes it
    ):
        return False
    host.run(["find", made["datadir"], "-mindepth", "1", "-delete"], user=old.os_user)
    log.info("emptied %s: initdb's output only, no transfer began", made["datadir"])
    return True


def bring_back_old(path: str, upgrade_state: RunState, old: Cluster, host: Host) -> None:
    stop_new(upgrade_state, old, host)  # e.g. a dump/restore into it stopped by a crash while the old one ran
    empty_unused_new(upgrade_state, old, host)
    if path == "restore_pg_control":
        host.run(
            ["mv", "--", f"{old.datadir}/global/pg_control.old", f"{old.datadir}/global/pg_control"], user=old.os_user
        )
        log.info("renamed global/pg_control.old back to global/pg_control")
    start_if_down(old, host)


def start_if_down(cluster: Cluster, host: Host) -> bool:
    """Starts the cluster where its clients reach it when no postmaster serves it (stopped, or killed: crash
    recovery runs); whether it had to."""
    svc = Service(cluster, host)
    if svc.is_running() and not svc.accepts_connections():
        # e.g. the server pg_upgrade started in binary-upgrade mode on its private socket, left running when the
        # worker was killed mid pg_upgrade
        log.warning("the cluster runs but does not answer on its socket: stopping it to start it normally")
        svc.stop("fast")
    if svc.is_running():
        return False
    log.warning("no server runs in %s: starting it", cluster.datadir)
    svc.start()
    return True


_WAL_FILE_RE = re.compile(r"[0-9A-F]{24}|[0-9A-F]{8}\.history")


def wal_bridge(upgrade_state: RunState, datadir: str, host: Host) -> dict[str, Any] | None:
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


def carry_config_from(aside: str, old: Cluster, host: Host) -> None:
    """The configuration files of the data directory moved aside into the rebuilt one: all of them when they
    live in the data directory, else postgresql.auto.conf (ALTER SYSTEM; never WAL-logged, so neither a base
    backup nor initdb has its latest state)."""
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf"):
        if not old.confdir or name == "postgresql.auto.conf":
            host.run(["cp", "--", f"{aside}/{name}", f"{old.datadir}/{name}"], user=old.os_user, check=False)


def restore_base(old: Cluster, host: Host, bridge: dict[str, Any], aside: str) -> dict[str, Any]:
    """Rebuilds the old data directory from the base backup plus the WAL segments the old cluster wrote from the
    backup's start on (copied from the directory moved aside; the backup itself is never changed), then starts
    it where no client reaches it: crash recovery replays to the end of that WAL, which must reach the old
    cluster's shutdown checkpoint. Stopped again; the caller starts it normally."""
    base, user = bridge["base"], old.os_user
    host.run(["rm", "-rf", "--", old.datadir], user=user)  # an earlier attempt of this rollback (the old one is aside)
    host.run(["cp", "-a", "--", base["dir"], old.datadir], user=user)
    host.run(["rm", "-f", "--", f"{old.datadir}/backup_manifest"], user=user)
    names = host.run(["ls", "--", f"{aside}/pg_wal"], user=user).stdout.split()
    wal = sorted(
        n for n in names if _WAL_FILE_RE.fullmatch(n) and (n.endswith(".history") or n >= base["start_wal_file"])
    )
    for i in range(0, len(wal), 200):
        host.run(["cp", "-t", f"{old.datadir}/pg_wal", "--", *(f"{aside}/pg_wal/{n}" for n in wal[i : i + 200])],
                 user=user, timeout=3600)  # fmt: skip
    carry_config_from(aside, old, host)
    sock = upgrade.socket_path(f"{old.datadir}/rollback")
    private = replace(old, host=sock, service="pg_ctl")
    upgrade.start_private(private, host, sock)
    try:
        with connect(private) as conn:
            reached = fetch_named(conn, "wal-since", {"since": bridge["until_lsn"]})[0]
    finally:
        Service(private, host).stop("fast")
    if int(reached["bytes"]) < 0:
        raise CheckFailed(
            f"the rebuilt old cluster's WAL ends at {reached['lsn']}, before the old cluster's shutdown checkpoint "
            f"{bridge['until_lsn']}: WAL is missing; it stays stopped (the old data directory is at {aside})"
        )
    log.info("old cluster rebuilt from %s and %d WAL files; replay reached %s (stopped at %s)", base["dir"],
             len(wal), reached["lsn"], bridge["until_lsn"])  # fmt: skip
    return {"wal_files": len(wal), "replayed_to": reached["lsn"], "stopped_at": bridge["until_lsn"]}


def restore_from_backup(
    upgrade_state: RunState,
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
        Service(old, host).start()
        return aside
    inst = versions.inspect(old.bindir, host)
    if host.run(["test", "-e", f"{old.datadir}/PG_VERSION"], check=False).exit_code != 0:
        host.run(["rm", "-rf", "--", old.datadir], user=old.os_user)  # a half-done initdb of this rollback
        initdb(inst, old.datadir, InitdbOptions(**plan["initdb"]), os_user=old.os_user, host=host)
        carry_config_from(aside, old, host)
    Service(old, host).start()
    backup.restore(old, host, manifest)
    return aside


def verify_old(upgrade_state: RunState, old: Cluster) -> dict[str, Any]:
    before = upgrade_state.load("facts_before")
    now = facts.snapshot(
        old,
        content=bool(before and any("md5" in t for db in before["databases"].values() for t in db["tables"].values())),
    )
    plan = upgrade_state.load("plan") or {}
    old_version = plan.get("old", {}).get("version")
    if (
        old_version
        and versions.Version.from_num(now["server_version_num"]).major != versions.Version.parse(old_version).major
    ):
        raise CheckFailed(f"the old cluster should run {old_version}, it runs {now['server_version']}")
    compared = before is not None
    if before is not None:
        diffs = facts.compare(before, now, same_extension_versions=True)
        if diffs:
            raise CheckFailed(
                "after the rollback the old cluster's facts differ from the snapshot: " + "; ".join(diffs)
            )
    if upgrade_state.happened("wal_slot_created"):
        backup.drop_slot(old)  # it would keep WAL forever now that the old cluster serves again
    # logins only come back once the facts are proven: a client reconnecting earlier would change them
    checks.unblock_logins(old, upgrade_state.load("blocked_roles", []))
    upgrade_state.record("rolled_back")  # a second rollback of this run would undo what clients write from now
    out: dict[str, Any] = {"facts_compared": compared, "server_version": now["server_version"]}
    if before is not None:
        out["tables"] = facts.table_count(now)
    return out


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
    json_path, md_path = report.write(ctx.state, rep)
    return {"json": str(json_path), "markdown": str(md_path)}
