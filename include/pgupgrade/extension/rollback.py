"""The rollback of an extension update, decided per database from the upgrade run's journal, its recorded plan
and the catalog (never from the conf): a database whose update never committed only gets its triggers back; one
that was updated is restored from the run's backup (after the old extension files are back, so the dump's
``CREATE EXTENSION`` creates the old version) — unless tables changed after the backup: then the new version is
kept and checked (``keep_new``), and the run fails so that a person decides (``accept_data_loss``).

``assess`` decides; the later steps take the decision (``fn(ctx, decision)``, read with ``decision_of``)."""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import replace
from typing import Any, NoReturn

from pgupgrade import backup, facts, plans, recovery, services
from pgupgrade.cluster import Cluster
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, ConfigError, UnsafeState
from pgupgrade.extension.after import validate_databases
from pgupgrade.extension.catalog import (
    SNAPSHOT_TABLE,
    default_version,
    table_writes,
    trigger_differences,
    version_available,
)
from pgupgrade.extension.fields import SourceKind, vtuple
from pgupgrade.extension.plan import AtTargetPlan, ExtensionPlan, RefusedPlan
from pgupgrade.extension.source import install_files
from pgupgrade.extension.update import restore_triggers, verify_updated
from pgupgrade.sql import connect
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)


class RollbackPath(enum.StrEnum):
    """The way back ``assess`` chose (``decision["path"]``)."""

    NOTHING = "nothing"  # the upgrade run changed nothing
    TRIGGERS_ONLY = "triggers_only"  # no update committed: the triggers (and the old files) come back
    RESTORE = "restore"  # updates committed: those databases are restored from the backup
    KEEP_NEW = "keep_new"  # a restore would lose later writes: the new version stays, checked; the run fails


def recorded_plan(up: RunJournal) -> ExtensionPlan | RefusedPlan | AtTargetPlan | None:
    """The upgrade run's plan in the form it was recorded (also by code older than the typed plan: the same
    keys, no ``schema_version``); None when the run stopped before its plan."""
    data = up.load("plan")
    if data and data.get("refused"):
        return plans.from_json(RefusedPlan, data)
    if data and data.get("already_upgraded"):
        return plans.from_json(AtTargetPlan, data)
    return plans.planned(ExtensionPlan, data)


def upgrade_plan(ctx: RunContext) -> ExtensionPlan:
    """The plan the upgrade run carried out (the steps after ``assess`` act on it)."""
    found = recorded_plan(ctx.upgrade_run)
    if not isinstance(found, ExtensionPlan) or isinstance(found, RefusedPlan):
        raise CheckFailed("the upgrade run carried out no plan: nothing to roll back")
    return found


def _update_started(up: RunJournal, db: str) -> bool:
    return any(e["event"] == "extension_update_started" and e.get("database") == db for e in up.events())


def data_loss_risks(cluster: Cluster, manifest: dict[str, Any], databases: list[str]) -> list[str]:
    """Changes to tables after the backup that a restore would undo: row counts, checksums (with verify_content)
    and write counters of every table the run does not rewrite itself (best effort: statistics reach the
    counters up to a few seconds late)."""
    if not databases:
        return []
    now = facts.snapshot(
        cluster, content=any("md5" in t for d in manifest["facts"]["databases"].values() for t in d["tables"].values())
    )
    risks = []
    for db in databases:
        skip = set(manifest["derived"].get(db, []))
        before_t = manifest["facts"]["databases"][db]["tables"]
        now_t = now["databases"].get(db, {}).get("tables", {})
        with connect(cluster, db) as conn:
            writes = table_writes(conn)
        for table, b in before_t.items():
            if table in skip or table.startswith(f"{SNAPSHOT_TABLE[0]}.") or table not in now_t:
                continue
            a = now_t[table]
            if a["rows"] != b["rows"]:
                risks.append(f"{db}.{table}: {b['rows']} rows in the backup, {a['rows']} now")
            elif "md5" in b and b.get("md5") != a.get("md5"):
                risks.append(f"{db}.{table}: content changed since the backup")
            elif writes.get(table, 0) > manifest["writes"].get(db, {}).get(table, 0):
                risks.append(f"{db}.{table}: written since the backup (statistics)")
    return risks


# -- the decision -----------------------------------------------------------------------------------------------


def _per_database(ctx: RunContext, up: RunJournal, plan: ExtensionPlan) -> tuple[dict[str, str], list[str]]:
    """Why each database of the plan needs what it needs, and those whose update committed (to restore)."""
    per_db: dict[str, str] = {}
    restore: list[str] = []
    for db, old in plan.from_versions.items():
        if not _update_started(up, db):
            per_db[db] = "the update never started here"
            continue
        with connect(ctx.cluster, db) as conn:
            now = ctx.profile.installed_version(conn)
        if now == old:
            per_db[db] = f"the update transaction never committed ({ctx.profile.extname} still {old})"
        else:
            per_db[db] = f"the update committed ({ctx.profile.extname} {now}, was {old}): restore from the backup"
            restore.append(db)
    return per_db, restore


