"""After clients are back on the new cluster: refresh the extension's entities, statistics, performance
compared with before, and the run's report."""

from __future__ import annotations

import json
import logging
from typing import Any

from pgupgrade import backup, collations, plans, versions
from pgupgrade.context import RunContext
from pgupgrade.entities import extension_facts, refresh_all
from pgupgrade.errors import CheckFailed
from pgupgrade.major.model import MajorPlan
from pgupgrade.major.transfer import new_cluster

log = logging.getLogger(__name__)


def refresh_tviews(ctx: RunContext) -> int:
    plan_ = ctx.plan(MajorPlan)
    return refresh_all(ctx, new_cluster(ctx, plan_, private=False), plan_.databases)


def rebuild_collation_indexes(ctx: RunContext) -> dict[str, Any]:
    """The indexes on collations whose version changed (named by the plan) rebuilt, their versions refreshed."""
    plan_ = ctx.plan(MajorPlan)
    if not plan_.collations.get("changed"):
        return {"rebuilt": [], "refreshed": [], "why": plan_.collations.get("summary", "not compared by the plan")}
    ctx.state.record("collation_indexes_rebuild", reindex=plan_.collations.get("reindex"))
    return collations.rebuild(new_cluster(ctx, plan_, private=False), plan_.collations, plan_.databases)


def analyze(ctx: RunContext) -> None:
    plan_ = ctx.plan(MajorPlan)
    new = new_cluster(ctx, plan_, private=False)
    argv = [new.bin("vacuumdb"), "-w", "--all", "--analyze-in-stages", "-j", str(ctx.params["jobs"])]
    if versions.Version.parse(plan_.new.version).major >= 18:
        argv.append("--missing-stats-only")  # pg_upgrade 18 carries statistics over
    ctx.host.run(argv, user=ctx.cluster.os_user, env=new.libpq_env("postgres"), timeout=24 * 3600)


def performance(ctx: RunContext) -> dict[str, Any]:
    plan_ = ctx.plan(MajorPlan)
    new = new_cluster(ctx, plan_, private=False)
    before = ctx.state.load("facts_before")["extension"]
    after = extension_facts(new, list(before), ctx)
    threshold = ctx.params["perf_threshold_pct"]
    slow = []
    for db, b in before.items():
        for entity, t_before in b["scan_s"].items():
            t_after = after[db]["scan_s"].get(entity, 0.0)
            if t_after > max(t_before, 0.005) * (1 + threshold / 100):
                slow.append(f"{db}.{entity}: {t_before * 1000:.1f} ms before, {t_after * 1000:.1f} ms after")
    if slow and ctx.params["perf_action"] == "fail":
        raise CheckFailed("slower than the threshold: " + "; ".join(slow))
    for line in slow:
        log.warning("slower after the upgrade: %s", line)
    return {"slower": slow, "threshold_pct": threshold}


def new_connection_extra(ctx: RunContext) -> dict[str, Any]:
    """The connection extra of the cluster now serving: the new cluster as registered (service, configuration
    directory)."""
    return new_cluster(ctx, ctx.plan(MajorPlan), private=False).to_extra()


def write_report(ctx: RunContext, status: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    from pgupgrade import report

    more: dict[str, Any] = dict(extra or {})
    if plans.planned(MajorPlan, ctx.state.load("plan")) and ctx.state.happened("opened"):
        more["next_steps"] = (
            "point the Airflow connection at the new cluster: extra = "
            + json.dumps(new_connection_extra(ctx), sort_keys=True)
            + "; delete the old cluster with pg_major_upgrade_cleanup after verifying the new one"
        )
        if ctx.state.happened("wal_slot_created"):
            more["next_steps"] += (
                f" (until then its data directory keeps the WAL of the way back: replication slot "
                f"{backup.ROLLBACK_SLOT}; drop it if you ever start the old cluster by hand)"
            )
    rep = report.build(ctx.state, status=status, extra=more)
    json_path, md_path = report.write(ctx.state, rep, root=ctx.store.root)
    log.info("report: %s", md_path)
    return {"json": str(json_path), "markdown": str(md_path)}
