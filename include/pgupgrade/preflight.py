"""Preflight: would the next maintenance window's upgrade of each configured cluster go ahead?

Runs the read-only parts of the runbooks against each cluster — the major plan (``major.plan``: support matrix,
blockers such as prepared transactions, health, extensions in the new installation, shared libraries, space,
``pg_upgrade --check`` against a throwaway cluster in a scratch directory it removes, method and outage estimate),
whether the estimate fits the next window, and cheaply the minor and extension picture (the newest installed
minor of the running major through ``minor.plan``, the extension's version and queue) — and reports ready / not
ready with reasons.

It takes **no cluster lock**: nothing it does changes the cluster, and holding the lock would make a real upgrade
run that starts meanwhile fail its ``acquire_lock``. It *reads* the lock: a cluster whose lock is held (an
upgrade or rollback under way, or a lock marked *needs attention*) is reported busy / not ready and not probed,
so the preflight never runs ``pg_upgrade --check`` against a cluster a run is stopping or upgrading.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgupgrade import checks, plans, versions, windows
from pgupgrade.context import RunContext
from pgupgrade.errors import PgUpgradeError
from pgupgrade.major import fields as major_fields
from pgupgrade.major import plan as major_plan
from pgupgrade.major.model import MajorPlan
from pgupgrade.minor import fields as minor_fields
from pgupgrade.minor import plan as minor_plan
from pgupgrade.params import Field, validate
from pgupgrade.state import RunJournal, safe_name, write_json

log = logging.getLogger(__name__)

DAG_ID = "pg_preflight_checks"
CLUSTERS_ENV = "PGUPGRADE_CLUSTERS_FILE"
DEFAULT_CLUSTERS = Path(__file__).resolve().parents[1] / "config" / "clusters.json"
# the major-upgrade params a preflight passes on to the plan (the rest keep the upgrade DAG's defaults)
PASSED_MAJOR_FIELDS = ("method", "transfer_mode", "jobs", "ack_standbys", "ack_replication_slots", "ack_subscriptions")


def clusters_path() -> Path:
    return Path(os.environ.get(CLUSTERS_ENV) or DEFAULT_CLUSTERS)


def load_clusters(path: Path | None = None) -> list[str]:
    """The Airflow postgres connection ids of the clusters to check: ``{"clusters": ["pg_main", ...]}`` — an entry
    may also be ``{"conn_id": ..., "dags": {...}}`` (see ``pgupgrade.schedule``) — a plain file read: safe at DAG
    parse time."""
    from pgupgrade import schedule

    ids = [e.conn_id for e in schedule.read_entries(path or clusters_path())]
    return list(validate([fields(["x"])[0]], {"clusters": ids})["clusters"])


def fields(clusters: list[str]) -> list[Field]:
    """The preflight DAG's params; the cluster list defaults to the configured one."""
    by_name = {f.name: f for f in major_fields.FIELDS}
    return [
        Field(
            name="clusters",
            type="array",
            default=list(clusters),
            title="Clusters",
            description="Airflow postgres connection ids to check (default: include/config/clusters.json or the file "
            "named by "
            f"${CLUSTERS_ENV}).",
            section="Clusters",
        ),
        Field(
            name="window",
            type="string",
            default="default",
            title="Maintenance window",
            description="Name of the window in include/config/windows.json the upgrade would run in: the outage "
            "estimate "
            "must fit it.",
            section="Window",
            kind="identifier",
        ),
        major_fields.TARGET_MAJOR,
        *(by_name[n] for n in PASSED_MAJOR_FIELDS),
        Field(
            name="check_minor",
            type="boolean",
            default=True,
            title="Check minor releases",
            description="Also report whether a newer minor of the running major is installed and its minor plan "
            "passes.",
            section="Checks",
        ),
        Field(
            name="fail_if_not_ready",
            type="boolean",
            default=True,
            title="Fail if not ready",
            description="Fail the run (red in the UI, failure alerts) when any cluster would not go ahead; the "
            "report is "
            "written first.",
            section="Checks",
        ),
    ]