def _nothing(why: str) -> dict[str, Any]:
    return {
        "path": RollbackPath.NOTHING,
        "why": f"the upgrade run changed nothing ({why})",
        "restore": [],
        "triggers": [],
        "put_back_files": False,
        "databases": {},
    }


def assess(ctx: RunContext) -> dict[str, Any]:
    """Per database, from the upgrade run's journal and the catalog: restore it (its update committed), or only
    give its triggers back (nothing else changed). Refuses a restore that would lose later writes."""
    up = ctx.upgrade_run
    if not ctx.params["upgrade_run_id"] or not up.exists():
        raise ConfigError("upgrade_run_id", f"no state for {up.dag_id} run {up.run_id!r} in {up.location}")
    if services.start_if_down(ctx.cluster, ctx.host):  # the server died under the run (this DAG never stops it)
        ctx.state.record("server_started", why="no server ran when the rollback began")
    plan = recorded_plan(up)
    if plan is None:
        return _nothing("the run stopped before its plan")
    if isinstance(plan, RefusedPlan):
        return _nothing(plan.refused)
    if isinstance(plan, AtTargetPlan):
        return _nothing(plan.reason)
    per_db, restore = _per_database(ctx, up, plan)
    triggers = [
        db
        for db in plan.databases
        if any(e["event"] == "triggers_disabling" and e.get("database") == db for e in up.events())
    ]
    put_back = plan.source.kind != SourceKind.INSTALLED and up.happened("extension_files_installing")
    why = "; ".join(f"{db}: {w}" for db, w in per_db.items()) or "no database was touched"
    if restore:
        manifest = up.load("backup")
        if manifest is None:
            raise UnsafeState(f"{', '.join(restore)} need a restore but the upgrade run has no backup on record")
        risks = data_loss_risks(ctx.cluster, manifest, restore)
        if risks and not ctx.params["accept_data_loss"]:
            # no restore: the committed update stays, its triggers come back and verify checks the new version
            return {
                "path": RollbackPath.KEEP_NEW,
                "why": why,
                "refused": "a restore would undo changes made after the backup: "
                + "; ".join(risks[:10])
                + " (set accept_data_loss=true to restore anyway)",
                "kept": restore,
                "restore": [],
                "triggers": triggers,
                "put_back_files": False,
                "databases": per_db,
            }
    if restore:
        path = RollbackPath.RESTORE
    else:
        path = RollbackPath.TRIGGERS_ONLY if triggers or put_back else RollbackPath.NOTHING
    return {
        "path": path,
        "why": why,
        "restore": restore,
        "triggers": triggers,
        "put_back_files": put_back,
        "databases": per_db,
    }


def decide(ctx: RunContext) -> dict[str, Any]:
    """``assess``, its decision saved for the later steps (``decision_of``) and the report."""
    decision = assess(ctx)
    ctx.state.save("decision", decision)
    log.info("rollback path: %s — %s", decision["path"], decision["why"])
    return decision


def decision_of(ctx: RunContext) -> dict[str, Any]:
    data: dict[str, Any] | None = ctx.state.load("decision")
    if data is None:
        raise CheckFailed("no rollback decision on record (the assess task did not finish)")
    return data


# -- the way back -----------------------------------------------------------------------------------------------


def verify_kept_new(ctx: RunContext, decision: dict[str, Any]) -> NoReturn:
    """The restore was refused (it would lose later writes): the databases whose update committed keep the new
    version, checked as the update run checks it (version, columns, functions, metadata rows, the validate
    function; restore_triggers has put the triggers back). Then the refusal is raised all the same, so the run
    fails and the lock waits for a person (``accept_data_loss``), saying whether the kept version passed."""
    kept = replace(upgrade_plan(ctx), databases=list(decision["kept"]))
    as_run = replace(ctx, state=ctx.upgrade_run)
    errors: list[str] = []
    try:
        verify_updated(as_run, kept)
        validate_databases(as_run, kept.databases)
    except CheckFailed as exc:
        errors.append(str(exc))
    target = kept.target_version
    if errors:
        raise UnsafeState(
            f"{decision['refused']}; {ctx.profile.extname} {target} kept in {', '.join(decision['kept'])}, and "
            "it does NOT pass the checks: " + "; ".join(errors)
        )
    ctx.state.record("kept_new_verified", databases=decision["kept"], version=target)
    raise UnsafeState(
        f"{decision['refused']}; {ctx.profile.extname} {target} kept in {', '.join(decision['kept'])}: it passes "
        "the update's checks (version, columns, functions, metadata rows, validate) with its triggers back"
    )


