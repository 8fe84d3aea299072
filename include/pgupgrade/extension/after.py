"""After the update, each step ``fn(ctx)`` reading the run's plan: every TVIEW refreshed, its statistics and the
validate function checked, scan times against the documented baseline, the final checklist, the report."""

from __future__ import annotations

import json
import logging
from typing import Any

from pgupgrade import checks
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed
from pgupgrade.extension.catalog import describe_finding, entity_tables, has_function, scan_times, trigger_differences
from pgupgrade.extension.fields import PerfAction
from pgupgrade.extension.plan import ExtensionPlan
from pgupgrade.extension.update import backup_summary
from pgupgrade.sql import connect, fetch, psql

log = logging.getLogger(__name__)


def refresh_tviews(ctx: RunContext) -> dict[str, int]:
    """Every TVIEW refreshed with force (positional arguments: valid for both the old and the new signature)."""
    out = {}
    for db in ctx.plan(ExtensionPlan).databases:
        with connect(ctx.cluster, db) as conn:
            entities = ctx.profile.entities(conn)
            for entity in entities:
                ctx.profile.refresh(conn, entity, force=True)
        out[db] = len(entities)
    return out


def _tolerated_entities(ctx: RunContext, db: str) -> set[str]:
    """Entities whose backing table carries a prefixed trigger that was already disabled before the run: their
    'trigger disabled' findings are the operator's choice, kept as it was."""
    saved = (ctx.state.load("triggers_before") or {}).get(db, [])
    disabled_tables = {f"{t['schema']}.{t['table_name']}" for t in saved if t["enabled"] == "D"}
    if not disabled_tables:
        return set()
    with connect(ctx.cluster, db) as conn:
        tables = entity_tables(conn, ctx.profile)
    return {e for e, i in tables.items() if i.get("backing_table") in disabled_tables}


def check_stats(ctx: RunContext) -> dict[str, Any]:
    """The profile's stats function (where the installed version has it) lists every TVIEW with every value set."""
    fn = ctx.profile.stats_function
    out: dict[str, Any] = {}
    for db in ctx.plan(ExtensionPlan).databases:
        with connect(ctx.cluster, db) as conn:
            if not fn or not has_function(conn, ctx.profile.extname, fn):
                out[db] = "no stats function in this version"
                continue
            rows = [r[0] for r in fetch(conn, psql.SQL("SELECT to_jsonb(s) FROM {}() s").format(psql.Identifier(fn)))]
            entities = ctx.profile.entities(conn)
        by_entity = {str(r.get(ctx.profile.entity_column)): r for r in rows}
        missing = [e for e in entities if e not in by_entity]
        empty = [
            f"{e} ({', '.join(k for k, v in r.items() if v is None)})"
            for e, r in by_entity.items()
            if any(v is None for v in r.values())
        ]
        if missing or empty:
            raise CheckFailed(
                f"{db}: {fn}(): "
                + "; ".join(
                    ([f"no stats for {', '.join(missing)}"] if missing else [])
                    + ([f"stats not populated: {', '.join(empty)}"] if empty else [])
                )
            )
        out[db] = by_entity
    return out


def validate_tviews(ctx: RunContext) -> dict[str, Any]:
    """The profile's validate function (where the installed version has it) returns no issues, except for
    TVIEWs whose trigger was disabled before the run (kept so, reported as warnings)."""
    return validate_databases(ctx, ctx.plan(ExtensionPlan).databases)


def validate_databases(ctx: RunContext, databases: list[str]) -> dict[str, Any]:
    """validate_tviews for these databases (the rollback checks a kept new version with it)."""
    fn = ctx.profile.validate_function
    out: dict[str, Any] = {}
    for db in databases:
        with connect(ctx.cluster, db) as conn:
            if not fn or not has_function(conn, ctx.profile.extname, fn):
                out[db] = "no validate function in this version"
                continue
            issues = [r[0] for r in fetch(conn, psql.SQL("SELECT to_jsonb(v) FROM {}() v").format(psql.Identifier(fn)))]
        tolerated = _tolerated_entities(ctx, db)
        bad = [i for i in issues if str(i.get(ctx.profile.entity_column)) not in tolerated]
        kept = [i for i in issues if str(i.get(ctx.profile.entity_column)) in tolerated]
        for i in kept:
            log.warning("%s: %s (its trigger was disabled before the run and stays so)", db, i)
        if bad:
            raise CheckFailed(f"{db}: {fn}() reports: " + "; ".join(json.dumps(i, default=str) for i in bad))
        out[db] = {"issues": [], "kept_as_before": kept}
    return out


# -- finish ----------------------------------------------------------------------------------------------------


def performance(ctx: RunContext) -> dict[str, Any]:
    """Each TVIEW's scan time against the one documented before the update (``perf_threshold_pct``,
    ``perf_action``)."""
    before = ctx.state.load("state_before") or {}
    threshold = ctx.params["perf_threshold_pct"]
    slow, timings = [], {}
    for db in ctx.plan(ExtensionPlan).databases:
        with connect(ctx.cluster, db) as conn:
            after = scan_times(conn, entity_tables(conn, ctx.profile))
        for entity, t_after in after.items():
            t_before = before.get(db, {}).get("scan_s", {}).get(entity)
            timings[f"{db}.{entity}"] = {"before_s": t_before, "after_s": t_after}
            if t_before is not None and t_after > max(t_before, 0.005) * (1 + threshold / 100):
                slow.append(f"{db}.{entity}: {t_before * 1000:.1f} ms before, {t_after * 1000:.1f} ms after")
    if slow and ctx.params["perf_action"] == PerfAction.FAIL:
        raise CheckFailed(f"slower than the {threshold}% threshold: " + "; ".join(slow))
    for line in slow:
        log.warning("slower after the update: %s", line)
    result = {"threshold_pct": threshold, "slower": slow, "timings": timings}
    ctx.state.save("performance", result)
    return result


