"""Deleting the old cluster after a successful major upgrade: only on explicit confirmation (``confirm_delete``
typed into the conf, or a person's approval — ``pgupgrade.decisions``), after a minimum age, and only when the
new cluster serves."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

from pgupgrade import decisions
from pgupgrade.cluster import service_for
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PlanError
from pgupgrade.major.rollback import recorded_plan
from pgupgrade.scratch import exists

log = logging.getLogger(__name__)


def cleanup_check(ctx: RunContext, *, ask: bool = False, approval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that must hold before the old cluster may go; no side effects. Confirmed by ``confirm_delete``
    (the old data directory exactly), else — left empty — by ``approval`` (a person's decision), or still to be
    asked when ``ask`` (``confirmed`` is then None)."""
    p = ctx.params
    up = ctx.upgrade_run
    plan_ = recorded_plan(up)
    if plan_ is None or not up.happened("opened"):
        raise PlanError(f"run {p['upgrade_dag_id']}/{p['upgrade_run_id']} did not finish an upgrade (no 'opened')")
    if up.happened("old_cluster_deleted"):
        raise PlanError("the old cluster of this run was deleted already")
    if up.happened("rollback_triggered") or up.happened("rolled_back"):
        raise PlanError("this run was rolled back: its old cluster is the one serving")
    old_datadir = plan_.old.datadir
    confirmed: str | None = "confirm_delete" if p["confirm_delete"] == old_datadir else None
    if p["confirm_delete"] == "" and approval is not None:
        if approval["chosen"] != decisions.APPROVE:
            raise PlanError(f"the deletion was not approved: {approval['chosen']} ({approval['source']})")
        confirmed = f"approved by {approval['by'] or approval['source']}"
    elif confirmed is None and not (p["confirm_delete"] == "" and ask):
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
    return {
        "old_datadir": old_datadir,
        "age_hours": round(age_h, 2),
        "work_dir": plan_.work_dir,
        "confirmed": confirmed,
    }


def delete_old_cluster(ctx: RunContext) -> dict[str, Any]:
    """pg_upgrade's own delete_old_cluster.sh when it wrote one (it knows the tablespace subdirectories),
    otherwise the old data directory; a Debian cluster's /etc/postgresql/<old>/<name> too."""
    approvals = decisions.taken(ctx.state, "approve_delete")
    checked = cleanup_check(ctx, approval=approvals[-1] if approvals else None)
    up = ctx.upgrade_run
    user = ctx.cluster.os_user
    script = f"{checked['work_dir']}/delete_old_cluster.sh"
    up.record("old_cluster_deleted", by=f"{ctx.dag_id}/{ctx.run_id}", datadir=checked["old_datadir"],
              confirmed=checked["confirmed"])  # fmt: skip
    if exists(ctx.host, script, user):
        ctx.host.run(["sh", script], user=user, timeout=24 * 3600)
    ctx.host.run(["rm", "-rf", "--", checked["old_datadir"]], user=user, timeout=24 * 3600)
    registered = up.first("debian_registered")
    if registered:  # as pg_dropcluster: pg_lsclusters no longer lists a cluster whose data is gone
        ctx.host.run(["rm", "-rf", "--", registered["old_confdir"]], user=user, timeout=600)
        checked["old_confdir_removed"] = registered["old_confdir"]
    return checked


def delete_decision(ctx: RunContext, asking: bool) -> tuple[str, str] | decisions.Decision:
    """Whether a person must approve the deletion: not when ``confirm_delete`` names the old data directory."""
    checked = cleanup_check(ctx, ask=asking)
    subject, body = decisions.delete_question(checked["old_datadir"], checked["age_hours"])
    if checked["confirmed"]:
        return decisions.beforehand(subject, decisions.APPROVE, decisions.CONF)
    return subject, body
