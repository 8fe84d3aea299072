"""The update itself, each step ``fn(ctx)`` reading the run's plan: backup and documentation of the current state
→ the profile's triggers off (their previous state saved first), queue empty, backup re-verified → the target's
files, then per database ONE transaction: ``ALTER EXTENSION … UPDATE`` + the profile's migration SQL → verify →
the triggers back exactly as they were. Every destructive step journals before it acts."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pgupgrade import backup, entities, facts
from pgupgrade.cluster import Cluster
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed
from pgupgrade.extension.catalog import (
    LOCK_TIMEOUT,
    SNAPSHOT_TABLE,
    derived_tables,
    entity_tables,
    has_function,
    metadata_table,
    prefixed_triggers,
    scan_times,
    set_trigger_modes,
    table_columns,
    table_writes,
    trigger_differences,
    update_path_exists,
)
from pgupgrade.extension.fields import SourceKind, between
from pgupgrade.extension.plan import ExtensionPlan
from pgupgrade.extension.source import install_files
from pgupgrade.profiles import ExtensionProfile
from pgupgrade.sql import connect, load, psql, scalar
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)


# -- prepare ----------------------------------------------------------------------------------------------------


def take_backup(ctx: RunContext) -> dict[str, Any]:
    """``pg_dump -Fc`` per database (TOC listed, the metadata table's data entry present), plus what a rollback
    needs to judge later changes: row counts (and checksums with verify_content), write counters, the tables the
    run itself rewrites."""
    if ctx.state.has("backup"):
        manifest: dict[str, Any] = ctx.state.load("backup")
        backup.LOGICAL.verify(ctx.host, manifest, ctx.cluster.os_user)
        log.info("backup of this run already taken and verified: %s", manifest["backup_dir"])
        return backup_summary(manifest)
    plan = ctx.plan(ExtensionPlan)
    dbs = plan.databases
    writes, derived = {}, {}
    for db in dbs:
        with connect(ctx.cluster, db) as conn:
            writes[db] = table_writes(conn)
            derived[db] = derived_tables(conn, ctx.profile)
    snapshot = facts.snapshot(ctx.cluster, content=ctx.params["verify_content"])
    required = {db: [("TABLE DATA", s, t)] for db, (s, t) in plan.metadata_tables.items()}
    ctx.state.record("backup_started", backup_dir=plan.backup_dir)
    manifest = backup.dump_custom(ctx.cluster, ctx.host, plan.backup_dir, dbs, required=required)
    manifest["facts"] = {**snapshot, "databases": {db: snapshot["databases"][db] for db in dbs}}
    manifest["writes"] = writes
    manifest["derived"] = derived
    ctx.state.save("backup", manifest)
    return backup_summary(manifest)


def backup_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "backup_dir": manifest["backup_dir"],
        "total_bytes": manifest["total_bytes"],
        "databases": manifest["databases"],
    }


def document_state(ctx: RunContext) -> dict[str, Any]:
    """The current state, as a JSON file in the run state and as rows of pgupgrade.extension_snapshot in each
    database: metadata rows, each TVIEW's columns and row count, scan times (the performance baseline)."""
    state: dict[str, Any] = {}
    for db in ctx.plan(ExtensionPlan).databases:
        with connect(ctx.cluster, db) as conn:
            version = ctx.profile.installed_version(conn)
            rows = ctx.profile.metadata_rows(conn)
            tables = entity_tables(conn, ctx.profile)
            state[db] = {
                "version": version,
                "reported_version": ctx.profile.reported_version(conn),
                "metadata": rows,
                "tviews": tables,
                "scan_s": scan_times(conn, tables),
            }
    ctx.state.save("state_before", state)
    ctx.state.record("snapshot_table_writing", table=".".join(SNAPSHOT_TABLE), databases=list(state))
    for db, s in state.items():
        with connect(ctx.cluster, db, autocommit=False) as conn, conn.cursor() as cur:
            cur.execute(load("extension-snapshot-table"))
            for row in s["metadata"]:
                entity = str(row[ctx.profile.entity_column])
                info = s["tviews"].get(entity, {})
                cur.execute(
                    load("extension-snapshot-insert"),
                    {
                        "dag_id": ctx.dag_id,
                        "run_id": ctx.run_id,
                        "extname": ctx.profile.extname,
                        "extversion": s["version"],
                        "entity": entity,
                        "metadata": json.dumps(row, default=str),
                        "tview_columns": json.dumps(info.get("columns")),
                        "tview_rows": info.get("rows"),
                    },
                )
            conn.commit()
    return {
        db: {"tviews": {e: i.get("rows") for e, i in s["tviews"].items()}, "metadata_rows": len(s["metadata"])}
        for db, s in state.items()
    }


# -- stop operations ------------------------------------------------------------------------------------------


def disable_triggers(ctx: RunContext) -> dict[str, int]:
    """Saves every prefixed trigger's state (once: a re-run never overwrites it with the disabled state), then
    disables the enabled ones, one transaction per database."""
    databases = ctx.plan(ExtensionPlan).databases
    saved: dict[str, list[dict[str, Any]]] | None = ctx.state.load("triggers_before")
    if saved is None:
        saved = {}
        for db in databases:
            with connect(ctx.cluster, db) as conn:
                saved[db] = prefixed_triggers(conn, ctx.profile.trigger_prefix)
        ctx.state.save("triggers_before", saved)
    out = {}
    for db in databases:
        enabled = [t for t in saved[db] if t["enabled"] != "D"]
        ctx.state.record("triggers_disabling", database=db, triggers=[t["trigger_name"] for t in enabled])
        with connect(ctx.cluster, db, autocommit=False) as conn:
            set_trigger_modes(conn, [{**t, "enabled": "D"} for t in enabled])
            conn.commit()
        ctx.state.record("triggers_disabled", database=db, count=len(enabled))
        out[db] = len(enabled)
    return out


def queue_empty(ctx: RunContext) -> bool:
    """The extension's queue is empty in every database of the plan (the sensor's poke)."""
    return entities.queue_empty(ctx, ctx.plan(ExtensionPlan).databases)


def final_backup_check(ctx: RunContext) -> dict[str, int]:
    """The backup files are unchanged (sizes, checksums) and each archive still lists the same TOC."""
    manifest = ctx.state.load("backup")
    if manifest is None:
        raise CheckFailed("no backup on record for this run")
    backup.LOGICAL.verify(ctx.host, manifest, ctx.cluster.os_user)
    out = {}
    for db, meta in manifest["databases"].items():
        n = len(backup.toc(ctx.host, meta["file"], ctx.cluster.os_user, manifest["bindir"]))
        if n != meta["toc_entries"]:
            raise CheckFailed(f"backup of {db} now lists {n} TOC entries, {meta['toc_entries']} when written")
        out[db] = n
    return out


# -- update ----------------------------------------------------------------------------------------------------


def install_target_files(ctx: RunContext) -> dict[str, Any]:
    plan = ctx.plan(ExtensionPlan)
    source, target = plan.source, plan.target_version
    if source.kind == SourceKind.INSTALLED:
        return install_files(ctx.cluster, ctx.host, source, target, ctx.profile.extname)
    ctx.state.record("extension_files_installing", version=target, source=source.kind.value)
    result = install_files(ctx.cluster, ctx.host, source, target, ctx.profile.extname)
    ctx.state.record("extension_files_installed", version=target)
    return result


def _to_update(ctx: RunContext, plan: ExtensionPlan) -> list[tuple[str, str]]:
    """(database, current version) of every database still to update; refuses one that is not where the plan
    saw it or has no update path now that the files are installed."""
    profile, target = ctx.profile, plan.target_version
    todo = []
    for db in plan.databases:
        with connect(ctx.cluster, db) as conn:
            current = profile.installed_version(conn)
            if current == target:
                log.info("%s: already at %s (an earlier attempt of this run)", db, target)
                continue
            if current is None or current != plan.from_versions[db]:
                raise CheckFailed(f"{db}: {profile.extname} is at {current}; the plan saw {plan.from_versions[db]}")
            if not update_path_exists(conn, profile.extname, current, target):
                raise CheckFailed(
                    f"{db}: no update path {current} → {target} for {profile.extname} after the files "
                    "were installed (pg_extension_update_paths)"
                )
            todo.append((db, current))
    return todo


def update_extension(ctx: RunContext) -> dict[str, Any]:
    """Per database ONE transaction: ALTER EXTENSION … UPDATE TO target, then the profile's migration SQL
    (include/sql/upgrade-extension.sql), which raises when a check fails; any error rolls both back."""
    plan = ctx.plan(ExtensionPlan)
    profile, target = ctx.profile, plan.target_version
    before = ctx.state.load("state_before") or {}
    out: dict[str, Any] = {}
    for db, current in _to_update(ctx, plan):
        expected = [str(r[profile.entity_column]) for r in before.get(db, {}).get("metadata", [])]
        ctx.state.record("extension_update_started", database=db, version_from=current, version_to=target)
        started = time.monotonic()
        with connect(ctx.cluster, db, autocommit=False) as conn:
            try:
                with conn.cursor() as cur:
                    cur.execute(load("set-local-lock-timeout"), {"timeout": LOCK_TIMEOUT})
                    cur.execute(
                        psql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
                            psql.Identifier(profile.extname), psql.Literal(target)
                        )
                    )
                    result = None
                    if profile.migration_sql:
                        cur.execute(
                            load(profile.migration_sql),
                            {
                                "extname": profile.extname,
                                "target": target,
                                "metadata_table": profile.metadata_table,
                                "entity_column": profile.entity_column,
                                "backing_column": profile.backing_column,
                                "expected_entities": expected,
                                "removed_functions": between(profile.removed_functions, current, target),
                            },
                        )
                        row = cur.fetchone() if cur.description else None
                        result = row[0] if row else None
                conn.commit()
            except Exception as exc:
                conn.rollback()
                ctx.state.record("extension_update_failed", database=db, error=str(exc)[:2000])
                raise CheckFailed(f"{db}: update {current} → {target} failed and was rolled back: {exc}") from exc
        ctx.state.record("extension_updated", database=db, version=target, migration=result)
        out[db] = {"from": current, "to": target, "migration": result, "seconds": round(time.monotonic() - started, 3)}
    return out