def final_checklist(ctx: RunContext) -> list[dict[str, Any]]:
    """checks.health (server, indexes, disabled prefixed triggers, extension version, metadata errors, queue):
    a disabled trigger counts only when it was enabled before the run; a non-empty queue is a warning (clients
    may write again)."""
    plan = ctx.plan(ExtensionPlan)
    rows: list[dict[str, Any]] = checks.health(ctx.cluster, plan.databases, ctx.profile)
    saved = ctx.state.load("triggers_before") or {}
    failed = []
    for r in rows:
        if r["check"].startswith("no disabled triggers"):
            with connect(ctx.cluster, r["database"]) as conn:
                diffs = trigger_differences(conn, ctx.profile.trigger_prefix, saved.get(r["database"], []))
            r["ok"], r["detail"] = not diffs, "; ".join(diffs) or "every trigger as before the run"
        if r["check"] == f"{ctx.profile.extname} version" and r["detail"] != plan.target_version:
            r["ok"] = False
        if not r["ok"] and r["check"] != "queue empty":
            failed.append(f"{r['database']}: {r['check']} ({r['detail']})")
        elif not r["ok"]:
            log.warning("%s: %s (%s)", r["database"], r["check"], r["detail"])
    ctx.state.save("checklist", rows)
    if failed:
        raise CheckFailed("final checklist: " + "; ".join(failed))
    return rows


def write_report(ctx: RunContext, status: str = "success", extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The run's report (JSON + Markdown) with the extension's section: versions, TVIEW rows before, backup,
    how long the triggers were off, compatibility findings, scan times, the final checklist."""
    from pgupgrade import report

    plan = ctx.plan(ExtensionPlan)
    triggers = ctx.state.load("triggers_before") or {}
    before = ctx.state.load("state_before") or {}
    off = ctx.state.first("triggers_disabling")
    on = next((e for e in reversed(ctx.state.events()) if e["event"] == "triggers_restored"), None)
    ext = {
        "extname": plan.extname,
        "target_version": plan.target_version,
        "from_versions": plan.from_versions,
        "compatibility": plan.compat,
        "triggers_before": triggers,
        "tview_rows_before": {
            db: {e: i.get("rows") for e, i in s.get("tviews", {}).items()} for db, s in before.items()
        },
        "triggers_disabled": {"from": off["at"] if off else None, "to": on["at"] if on else None},
        "backup": backup_summary(ctx.state.load("backup")) if ctx.state.has("backup") else None,
        "performance": ctx.state.load("performance"),
        "checklist": ctx.state.load("checklist"),
    }
    rep = report.build(ctx.state, status=status, extra={"extension": ext, **(extra or {})})
    json_path, md_path = report.write(ctx.state, rep, root=ctx.store.root)
    md_path.write_text(md_path.read_text() + _markdown(ext))
    log.info("report: %s", md_path)
    return {"json": str(json_path), "markdown": str(md_path)}


def _markdown(ext: dict[str, Any]) -> str:
    lines = ["", f"## Extension {ext.get('extname')} → {ext.get('target_version')}", ""]
    for db, v in (ext.get("from_versions") or {}).items():
        rows = ext["tview_rows_before"].get(db, {})
        lines.append(
            f"- `{db}`: from {v}; TVIEW rows before: " + (", ".join(f"{e}={n}" for e, n in rows.items()) or "-")
        )
    if ext.get("backup"):
        for db, meta in ext["backup"]["databases"].items():
            lines.append(f"- backup of `{db}`: `{meta['file']}` ({meta['toc_entries']} TOC entries)")
    if ext["triggers_disabled"]["from"]:
        lines.append(
            f"- triggers disabled {ext['triggers_disabled']['from']} → re-enabled {ext['triggers_disabled']['to']}"
        )
    if ext.get("compatibility"):
        lines += ["", "### Compatibility", ""] + [f"- {describe_finding(f)}" for f in ext["compatibility"]]
    perf = ext.get("performance")
    if perf:
        lines += ["", f"### TVIEW scan times (threshold {perf['threshold_pct']}%)", ""]
        lines += ["| TVIEW | before ms | after ms |", "|---|---|---|"]
        for name, t in perf["timings"].items():
            b = f"{t['before_s'] * 1000:.2f}" if t["before_s"] is not None else "-"
            lines.append(f"| {name} | {b} | {t['after_s'] * 1000:.2f} |")
        lines += [f"- slower: {line}" for line in perf["slower"]]
    if ext.get("checklist"):
        lines += ["", "### Final checklist", ""]
        for r in ext["checklist"]:
            if r["check"] != "server accepts queries":
                mark = "ok" if r["ok"] else "FAILED"
                lines.append(f"- {mark}: {r['database']}: {r['check']} {r['detail'] or ''}".rstrip())
    return "\n".join(lines) + "\n"
