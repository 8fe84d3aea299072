"""The minor upgrade's rollback, one function per task of its DAG: back to the release the upgrade run recorded
in its plan (bin directory, package versions or install command) — never to the Airflow connection's
``pg_bindir`` nor to the conf — and a restore from the backup only when the data directory no longer starts.

The upgrade run's plan is read with ``plans.recorded``: None (the run failed before its plan) and
``plans.AlreadyThere`` (nothing to do) both mean the upgrade run changed nothing."""

from __future__ import annotations

import logging
from typing import Any

from pgupgrade import entities, facts, plans, recovery, versions
from pgupgrade.cluster import service_for
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, ConfigError, UnsafeState
from pgupgrade.gates import gate_for
from pgupgrade.minor import installers
from pgupgrade.minor.cutover import start, stop_if_started
from pgupgrade.minor.fields import Installer
from pgupgrade.minor.plan import MinorPlan, on_new, on_old, server_version
from pgupgrade.scratch import exists
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)


def recorded_plan(up: RunJournal) -> MinorPlan | None:
    """The upgrade run's plan; None when it changed nothing (no plan recorded, or already on the target)."""
    return plans.planned(MinorPlan, up.load("plan"))


def _plan_of(up: RunJournal) -> MinorPlan:
    """The upgrade run's plan, where the path chosen by assess needs one."""
    plan_ = recorded_plan(up)
    if plan_ is None:
        raise UnsafeState(f"the upgrade run {up.dag_id}/{up.run_id} recorded no plan of a minor upgrade")
    return plan_


def assess(ctx: RunContext) -> dict[str, Any]:
    """The path, from the upgrade run's journal: ``nothing`` (no plan: it changed nothing), ``never_stopped``
    (give logins back), ``previous_release`` (back to the recorded release through the same installer)."""
    up = ctx.upgrade_run
    if not up.exists():
        raise ConfigError("upgrade_run_id", f"no state for {up.dag_id} run {up.run_id!r}")
    plan_ = recorded_plan(up)
    if plan_ is None:
        decision = {"path": "nothing", "why": "the upgrade run stopped before it changed anything"}
    elif not up.happened("old_stop_requested"):
        decision = {"path": "never_stopped", "why": "the server was never stopped: logins are given back"}
    else:
        decision = {
            "path": "previous_release",
            "why": f"the server was stopped: back to PostgreSQL {plan_.old.version} from {plan_.old.bindir} "
            f"(installer {plan_.installer}), as recorded by the upgrade run",
        }
    if up.happened("opened"):
        decision["why"] += (
            "; clients were let in after the upgrade: logins are blocked again, and their writes "
            "are kept (a minor release keeps the data format)"
        )
    ctx.state.save("decision", decision)
    log.info("rollback path: %s, because %s", decision["path"], decision["why"])
    return decision


def _running(ctx: RunContext) -> bool:
    """Whether a postmaster runs on the data directory (also while the bin directory lacks pg_ctl, e.g. during a
    half-done package install)."""
    pid = installers.postmaster_pid(ctx.host, ctx.cluster)
    if pid is None:
        return False
    if exists(ctx.host, ctx.cluster.bin("pg_ctl")):
        return bool(service_for(ctx.cluster, ctx.host).is_running())
    res = ctx.host.run(["kill", "-0", str(pid)], user=ctx.cluster.os_user, check=False, timeout=30)
    return bool(res.exit_code == 0)


def back_to_previous(ctx: RunContext) -> dict[str, Any]:
    """Stops the cluster if it runs, puts the recorded previous release back through the same installer,
    checks its binaries, and starts the data directory with them. A data directory that does not start is
    recorded (``start.started = false``) for the restore branch, not raised."""
    decision = ctx.state.load("decision")
    if decision["path"] == "nothing":
        ctx.state.save("start", {"started": True})
        return {"path": "nothing"}
    up = ctx.upgrade_run
    plan_ = _plan_of(up)
    prev = on_old(ctx, plan_)
    if decision["path"] == "never_stopped":
        if not _running(prev):
            ctx.state.record("previous_start_requested", bindir=prev.cluster.bindir)
            start(prev, f"PostgreSQL {plan_.old.version}")
        ctx.state.save("start", {"started": True})
        return {"path": "never_stopped"}
    new = on_new(ctx, plan_)
    running_ctx = new if exists(ctx.host, new.cluster.bin("pg_ctl")) else prev
    if _running(running_ctx):
        if up.happened("opened"):
            roles = gate_for(running_ctx.cluster, ctx.host).block()
            ctx.state.save("blocked_roles", roles)
            ctx.state.record("logins_blocked", roles=roles)
            gate_for(running_ctx.cluster, ctx.host).terminate()
            ctx.state.save("facts_before_rollback", facts.snapshot(running_ctx.cluster))
        ctx.state.record("stop_requested", bindir=running_ctx.cluster.bindir)
        service_for(running_ctx.cluster, ctx.host).stop("fast")
        ctx.state.record("stopped")
    _reinstall_previous(ctx, up, plan_)
    got = versions.inspect(plan_.old.bindir, ctx.host).version
    if str(got) != plan_.old.version:
        raise CheckFailed(
            f"{plan_.old.bindir}/postgres is PostgreSQL {got}, not the recorded "
            f"{plan_.old.version}: the previous release is not back"
        )
    ctx.state.record("previous_start_requested", bindir=prev.cluster.bindir)
    try:
        start(prev, f"PostgreSQL {plan_.old.version}")
    except CheckFailed as exc:
        log.error("the data directory does not start on the previous release: %s", exc)
        ctx.state.record("previous_start_failed", error=str(exc)[:4000])
        ctx.state.save("start", {"started": False, "error": str(exc)})
        return {"path": "previous_release", "started": False}
    ctx.state.record("previous_started", bindir=prev.cluster.bindir)
    ctx.state.save("start", {"started": True})
    return {"path": "previous_release", "started": True, "bindir": prev.cluster.bindir}