def verify_extension(ctx: RunContext) -> dict[str, Any]:
    """Version (catalog and the extension's own function), new columns and functions, removed ones gone,
    every metadata row still there."""
    return verify_updated(ctx, ctx.plan(ExtensionPlan))


def verify_updated(ctx: RunContext, plan: ExtensionPlan) -> dict[str, Any]:
    """verify_extension for the databases of ``plan`` (the rollback checks a kept new version with it)."""
    profile, target = ctx.profile, plan.target_version
    before = ctx.state.load("state_before") or {}
    out: dict[str, Any] = {}
    for db in plan.databases:
        current = plan.from_versions[db]
        errors: list[str] = []
        with connect(ctx.cluster, db) as conn:
            installed, reported = profile.installed_version(conn), profile.reported_version(conn)
            if installed != target or reported != target:
                errors.append(f"version {installed} (reported {reported}), expected {target}")
            schema, table = metadata_table(conn, profile)
            cols = {c for c, _ in table_columns(conn, schema, table)}
            missing_cols = [c for c in between(profile.added_columns, current, target) if c not in cols]
            stale_cols = [c for c in between(profile.removed_columns, current, target) if c in cols]
            if missing_cols:
                errors.append(f"{schema}.{table} lacks the new columns {', '.join(missing_cols)}")
            if stale_cols:
                errors.append(f"{schema}.{table} still has the removed columns {', '.join(stale_cols)}")
            answered = {}
            for fn in between(profile.added_functions, current, target):
                if not has_function(conn, profile.extname, fn):
                    errors.append(f"new function {fn} is missing")
                    continue
                answered[fn] = int(scalar(conn, psql.SQL("SELECT count(*) FROM {}()").format(psql.Identifier(fn))))
            left = [
                fn
                for fn in between(profile.removed_functions, current, target)
                if has_function(conn, profile.extname, fn)
            ]
            if left:
                errors.append(f"removed functions still present: {', '.join(left)}")
            entities_now = profile.entities(conn)
            expected = sorted(str(r[profile.entity_column]) for r in before.get(db, {}).get("metadata", []))
            if sorted(entities_now) != expected:
                errors.append(f"metadata rows: {expected} before, {sorted(entities_now)} after")
        if errors:
            raise CheckFailed(f"{db}: after the update: " + "; ".join(errors))
        out[db] = {
            "version": installed,
            "new_columns": between(profile.added_columns, current, target),
            "new_functions": answered,
            "metadata_rows": len(entities_now),
        }
    return out


