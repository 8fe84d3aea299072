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

import enum
import logging
from dataclasses import replace
from typing import Any

from pgupgrade import backup, facts, plans, services, versions
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import Host
from pgupgrade.errors import CheckFailed, ConfigError, PgUpgradeError, UnsafeState
from pgupgrade.gates import gate_for
from pgupgrade.major.model import MajorPlan
from pgupgrade.recovery import stop_new
from pgupgrade.services import start_if_down
from pgupgrade.sql import connect, fetch_named, psycopg2
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)


class RollbackPath(enum.StrEnum):
    OLD_RUNNING = "old_running"
    OLD_INTACT = "old_intact"
    RESTORE_PG_CONTROL = "restore_pg_control"
    RESTORE_BACKUP = "restore_backup"


def recorded_plan(upgrade_state: RunJournal) -> MajorPlan | None:
    """The upgrade run's plan, when it planned an upgrade (None: no plan recorded, or nothing to do)."""
    return plans.planned(MajorPlan, upgrade_state.load("plan"))


def assess(upgrade_state: RunJournal, old: Cluster, host: Host) -> tuple[RollbackPath, str]:
    """(path, why) from the upgrade run's journal and the old data directory."""
    plan = plans.recorded(MajorPlan, upgrade_state.load("plan"))
    if upgrade_state.happened("old_cluster_deleted"):
        return RollbackPath.RESTORE_BACKUP, "the old cluster was deleted by pg_major_upgrade_cleanup"
    if not upgrade_state.happened("old_stop_requested"):
        return RollbackPath.OLD_RUNNING, "the old cluster was never stopped by the upgrade run"
    if not upgrade_state.happened("transfer_started"):
        return RollbackPath.OLD_INTACT, "the old cluster was stopped but no transfer began: its files are unchanged"
    event = upgrade_state.first("transfer_started") or {}
    mode = event.get("mode")
    if event.get("method") == "dump_restore" or mode in ("copy", "clone"):
        return (
            RollbackPath.OLD_INTACT,
            f"{event.get('method')} {mode or ''} never writes the old data directory".replace("  ", " "),
        )
    control = services.pg_control_state(host, old.datadir, old.os_user)
    started = upgrade_state.happened("new_started")
    if mode == "link" and not started:
        if control["pg_control.old"] and not control["pg_control"]:
            return RollbackPath.RESTORE_PG_CONTROL, (
                "link mode: pg_upgrade renamed global/pg_control to pg_control.old and the "
                "new cluster never started, so the old files are unchanged"
            )
        if control["pg_control"]:
            return RollbackPath.OLD_INTACT, "link mode, but pg_upgrade stopped before it disabled the old cluster"
    why = (
        f"{mode} mode and the new cluster started (marker in the journal): the old files may share changed "
        "blocks with the new cluster"
        if started
        else f"{mode} mode after the transfer began"
    )
    if plan is None:
        why += "; no plan on disk"
    return RollbackPath.RESTORE_BACKUP, why


def wal_since_open(upgrade_state: RunJournal, new: Cluster) -> dict[str, Any] | None:
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


def changes_since_open(upgrade_state: RunJournal, old: Cluster, host: Host) -> dict[str, Any]:
    """What clients did to the opened new cluster: ``wal`` (wal_since_open, measured first, before this
    function writes anything) and ``changes``: the differences between its facts now and those taken before it
    opened, after blocking logins and ending client sessions (None when that cannot be measured). Logins are
    given back if anything changed (the rollback then refuses and the new cluster keeps serving)."""
    plan = recorded_plan(upgrade_state)
    after = upgrade_state.load("facts_after")
    out: dict[str, Any] = {"wal": None, "changes": None}
    if plan is None or after is None:
        return out
    new = replace(old, bindir=plan.new.bindir, datadir=plan.new.datadir, confdir=None)
    try:
        if not service_for(new, host).accepts_connections():
            return out
        out["wal"] = wal_since_open(upgrade_state, new)
        gate = gate_for(new, host)
        roles = gate.block()
        gate.terminate()
        content = any("md5" in t for db in after["databases"].values() for t in db["tables"].values())
        diffs = facts.compare(after, facts.snapshot(new, content=content))
        if diffs:
            gate.unblock(roles)
        out["changes"] = diffs
    except (PgUpgradeError, psycopg2.Error) as exc:
        log.warning("cannot compare the new cluster with its facts at opening: %s", exc)
    return out


