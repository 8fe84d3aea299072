"""The outage-critical section, run in one task process (``cutover_steps``): clients terminated, facts
snapshot, clean stop, the target's binaries put in place, start, validation, logins given back. Every
destructive step journals before it acts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pgupgrade import checks, clients, entities, facts, outage, services, versions
from pgupgrade.cluster import service_for
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, CommandError, UnsafeState
from pgupgrade.gates import gate_for
from pgupgrade.minor import installers
from pgupgrade.minor.fields import Installer
from pgupgrade.minor.plan import MinorPlan, on_new, on_old, server_version
from pgupgrade.minor.prepare import fail_on
from pgupgrade.scratch import log_tail
from pgupgrade.sql import connect

Step = tuple[str, Callable[[RunContext], Any]]


def terminate_clients(ctx: RunContext) -> dict[str, Any]:
    """Whoever is left after the grace period is terminated; then waits for the queue to be empty."""
    plan_ = ctx.plan(MinorPlan)
    return clients.terminate_clients(on_old(ctx, plan_), plan_.databases)


def snapshot_facts(ctx: RunContext) -> dict[str, Any]:
    """Row counts, WAL position and the extension's facts, saved as facts_before."""
    plan_ = ctx.plan(MinorPlan)
    return entities.snapshot_before(on_old(ctx, plan_), plan_.databases)


def stop_server(ctx: RunContext) -> None:
    """Clean (fast) shutdown, confirmed down (journal: old_stop_requested, old_stopped)."""
    services.stop_old(on_old(ctx, ctx.plan(MinorPlan)))


# -- install and start ------------------------------------------------------------------------------------


def stop_if_started(ctx: RunContext, why: str) -> bool:
    """Package scripts (Debian's postinst on systemd hosts) or an admin command may start the cluster: stop it
    again so that the run starts it itself and checks what it starts."""
    svc = service_for(ctx.cluster, ctx.host)
    if installers.postmaster_pid(ctx.host, ctx.cluster) is not None and svc.is_running():
        ctx.state.record("stopped_again", why=why)
        svc.stop("fast")
        return True
    return False


def install(ctx: RunContext) -> dict[str, Any]:
    """Puts the target release's binaries in place: nothing to install for bindir (the switch is recorded),
    apt-get install of the exact package versions, or the admin's command."""
    plan_ = ctx.plan(MinorPlan)
    installer, host = plan_.installer, ctx.host
    old_ctx, new_ctx = on_old(ctx, plan_), on_new(ctx, plan_)
    if not ctx.state.happened("old_stopped") or service_for(old_ctx.cluster, host).is_running():
        raise UnsafeState("refusing to change the binaries of a running server: the stop step did not finish")
    result: dict[str, Any] = {"installer": installer.value}
    if installer is Installer.BINDIR:
        ctx.state.record("bindir_switch", previous=plan_.old.bindir, new=plan_.new.bindir)
    elif installer is Installer.APT:
        apt = plan_.apt_pins()
        ctx.state.record(
            "install_started",
            installer="apt",
            packages=apt.packages,
            previous_packages=apt.previous_packages,
            previous_version=plan_.old.version,
        )
        res = installers.apt_install(host, apt.packages, allow_downgrades=ctx.params["allow_downgrade"])
        ctx.state.record("install_done", seconds=round(res.duration_s, 3))
        result["stopped_again"] = stop_if_started(new_ctx, "the package scripts started the cluster")
        result["apt_output_tail"] = res.stdout[-3000:]
    else:
        command = plan_.install_command()
        ctx.state.record(
            "install_started",
            installer="command",
            argv=command.install,
            previous_version=plan_.old.version,
        )
        res = installers.run_install_command(host, command.argv, plan_.new.version)
        ctx.state.record("install_done", seconds=round(res.duration_s, 3))
        result["stopped_again"] = stop_if_started(new_ctx, "the install command started the cluster")
        result["output_tail"] = (res.stdout + res.stderr)[-3000:]
    got = versions.inspect(plan_.new.bindir, host).version
    if str(got) != plan_.new.version:
        raise CheckFailed(
            f"after the install, {plan_.new.bindir}/postgres is PostgreSQL {got}, not the target {plan_.new.version}"
        )
    result["binaries"] = str(got)
    return result


def start(ctx: RunContext, what: str, *, private: bool = False) -> None:
    """Starts the cluster with its bin directory (``private``: where only this run reaches it); a start that
    fails raises CheckFailed with the server log's tail."""
    svc = service_for(ctx.cluster, ctx.host)
    try:
        if private:
            services.start_private(ctx.cluster, ctx.host, ctx.cluster.host)
        else:
            svc.start()
    except (CommandError, CheckFailed) as exc:
        tail = log_tail(ctx.host, svc, 30)
        raise CheckFailed(
            f"{what} did not start from {ctx.cluster.bindir}: {exc}" + (f"\nserver log:\n{tail}" if tail else "")
        ) from exc


