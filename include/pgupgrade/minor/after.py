"""After the cutover, with clients back: the TVIEWs refreshed, the report with the next steps."""

from __future__ import annotations

import json
import logging
from typing import Any

from pgupgrade import entities
from pgupgrade.context import RunContext
from pgupgrade.minor.fields import Installer
from pgupgrade.minor.plan import MinorPlan, on_new

log = logging.getLogger(__name__)


def refresh_tviews(ctx: RunContext) -> int:
    """Every TVIEW refreshed (force) on the target release."""
    plan_ = ctx.plan(MinorPlan)
    new_ctx = on_new(ctx, plan_)
    return int(entities.refresh_all(new_ctx, new_ctx.cluster, plan_.databases))


def write_report(ctx: RunContext, status: str = "success") -> dict[str, str]:
    """JSON + Markdown report: step durations, measured outage, versions before/after, next steps (bindir: point
    the connection's pg_bindir at the new bin directory)."""
    from pgupgrade import report

    plan_ = ctx.plan(MinorPlan)
    pre = ctx.state.load("versions_before") or {}
    extra: dict[str, Any] = {"version_before": pre.get("version")}
    post = ctx.state.load("facts_after")
    if post:
        extra["version_after"] = post.get("server_version")
    if plan_.installer is Installer.BINDIR and ctx.state.happened("opened"):
        conn_extra = {**ctx.cluster.to_extra(), "pg_bindir": plan_.new.bindir}
        extra["next_steps"] = (
            f"the cluster now runs from {plan_.new.bindir}: set the extra of Airflow "
            f"connection {ctx.params['postgres_conn_id']} to {json.dumps(conn_extra, sort_keys=True)}"
            f"; keep {plan_.old.bindir} installed until no rollback is wanted"
        )
    rep = report.build(ctx.state, status=status, extra=extra)
    json_path, md_path = report.write(ctx.state, rep, root=ctx.store.root)
    log.info("report: %s", md_path)
    return {"json": str(json_path), "markdown": str(md_path)}
