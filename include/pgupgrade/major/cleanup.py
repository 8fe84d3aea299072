"""Deleting the old cluster after a successful major upgrade: only on explicit confirmation, after a minimum age,
and only when the new cluster serves."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

from pgupgrade.cluster import service_for
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PlanError
from pgupgrade.major.rollback import recorded_plan
from pgupgrade.scratch import exists

log = logging.getLogger(__name__)


def cleanup_check(ctx: RunContext) -> dict[str, Any]:
    """Everything that must hold before the old cluster may go; no side effects."""
    p = ctx.params
    up = ctx.upgrade_run
    plan_ = recorded_plan(up)
    if plan_ is None or not up.happened("opened"):
        raise PlanError(f"run {p['upgrade_dag_id']}/{p['upgrade_run_id']} did not finish an upgrade (no 'opened')")
    if up.happened("old_cluster_deleted"):
        raise PlanError("the old cluster of this run was deleted already")
    if up.happened("rollback_triggered"):
        raise PlanError("this run was rolled back: its old cluster is the one serving")
    old_datadir = plan_.old.datadir
    if p["confirm_delete"] != old_datadir:
        raise ConfigError("confirm_delete", f"must be exactly {old_datadir!r} to delete it")
    opened = up.first("opened") or {}
    age_h = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(opened["at"])).total_seconds() / 3600
    if age_h < p["min_age_hours"]:
        raise PlanError(f"the new cluster has served for {age_h:.1f} h, less than min_age_hours={p['min_age_hours']}")
    new = replace(ctx.cluster, bindir=plan_.new.bindir, datadir=plan_.new.datadir, confdir=None)
    if not service_for(new, ctx.host).is_running():
        raise PlanError(f"the new cluster in {new.datadir} is not running")
    old = replace(ctx.cluster, bindir=plan_.old.bindir, datadir=old_datadir)
    if exists(ctx.host, f"{old_datadir}/postmaster.pid", old.os_user) and service_for(old, ctx.host).is_running():
        raise PlanError(f"a postmaster runs in the old data directory {old_datadir}")
    return {"old_datadir": old_datadir, "age_hours": round(age_h, 2), "work_dir": plan_.work_dir}


def delete_old_cluster(ctx: RunContext) -> dict[str, Any]:
    """pg_upgrade's own delete_old_cluster.sh when it wrote one (it knows the tablespace subdirectories),
    otherwise the old data directory."""
    checked = cleanup_check(ctx)
    up = ctx.upgrade_run
    user = ctx.cluster.os_user
    script = f"{checked['work_dir']}/delete_old_cluster.sh"
    up.record("old_cluster_deleted", by=f"{ctx.dag_id}/{ctx.run_id}", datadir=checked["old_datadir"])
    if exists(ctx.host, script, user):
        ctx.host.run(["sh", script], user=user, timeout=24 * 3600)
    ctx.host.run(["rm", "-rf", "--", checked["old_datadir"]], user=user, timeout=24 * 3600)
    return checked