def validating(ctx: RunContext) -> RunContext:
    """The cluster on the target release where only this run reaches it, until it opens: no client, whatever
    role it uses, changes what the validation compares."""
    new_ctx = on_new(ctx, ctx.plan(MinorPlan))
    return replace(new_ctx, cluster=services.cutover_private(new_ctx.cluster, ctx.host))


def start_new(ctx: RunContext) -> dict[str, Any]:
    """Starts the cluster on the target release where only this run reaches it (pg_isready polling, no
    sleeps); the extension must load and report the version it reported before."""
    plan_ = ctx.plan(MinorPlan)
    new_ctx = validating(ctx)
    ctx.state.record("new_start_requested", bindir=plan_.new.bindir)
    start(new_ctx, f"PostgreSQL {plan_.new.version}", private=True)
    _num_now, text = server_version(new_ctx)
    ext_before = (ctx.state.load("versions_before") or {}).get("extension", {})
    loaded: dict[str, str] = {}
    for db, version in ext_before.items():
        with connect(new_ctx.cluster, db) as conn:
            loaded[db] = ctx.profile.reported_version(conn)
        if loaded[db] != version:
            raise CheckFailed(f"{db}: {ctx.profile.extname} reports {loaded[db]} after the restart, {version} before")
    return {"version": text, "extension": loaded}


# -- validate and open ------------------------------------------------------------------------------------


def validate_facts(ctx: RunContext) -> dict[str, Any]:
    """version() is the target; databases, roles, row counts (and checksums if asked), extension versions and
    the extension's metadata count equal the snapshot taken before the stop."""
    plan_ = ctx.plan(MinorPlan)
    new_ctx = validating(ctx)
    facts_before = ctx.state.load("facts_before")
    now = facts.snapshot(new_ctx.cluster, content=ctx.params["verify_content"])
    now["extension"] = entities.extension_facts(new_ctx.cluster, plan_.databases, new_ctx)
    ctx.state.save("facts_after", now)
    if now["server_version_num"] != plan_.new.version_num:
        raise CheckFailed(f"the server runs {now['server_version']}, not the target {plan_.new.version}")
    diffs = facts.compare(facts_before, now, same_extension_versions=True)
    for db, ext in facts_before.get("extension", {}).items():
        rows_now = now["extension"].get(db, {}).get("metadata_rows")
        if rows_now != ext["metadata_rows"]:
            diffs.append(f"{db}: {ext['metadata_rows']} {ctx.profile.metadata_table} rows before, {rows_now} after")
    if diffs:
        raise CheckFailed("facts differ after the upgrade: " + "; ".join(diffs[:20]))
    return {"server_version": now["server_version"], "tables": facts.table_count(now)}


def health_check(ctx: RunContext) -> list[dict[str, Any]]:
    """health-check.sql on the target release."""
    plan_ = ctx.plan(MinorPlan)
    rows: list[dict[str, Any]] = list(checks.health(validating(ctx).cluster, plan_.databases, ctx.profile))
    fail_on(rows, "health check failed after the upgrade")
    return rows


def smoke_test(ctx: RunContext) -> dict[str, Any]:
    """Per extension database: a change to each backing table reaches the queue (inside a transaction that is
    rolled back), no metadata row has last_error, the queue is empty."""
    plan_ = ctx.plan(MinorPlan)
    new_ctx = validating(ctx)
    out: dict[str, Any] = {}
    errors: list[str] = []
    for db in checks.extension_databases(new_ctx.cluster, plan_.databases, ctx.profile):
        with connect(new_ctx.cluster, db, autocommit=True) as conn:
            not_firing = ctx.profile.trigger_fires(conn)
            problems = ctx.profile.problems(conn)
            queue = ctx.profile.queue_size(conn)
        errors += [f"{db}: {e}" for e in not_firing + problems]
        if queue:
            errors.append(f"{db}: {queue} entries in the queue")
        out[db] = {"triggers_fire": not not_firing, "problems": problems, "queue": queue}
    if errors:
        raise CheckFailed("smoke test failed: " + "; ".join(errors))
    return out


def open_to_clients(ctx: RunContext) -> list[str]:
    """Restarts the validated cluster where clients reach it, through its service; gives back the logins
    blocked before the outage."""
    plan_ = ctx.plan(MinorPlan)
    service_for(validating(ctx).cluster, ctx.host).stop("fast")
    ctx.state.record("new_public_start", bindir=plan_.new.bindir)
    public = on_new(ctx, plan_)
    start(public, f"PostgreSQL {plan_.new.version}")
    roles = ctx.state.load("blocked_roles", [])
    gate_for(public.cluster, ctx.host).unblock(roles)
    ctx.state.record("opened", roles=roles)
    outage.release_slot(ctx)
    return list(roles)


def cutover_steps() -> list[Step]:
    """The outage-critical section, run in one task process (as in the major upgrade): every step journaled
    under its own name."""
    return [
        ("terminate_clients", terminate_clients),
        ("snapshot_facts", snapshot_facts),
        ("stop_server", stop_server),
        ("install", install),
        ("start_new", start_new),
        ("validate_facts", validate_facts),
        ("health_check", health_check),
        ("smoke_test", smoke_test),
        ("open_to_clients", open_to_clients),
    ]