def major_params(p: dict[str, Any], conn_id: str) -> dict[str, Any]:
    """The params the major upgrade DAG would run with: its defaults plus what the preflight passes on."""
    conf = {"postgres_conn_id": conn_id, "target_major": p["target_major"]}
    conf.update({n: p[n] for n in PASSED_MAJOR_FIELDS if n in p})
    return validate([*major_fields.FIELDS, major_fields.TARGET_MAJOR], conf)


def _err(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PgUpgradeError) else f"{type(exc).__name__}: {exc}".strip()


def check_cluster(
    ctx: RunContext, window: windows.WindowSpec | None, now: dt.datetime, *, check_minor: bool = True
) -> dict[str, Any]:
    """Everything read-only about one cluster; never raises for what it finds (it is all in the result)."""
    res: dict[str, Any] = {
        "cluster": ctx.params["postgres_conn_id"],
        "status": "not ready",
        "reasons": [],
        "warnings": [],
        "checked_at": now.isoformat(timespec="seconds"),
        "target_major": ctx.params["target_major"],
    }
    reasons: list[str] = res["reasons"]
    holder = ctx.lock.holder()
    if holder:
        state = "needs attention" if holder.get("needs_attention") else "held"
        reasons.append(
            f"cluster lock {state} by {holder.get('dag_id')}/{holder.get('run_id')}: a run is working on this "
            "cluster; not probed"
        )
        res["status"] = "busy"
        return res
    w = window.current_or_next(now) if window is not None else None
    if window is not None and w is not None:
        res["window"] = {
            "spec": window.describe(),
            "start": w.start.isoformat(),
            "end": w.end.isoformat(),
            "seconds": w.seconds,
        }
    plan: MajorPlan | plans.AlreadyThere | None = None
    try:
        plan = major_plan.plan(ctx)
    except Exception as exc:  # a preflight reports every failure as a reason
        reasons.append(f"major upgrade plan: {_err(exc)}")
    if isinstance(plan, plans.AlreadyThere):
        res.update(status="up to date", running=plan.running, detail=plan.reason)
    elif plan is not None:
        res["running"] = plan.old.version
        res["major"] = {
            "from": plan.old.version,
            "to": plan.new.version,
            "method": plan.method,
            "transfer_mode": plan.transfer_mode,
            "method_reason": plan.method_reason,
            "outage_estimate_s": round(plan.outage_estimate_s, 1),
            "data_bytes": plan.data_bytes,
            "databases": plan.databases,
            "blockers_acknowledged": plan.blockers_acknowledged,
            "space": plan.space,
        }
        res["warnings"] += plan.warnings
        if w is not None:
            if plan.outage_estimate_s > w.seconds:
                reasons.append(
                    f"the outage estimate {plan.outage_estimate_s:.0f}s does not fit the next window "
                    f"({w.seconds:.0f}s from {w.start.isoformat()})"
                )
        if not reasons:
            res["status"] = "ready"
    if res["status"] != "up to date" or check_minor:
        res["extension"] = _extension_picture(ctx)
    if check_minor:
        res["minor"] = minor_picture(ctx)
        if not res.get("running") and res["minor"].get("running"):
            res["running"] = res["minor"]["running"]
    return res


def _extension_picture(ctx: RunContext) -> dict[str, Any]:
    """The extension's version and queue per database (cheap, informational: the upgrade waits for the queue)."""
    try:
        from pgupgrade import facts
        from pgupgrade.sql import connect

        dbs = facts.user_databases(ctx.cluster)
        out: dict[str, Any] = {}
        for db in checks.extension_databases(ctx.cluster, dbs, ctx.profile):
            with connect(ctx.cluster, db) as conn:
                out[db] = {"version": ctx.profile.installed_version(conn), "queue": ctx.profile.queue_size(conn)}
        return {"extension": ctx.profile.extname, "databases": out}
    except Exception as exc:  # informational
        return {"extension": ctx.profile.extname, "error": _err(exc)}


