"""The cutover of a major upgrade: the outage-critical steps, run in one task process (``cutover_steps``) so that
no task hand-off lengthens the outage; each step journals before it acts and is reported under its own name."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pgupgrade import archiving, checks, config, facts, identity, outage, registration, services, versions
from pgupgrade.clients import terminate_clients
from pgupgrade.cluster import service_for
from pgupgrade.context import RunContext
from pgupgrade.entities import snapshot_before
from pgupgrade.errors import CheckFailed, CommandError, UnsafeState
from pgupgrade.gates import gate_for
from pgupgrade.major import standbys, transfer
from pgupgrade.major.fields import target_major
from pgupgrade.major.model import MajorPlan, Method
from pgupgrade.major.transfer import new_cluster, socket_for
from pgupgrade.scratch import exists
from pgupgrade.services import stop_old
from pgupgrade.sql import connect, fetch_named, scalar_named

log = logging.getLogger(__name__)


def _require_new_cluster(ctx: RunContext) -> None:
    if not ctx.state.happened("new_initdb"):
        raise UnsafeState("init_new has not run for this run: no freshly initialised new cluster to fill")


def run_pg_upgrade(ctx: RunContext) -> dict[str, Any]:
    plan_ = ctx.plan(MajorPlan)
    old, host = ctx.cluster, ctx.host
    ctx.state.refuse_if(
        "transfer_started",
        "pg_upgrade already ran (or began) for this run; refusing to run it "
        "twice on a half-built directory: trigger the rollback DAG",
    )
    _require_new_cluster(ctx)
    new_inst = versions.inspect(plan_.new.bindir, host)
    new_datadir = plan_.new.datadir
    work = plan_.work_dir
    sock = services.make_socket_dir(host, socket_for(plan_, "sock"), old.os_user)
    argv = transfer.pg_upgrade_argv(
        old,
        new_inst,
        new_datadir,
        mode=plan_.mode,
        jobs=ctx.params["jobs"],
        socket_dir=sock,
        check=False,
        old_port=old.port,
        new_port=old.port + 1,
    )
    ctx.state.record("transfer_started", method="pg_upgrade", mode=plan_.transfer_mode)
    try:
        res = transfer.run_pg_upgrade(argv, host, old.os_user, work, timeout=24 * 3600)
    except CommandError:
        ctx.state.save("pg_upgrade_logs", transfer.output_logs(host, new_datadir, old.os_user))
        raise
    ctx.state.record("transfer_done", seconds=round(res.duration_s, 3))
    return {"seconds": res.duration_s, "stdout_tail": res.stdout[-3000:]}


def run_dump_restore(ctx: RunContext) -> dict[str, Any]:
    plan_ = ctx.plan(MajorPlan)
    old, host = ctx.cluster, ctx.host
    ctx.state.refuse_if("transfer_started", "dump/restore already began for this run; trigger the rollback DAG")
    new_inst = versions.inspect(plan_.new.bindir, host)
    work = plan_.work_dir
    new_private = new_cluster(ctx, plan_, private=True)
    _require_new_cluster(ctx)
    ctx.state.record("transfer_started", method="dump_restore")
    started = time.monotonic()
    # The old cluster normally still runs here with logins blocked and no client left (the cutover dumps before
    # it stops the old one); a run that finds it stopped starts it where no client can reach it.
    source = services.old_now(ctx)
    if ctx.state.happened("old_stop_requested"):
        source = services.private_cluster(old, old.datadir, old.bindir, socket_for(plan_, "old-sock"), host)
        services.start_private(source, host, source.host)
    try:
        services.start_private(new_private, host, new_private.host)
        dump_dir = f"{work}/dump"
        host.run(["rm", "-rf", "--", dump_dir], user=old.os_user)
        transfer.dump_restore(source, new_private, host, dump_dir, plan_.databases, ctx.params["jobs"], new_inst)
        host.run(["rm", "-rf", "--", dump_dir], user=old.os_user)
    finally:
        if ctx.state.happened("old_stop_requested"):
            service_for(source, host).stop("fast")
        service_for(new_private, host).stop("fast")
    ctx.state.record("transfer_done", seconds=round(time.monotonic() - started, 3))
    return {"seconds": time.monotonic() - started}


def configure_new(ctx: RunContext) -> dict[str, Any]:
    plan_ = ctx.plan(MajorPlan)
    new_inst = versions.inspect(plan_.new.bindir, ctx.host)
    from_major = versions.Version.parse(plan_.old.version).major
    if ctx.state.happened("config_carried"):
        return {"already": True}
    carried = config.carry_config(ctx.cluster, from_major, new_inst, plan_.new.datadir, ctx.host)
    ctx.state.record(
        "config_carried", dropped=carried.dropped, rewritten=carried.rewritten, files=carried.files, dirs=carried.dirs
    )
    return carried.as_dict()


def start_new_private(ctx: RunContext) -> None:
    plan_ = ctx.plan(MajorPlan)
    new_private = new_cluster(ctx, plan_, private=True)
    ctx.state.record("new_started")  # before the first start: from here the old cluster may be unusable (link)
    services.start_private(new_private, ctx.host, new_private.host)
    control = ctx.host.run([new_private.bin("pg_controldata"), "-D", new_private.datadir], user=new_private.os_user)
    ctx.state.record("new_identified", system_identifier=identity.controldata_identifier(control.stdout))


def update_extensions(ctx: RunContext) -> dict[str, Any]:
    plan_ = ctx.plan(MajorPlan)
    new_private = new_cluster(ctx, plan_, private=True)
    script = f"{plan_.work_dir}/update_extensions.sql"
    ran = False
    if exists(ctx.host, script, ctx.cluster.os_user):
        ctx.host.run(
            [new_private.bin("psql"), "-X", "-w", "-v", "ON_ERROR_STOP=1", "-f", script],
            user=ctx.cluster.os_user,
            env=new_private.libpq_env("postgres"),
        )
        ran = True
    before = ctx.state.load("facts_before")["extension"]
    result: dict[str, Any] = {"update_extensions_sql": ran, "databases": {}}
    for db, prev in before.items():
        with connect(new_private, db) as conn:
            version = ctx.profile.reported_version(conn)
            rows = len(ctx.profile.metadata_rows(conn))
            problems = ctx.profile.problems(conn)
            not_firing = ctx.profile.trigger_fires(conn)
        disabled = [
            r
            for r in checks.health(new_private, [db], ctx.profile)
            if r["check"].startswith("no disabled triggers") and not r["ok"]
        ]
        errors = []
        if rows != prev["metadata_rows"]:
            errors.append(f"{prev['metadata_rows']} metadata rows before, {rows} after")
        errors += problems + not_firing + [r["detail"] for r in disabled]
        if errors:
            raise CheckFailed(f"{db}: {ctx.profile.extname} after the upgrade: " + "; ".join(errors))
        result["databases"][db] = {"version": version, "metadata_rows": rows}
    return result


def validate_facts(ctx: RunContext) -> dict[str, Any]:
    plan_ = ctx.plan(MajorPlan)
    new_private = new_cluster(ctx, plan_, private=True)
    before = ctx.state.load("facts_before")
    after = facts.snapshot(new_private, content=ctx.params["verify_content"])
    ctx.state.save("facts_after", after)
    diffs = facts.compare(before, after)
    if diffs:
        raise CheckFailed("facts differ after the upgrade: " + "; ".join(diffs[:20]))
    if versions.Version.from_num(after["server_version_num"]).major != target_major(ctx):
        raise CheckFailed(f"new cluster runs {after['server_version']}, not {target_major(ctx)}")
    return {"tables": facts.table_count(after), "server_version": after["server_version"]}


def health_check(ctx: RunContext) -> list[dict[str, Any]]:
    plan_ = ctx.plan(MajorPlan)
    new_private = new_cluster(ctx, plan_, private=True)
    rows = checks.health(new_private, plan_.databases, ctx.profile)
    failed = [r for r in rows if not r["ok"] and r["check"] != "queue empty"]
    if failed:
        raise CheckFailed(
            "health check failed: " + "; ".join(f"{r['database']}: {r['check']} ({r['detail']})" for r in failed)
        )
    return rows


def register_new(ctx: RunContext, plan_: MajorPlan) -> None:
    """The stopped new cluster registered as its service expects (Debian's /etc/postgresql layout, the old
    cluster moved to another port; systemd units switched): ``registration``, journaled for the rollback."""
    registration.register(
        ctx.state,
        ctx.cluster,
        ctx.host,
        new_major=versions.Version.parse(plan_.new.version).major,
        new_datadir=plan_.new.datadir,
        old_port=plan_.old.port,
        socket_dirs=plan_.old.socket_dirs,
        work_dir=plan_.work_dir,
        carried=ctx.state.first("config_carried") or {},
    )


def open_to_clients(ctx: RunContext) -> None:
    """Restart the new cluster where clients reach it (old port and sockets), then give logins back."""
    plan_ = ctx.plan(MajorPlan)
    private = new_cluster(ctx, plan_, private=True)
    public = new_cluster(ctx, plan_, private=False)
    archiving.upgrade_stanza(ctx, private)  # pgBackRest: one-way, so only now that every validation passed
    service_for(private, ctx.host).stop("fast")
    register_new(ctx, plan_)
    ctx.state.record("new_public_start")
    service_for(public, ctx.host).start()
    recorded = (ctx.state.first("new_identified") or {}).get("system_identifier")
    with connect(public) as conn:
        served = scalar_named(conn, "system-identifier")
        if recorded and served != recorded:  # the server on the old port is not the cluster this run built
            raise UnsafeState(
                f"the server now on port {public.port} has system identifier {served}, not the new cluster's "
                f"{recorded} (pg_controldata of {public.datadir}); logins stay blocked"
            )
        lsn = fetch_named(conn, "wal-position")[0]["lsn"]  # a rollback counts the WAL written after this
    roles = ctx.state.load("blocked_roles", [])
    gate_for(public, ctx.host).unblock(roles)
    ctx.state.record("opened", roles=roles, wal_lsn=lsn)
    outage.release_slot(ctx)


def terminate(ctx: RunContext) -> dict[str, Any]:
    return terminate_clients(ctx, ctx.plan(MajorPlan).databases)


def snapshot_facts(ctx: RunContext) -> dict[str, Any]:
    return snapshot_before(ctx, ctx.plan(MajorPlan).databases)


Step = tuple[str, Callable[[RunContext], Any]]


def cutover_steps(method: Method) -> list[Step]:
    """The outage-critical section, run in one task process so no task hand-off lengthens the outage: every
    step is still journaled (and can be failed on purpose) under its own name."""
    # the standbys stop after their primary (they receive its shutdown checkpoint: pgupgrade.major.standbys)
    stop: list[Step] = [("stop_old", stop_old), ("stop_standbys", standbys.stop_standbys)]
    # pg_upgrade needs the old cluster stopped; dump/restore reads it while it still runs (logins blocked, no
    # client left), which saves a stop and a private start inside the outage
    moves: list[Step] = (
        [*stop, ("pg_upgrade", run_pg_upgrade), ("sync_standbys", standbys.sync_standbys)]
        if method == Method.PG_UPGRADE
        else [("dump_restore", run_dump_restore), *stop]
    )
    return [
        ("terminate_clients", terminate),
        ("snapshot_facts", snapshot_facts),
        *moves,
        ("configure_new", configure_new),
        ("start_new_private", start_new_private),
        ("reserve_standby_wal", standbys.reserve_wal),
        ("update_extensions", update_extensions),
        ("validate_facts", validate_facts),
        ("health_check", health_check),
        ("open_to_clients", open_to_clients),
    ]