def _reinstall_previous(ctx: RunContext, up: RunJournal, plan_: MinorPlan) -> None:
    prev = on_old(ctx, plan_)
    if plan_.installer is Installer.BINDIR:
        ctx.state.record("bindir_switch", previous=plan_.new.bindir, new=plan_.old.bindir)
        return
    event = up.first("install_started")
    if event is None:
        log.info("the upgrade run never started the install: the previous binaries are still in place")
        return
    if plan_.installer is Installer.APT:
        pins = event["previous_packages"]
        ctx.state.record("install_started", installer="apt", packages=pins)
        res = installers.apt_install(ctx.host, pins, allow_downgrades=True)
    else:
        version = event["previous_version"]
        argv = plan_.install_command().argv
        ctx.state.record("install_started", installer="command", argv=installers.render_command(argv, version))
        res = installers.run_install_command(ctx.host, argv, version)
    ctx.state.record("install_done", seconds=round(res.duration_s, 3))
    stop_if_started(prev, "the package scripts / install command started the cluster")


def data_dir_started(ctx: RunContext) -> bool:
    return bool((ctx.state.load("start") or {}).get("started"))


def restore_from_backup(ctx: RunContext) -> str:
    """Only when the data directory no longer starts on the previous release: the directory is moved aside
    (never deleted), a fresh cluster is initdb'd with the previous binaries and the backup restored. Refused
    when data changed after the backup, unless accept_data_loss (recovery.data_loss_risks)."""
    up = ctx.upgrade_run
    plan_ = _plan_of(up)
    ctx.state.record("restore_started")
    aside = recovery.restore_from_backup(
        up, on_old(ctx, plan_).cluster, ctx.host, accept_data_loss=ctx.params["accept_data_loss"]
    )
    ctx.state.record("restored", moved_aside=aside)
    return str(aside)


def verify_previous(ctx: RunContext) -> dict[str, Any]:
    """version() equals the one recorded before the upgrade; facts equal the snapshot taken before the stop
    (or the one this rollback took before stopping a cluster clients had used; or the backup's, after an
    accepted lossy restore)."""
    up = ctx.upgrade_run
    plan_ = recorded_plan(up)
    if plan_ is None:
        return {"verified": False, "why": "the upgrade run changed nothing"}
    prev = on_old(ctx, plan_)
    num, text = server_version(prev)
    if num != plan_.old.version_num or text != plan_.old.version_text:
        raise CheckFailed(f"the cluster runs {text!r}, the recorded release was {plan_.old.version_text!r}")
    expected = ctx.state.load("facts_before_rollback") or up.load("facts_before")
    if ctx.state.happened("restored") and recovery.data_loss_risks(up):
        expected = (up.load("backup") or {}).get("facts", expected)
    if expected is None:
        return {"version": text, "facts_compared": False}
    content = any("md5" in t for db in expected["databases"].values() for t in db["tables"].values())
    now = facts.snapshot(prev.cluster, content=content)
    diffs = facts.compare(expected, now, same_extension_versions=True)
    if diffs:
        raise CheckFailed("after the rollback the facts differ from the snapshot: " + "; ".join(diffs[:20]))
    ctx.state.save("facts_after", now)
    return {"version": text, "facts_compared": True, "tables": facts.table_count(now)}


def refresh_tviews(ctx: RunContext) -> int:
    """Every TVIEW refreshed (force) on the previous release."""
    plan_ = recorded_plan(ctx.upgrade_run)
    if plan_ is None:
        return 0
    prev = on_old(ctx, plan_)
    return int(entities.refresh_all(prev, prev.cluster, plan_.databases))


def open_to_clients(ctx: RunContext) -> list[str]:
    """Gives back the logins the upgrade run (and this run) blocked."""
    up = ctx.upgrade_run
    plan_ = recorded_plan(up)
    roles = sorted(set(up.load("blocked_roles", [])) | set(ctx.state.load("blocked_roles", [])))
    if plan_ is not None and roles:
        gate_for(on_old(ctx, plan_).cluster, ctx.host).unblock(roles)
    ctx.state.record("opened", roles=roles)
    return roles