def minor_picture(ctx: RunContext) -> dict[str, Any]:
    """Whether a newer minor of the running major is installed here and the minor runbook's plan (installer
    bindir) would accept it. Informational: it does not decide the major upgrade's readiness."""
    try:
        from pgupgrade.sql import connect, scalar_named

        with connect(ctx.cluster) as conn:
            running = versions.Version.from_num(int(scalar_named(conn, "server-version-num")))
        newest = next((i for i in versions.discover(host=ctx.host) if i.major == running.major), None)
    except Exception as exc:  # informational
        return {"error": _err(exc)}
    if newest is None or newest.version <= running:
        return {"running": str(running), "newer_installed": None}
    out: dict[str, Any] = {"running": str(running), "newer_installed": str(newest.version), "bindir": newest.bindir}
    try:
        p = validate(
            minor_fields.FIELDS,
            {
                "postgres_conn_id": ctx.params["postgres_conn_id"],
                "installer": "bindir",
                "target_version": str(newest.version),
                "new_bindir": newest.bindir,
            },
        )
        minor_plan.plan(replace(ctx, params=p))
        out["plan"] = "ok"
    except Exception as exc:  # informational
        out["plan"] = f"would not go ahead: {_err(exc)}"
    return out


# -- summary and report ---------------------------------------------------------------------------------


def _why(r: dict[str, Any]) -> dict[str, Any]:
    return {"cluster": r["cluster"], "reasons": r["reasons"]}


def summarize(results: list[dict[str, Any]], *, dag_id: str = DAG_ID, run_id: str = "") -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: r["cluster"])
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ready": [r["cluster"] for r in ordered if r["status"] == "ready"],
        "up_to_date": [r["cluster"] for r in ordered if r["status"] == "up to date"],
        "not_ready": [_why(r) for r in ordered if r["status"] == "not ready"],
        "busy": [_why(r) for r in ordered if r["status"] == "busy"],
        "clusters": ordered,
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Upgrade preflight — {len(summary['ready'])} ready, "
        f"{len(summary['not_ready']) + len(summary['busy'])} would not go ahead",
        "",
        f"Run `{summary['run_id']}`, generated {summary['generated']}.",
        "",
        "| cluster | status | running | target | method | estimate (s) | next window |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["clusters"]:
        m, w = r.get("major") or {}, r.get("window") or {}
        method = f"{m.get('method', '')} {m.get('transfer_mode') or ''}".strip()
        when = f"{w['start']} ({w['seconds']:.0f} s)" if w else ""
        lines.append(
            f"| {r['cluster']} | **{r['status']}** | {r.get('running', '')} | {m.get('to', r['target_major'])} | "
            f"{method} | {m.get('outage_estimate_s', '')} | {when} |"
        )
    for r in summary["clusters"]:
        notes = [f"- Would not go ahead: {x}" for x in r["reasons"]] + [f"- Warning: {x}" for x in r["warnings"]]
        mi = r.get("minor") or {}
        if mi.get("newer_installed"):
            notes.append(f"- Minor release {mi['newer_installed']} installed (running {mi['running']}): {mi['plan']}")
        for db, e in ((r.get("extension") or {}).get("databases") or {}).items():
            if e.get("queue"):
                notes.append(f"- {db}: {r['extension']['extension']} queue holds {e['queue']} (the upgrade waits)")
        if notes:
            lines += ["", f"## {r['cluster']}", "", *notes]
    return "\n".join(lines) + "\n"


def write_report(state: RunJournal, summary: dict[str, Any], *, root: Path) -> dict[str, str]:
    """JSON + Markdown next to the upgrade reports (``PGUPGRADE_REPORTS_DIR`` or ``<store root>/reports``)."""
    from pgupgrade import report

    base = report.reports_dir(root) / safe_name(state.dag_id) / safe_name(state.run_id)
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    write_json(json_path, summary)
    md_path.write_text(markdown(summary))
    paths = {"json": str(json_path), "markdown": str(md_path)}
    state.save("report", paths)
    return paths