def decide(
    upgrade_state: RunJournal, old: Cluster, host: Host, *, accept_data_loss: bool, ask: bool = False
) -> dict[str, Any]:
    """The path and why. After the new cluster opened to clients, going back discards what they wrote: refused
    (with the WAL byte count) when its facts differ from those at opening or cannot be compared, unless
    accept_data_loss — then the decision records the loss accepted — or ``ask``: then the decision's
    ``needs_consent`` says what a person must accept (the new cluster serves on meanwhile)."""
    if not upgrade_state.exists():
        raise ConfigError("upgrade_run_id", f"no state for {upgrade_state.dag_id} run {upgrade_state.run_id!r}")
    done = upgrade_state.first("rolled_back")
    if done:
        raise UnsafeState(
            f"upgrade run {upgrade_state.run_id} was already rolled back ({done['at']}): the old cluster serves "
            "again and may hold newer writes; nothing done"
        )
    path, why = assess(upgrade_state, old, host)
    decision: dict[str, Any] = {"path": path, "why": why, "opened_changes": None}
    if path != RollbackPath.OLD_RUNNING and upgrade_state.happened("opened"):
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
            if not accept_data_loss and ask:
                decision["needs_consent"] = {
                    "wal": wal, "changes": opened_changes, "path": path, "why": why,
                    "what": f"the new cluster {what} its state at opening; {loss}",
                }  # fmt: skip
                log.warning("a person decides: %s", decision["needs_consent"]["what"])
                return decision
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


def empty_unused_new(upgrade_state: RunJournal, old: Cluster, host: Host) -> bool:
    """The new data directory holds only initdb's output when no transfer began: emptied (the directory itself
    stays, it may be a mount point) so that a new run can use it. The caller has stopped the new cluster."""
    plan = recorded_plan(upgrade_state)
    made = upgrade_state.first("new_initdb")
    if (
        not made
        or upgrade_state.happened("transfer_started")
        or plan is None
        or made.get("datadir") != plan.new.datadir
        or host.run(["test", "-d", made["datadir"]], check=False).exit_code != 0  # a failed initdb removes it
    ):
        return False
    host.run(["find", made["datadir"], "-mindepth", "1", "-delete"], user=old.os_user)
    log.info("emptied %s: initdb's output only, no transfer began", made["datadir"])
    return True


def bring_back_old(path: str, upgrade_state: RunJournal, old: Cluster, host: Host) -> dict[str, Any]:
    """Undoes the new cluster's registration (``registration.unregister``: by the journal), stops the new cluster,
    restores pg_control if needed and starts the old cluster by its own service."""
    undone = stop_new(upgrade_state, old, host)
    empty_unused_new(upgrade_state, old, host)
    if path == RollbackPath.RESTORE_PG_CONTROL:
        services.restore_pg_control(host, old.datadir, old.os_user)
    start_if_down(old, host)
    return {"registration_undone": undone}


def verify_old(upgrade_state: RunJournal, old: Cluster, host: Host) -> dict[str, Any]:
    before = upgrade_state.load("facts_before")
    now = facts.snapshot(
        old,
        content=bool(before and any("md5" in t for db in before["databases"].values() for t in db["tables"].values())),
    )
    plan = recorded_plan(upgrade_state)
    old_version = plan.old.version if plan else None
    if (
        old_version
        and versions.Version.from_num(now["server_version_num"]).major != versions.Version.parse(old_version).major
    ):
        raise CheckFailed(f"the old cluster should run {old_version}, it runs {now['server_version']}")
    compared = before is not None
    if before is not None:
        rebuilt = upgrade_state.happened("old_moved_aside")  # from the base backup + WAL: unlogged tables empty
        diffs = facts.compare(before, now, same_extension_versions=True, unlogged_emptied=rebuilt)
        if diffs:
            raise CheckFailed(
                "after the rollback the old cluster's facts differ from the snapshot: " + "; ".join(diffs)
            )
    if upgrade_state.happened("wal_slot_created"):
        backup.drop_slot(old)  # it would keep WAL forever now that the old cluster serves again
    # logins only come back once the facts are proven: a client reconnecting earlier would change them
    gate_for(old, host).unblock(upgrade_state.load("blocked_roles", []))
    upgrade_state.record("rolled_back")  # a second rollback of this run would undo what clients write from now
    out: dict[str, Any] = {"facts_compared": compared, "server_version": now["server_version"]}
    if before is not None and upgrade_state.happened("old_moved_aside"):
        emptied = [
            f"{db}.{t}"
            for db, d in before["databases"].items()
            for t, e in d["tables"].items()
            if e.get("unlogged")
            and e["rows"]
            and not now["databases"].get(db, {}).get("tables", {}).get(t, {}).get("rows")
        ]
        if emptied:  # as after a crash: a base backup never holds an unlogged table's rows
            out["unlogged_tables_emptied"] = emptied
            log.warning("unlogged tables came back empty (rebuilt from the base backup): %s", ", ".join(emptied))
    if before is not None:
        out["tables"] = facts.table_count(now)
    return out