def put_back_files(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """FIRST: the old version's files back (copy/command), so that a restore's CREATE EXTENSION creates the old
    version; then, for every database to restore, the control file's default_version must be its old version."""
    out: dict[str, Any] = {}
    if not decision["put_back_files"] and not decision["restore"]:
        return out
    plan = upgrade_plan(ctx)
    if decision["put_back_files"]:
        olds = sorted({plan.from_versions[db] for db in (decision["restore"] or plan.from_versions)}, key=vtuple)
        for old in olds:
            ctx.state.record("extension_files_restoring", version=old)
            out[old] = install_files(ctx.cluster, ctx.host, plan.source, old, ctx.profile.extname)
    for db in decision["restore"]:
        old = plan.from_versions[db]
        with connect(ctx.cluster, db) as conn:
            default = default_version(conn, ctx.profile.extname)
            available = version_available(conn, ctx.profile.extname, old)
        if default != old or not available:
            raise UnsafeState(
                f"{db}: restoring the backup would create {ctx.profile.extname} {default} (the control "
                f"file's default_version), not {old}: put the {old} files back first"
            )
    return out


def restore_databases(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """``pg_restore --clean --if-exists --single-transaction`` of each updated database from the upgrade run's
    backup: the dump's CREATE EXTENSION recreates the old version (checked before and after)."""
    out: dict[str, Any] = {}
    if not decision["restore"]:
        return out
    plan, manifest = upgrade_plan(ctx), ctx.upgrade_run.load("backup")
    for db in decision["restore"]:
        old = plan.from_versions[db]
        ctx.state.record("database_restore_started", database=db, archive=manifest["databases"][db]["file"])
        started = time.monotonic()
        backup.restore_custom(ctx.cluster, ctx.host, manifest["databases"][db]["file"], db, bindir=manifest["bindir"])
        with connect(ctx.cluster, db) as conn:
            installed, reported = ctx.profile.installed_version(conn), ctx.profile.reported_version(conn)
        ctx.state.record("database_restored", database=db, version=installed)
        if installed != old or reported != old:
            raise CheckFailed(
                f"{db}: after the restore {ctx.profile.extname} is {installed} (reports {reported}), expected {old}"
            )
        out[db] = {"version": installed, "seconds": round(time.monotonic() - started, 3)}
    return out


def rollback_triggers(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    return restore_triggers(ctx.cluster, ctx.upgrade_run, ctx.profile, decision["triggers"], ctx.state)


def _restored_rows_differ(db: str, manifest: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """A restored database's tables against the backup's row counts (the run's own schema left out)."""
    b_t = manifest["facts"]["databases"][db]["tables"]
    a_t = {k: v for k, v in now["databases"][db]["tables"].items() if not k.startswith(f"{SNAPSHOT_TABLE[0]}.")}
    return [
        f"{db}.{table}: {b_t.get(table, {}).get('rows')} rows in the backup, {a_t.get(table, {}).get('rows')} now"
        for table in sorted(set(b_t) | set(a_t))
        if table not in a_t or table not in b_t or a_t[table]["rows"] != b_t[table]["rows"]
    ]


def verify_rolled_back(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """Every database of the plan is on its old version with its triggers as before; restored ones also hold
    exactly the backup's row counts and the metadata rows documented before the update."""
    if decision["path"] == RollbackPath.NOTHING:
        return {"checked": "nothing was changed"}
    if decision["path"] == RollbackPath.KEEP_NEW:
        verify_kept_new(ctx, decision)
    up = ctx.upgrade_run
    plan = upgrade_plan(ctx)
    saved = up.load("triggers_before") or {}
    before = up.load("state_before") or {}
    manifest = up.load("backup")
    now = facts.snapshot(ctx.cluster) if decision["restore"] else None
    errors: list[str] = []
    out: dict[str, Any] = {}
    for db, old in plan.from_versions.items():
        with connect(ctx.cluster, db) as conn:
            installed, reported = ctx.profile.installed_version(conn), ctx.profile.reported_version(conn)
            trig = trigger_differences(conn, ctx.profile.trigger_prefix, saved.get(db, []))
            metadata = ctx.profile.metadata_rows(conn)
        if installed != old or reported != old:
            errors.append(f"{db}: {ctx.profile.extname} {installed} (reports {reported}), expected {old}")
        errors += [f"{db}: {d}" for d in trig]
        if db in decision["restore"] and before.get(db):
            if json.dumps(metadata, sort_keys=True, default=str) != json.dumps(
                before[db]["metadata"], sort_keys=True, default=str
            ):
                errors.append(f"{db}: metadata rows differ from those documented before the update")
        if db in decision["restore"] and now is not None and manifest is not None:
            errors += _restored_rows_differ(db, manifest, now)
        out[db] = {"version": installed, "metadata_rows": len(metadata), "restored": db in decision["restore"]}
    if errors:
        raise CheckFailed("after the rollback: " + "; ".join(errors))
    return out


def write_rollback_report(ctx: RunContext) -> dict[str, str]:
    decision = ctx.state.load("decision") or {}
    return recovery.write_report(
        ctx, restored_databases=decision.get("restore"), triggers_restored_in=decision.get("triggers")
    )