# -- re-enable --------------------------------------------------------------------------------------------------


def restore_triggers(
    cluster: Cluster, state: RunJournal, profile: ExtensionProfile, databases: list[str], journal: RunJournal
) -> dict[str, Any]:
    """Puts back the recorded mode of every trigger the run disabled (journalled in ``journal``), then checks
    that every recorded trigger is exactly as before. Triggers that were disabled before stay disabled."""
    saved = state.load("triggers_before") or {}
    out: dict[str, Any] = {}
    for db in databases:
        recorded = saved.get(db)
        if recorded is None:
            continue
        with connect(cluster, db) as conn:
            now = {
                (t["schema"], t["table_name"], t["trigger_name"]): t["enabled"]
                for t in prefixed_triggers(conn, profile.trigger_prefix)
            }
        todo = [
            t
            for t in recorded
            if t["enabled"] != "D"
            and now.get((t["schema"], t["table_name"], t["trigger_name"])) not in (None, t["enabled"])
        ]
        journal.record("triggers_restoring", database=db, triggers=[t["trigger_name"] for t in todo])
        with connect(cluster, db, autocommit=False) as conn:
            changed = set_trigger_modes(conn, todo)
            conn.commit()
        with connect(cluster, db) as conn:
            diffs = trigger_differences(conn, profile.trigger_prefix, recorded)
        journal.record("triggers_restored", database=db, count=len(changed))
        if diffs:
            raise CheckFailed(f"{db}: triggers not as before the run: " + "; ".join(diffs))
        out[db] = {"restored": changed, "left_disabled": [t["trigger_name"] for t in recorded if t["enabled"] == "D"]}
    return out


def enable_triggers(ctx: RunContext) -> dict[str, Any]:
    return restore_triggers(ctx.cluster, ctx.state, ctx.profile, ctx.plan(ExtensionPlan).databases, ctx.state)
