"""Preparation before the outage: the run's backup, the optional rehearsal on a scratch copy, and the new
cluster initialised (initdb matching the old one) so that the outage holds only the transfer."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from pgupgrade import backup, facts, services, versions
from pgupgrade.cluster import service_for
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed
from pgupgrade.major import transfer
from pgupgrade.major.model import MajorPlan
from pgupgrade.major.transfer import set_preload, socket_for
from pgupgrade.scratch import exists

log = logging.getLogger(__name__)


def take_backup(ctx: RunContext) -> dict[str, Any]:
    """The run's verified backup; link/swap: also the base backup of the way back (``backup.needs_base``)."""
    plan_ = ctx.plan(MajorPlan)
    base = backup.needs_base(plan_.method, plan_.transfer_mode)
    return backup.take_backup(ctx, plan_.backup_dir, plan_.databases, base=base)


def init_new(ctx: RunContext) -> dict[str, Any]:
    """initdb of the new cluster (matching the old one) and the preload libraries it needs — before the outage,
    so the outage holds only the transfer. Refuses a non-empty directory and a second initdb in one run."""
    plan_ = ctx.plan(MajorPlan)
    ctx.state.refuse_if("new_initdb", "the new cluster was already initialised by this run; trigger the rollback DAG")
    old, host = ctx.cluster, ctx.host
    new_inst = versions.inspect(plan_.new.bindir, host)
    new_datadir = plan_.new.datadir
    ctx.state.record("new_initdb", datadir=new_datadir)
    transfer.prepare_new_cluster(old, new_inst, new_datadir, plan_.initdb, host)
    if plan_.shared_preload_libraries:
        set_preload(host, new_datadir, plan_.shared_preload_libraries, old.os_user)
    return {"datadir": new_datadir, "version": str(new_inst.version)}


def rehearsal(ctx: RunContext) -> dict[str, Any]:
    """The seed's "test the upgrade on a dev database first", automated: the backup restored into a scratch
    cluster of the old version, the planned upgrade run on it, facts compared. Production is not touched."""
    plan_ = ctx.plan(MajorPlan)
    if not ctx.params["rehearsal"]:
        return {"rehearsal": "not requested"}
    from pgupgrade.scratch import create_cluster

    old, host = ctx.cluster, ctx.host
    manifest = ctx.state.load("backup")
    root = f"{plan_.work_dir}/rehearsal"
    host.run(["rm", "-rf", "--", root], user=old.os_user)
    old_inst = versions.inspect(old.bindir, host)
    new_inst = versions.inspect(plan_.new.bindir, host)
    options = plan_.initdb
    preload = (
        {"shared_preload_libraries": f"'{plan_.shared_preload_libraries}'"} if plan_.shared_preload_libraries else {}
    )
    started = time.monotonic()
    sock_old, sock_new = socket_for(plan_, "rehearsal-old"), socket_for(plan_, "rehearsal-new")
    scratch_old = create_cluster(
        old_inst,
        f"{root}/old",
        name="rehearsal-old",
        port=old.port + 2,
        socket_dir=sock_old,
        os_user=old.os_user,
        options=options,
        settings=preload,
        host=host,
    )
    scratch_new = services.private_cluster(
        replace(scratch_old, name="rehearsal-new", reach=None), f"{root}/new", new_inst.bindir, sock_new, host
    )
    try:
        backup.LOGICAL.restore(scratch_old, host, manifest, jobs=ctx.params["jobs"])
        before = facts.snapshot(scratch_old)
        if plan_.method == "pg_upgrade":
            service_for(scratch_old, host).stop("fast")
            transfer.prepare_new_cluster(old, new_inst, scratch_new.datadir, options, host)
            if preload:
                set_preload(host, scratch_new.datadir, plan_.shared_preload_libraries, old.os_user)
            argv = transfer.pg_upgrade_argv(
                scratch_old,
                new_inst,
                scratch_new.datadir,
                mode=plan_.mode,
                jobs=ctx.params["jobs"],
                socket_dir=sock_old,
                check=False,
                old_port=scratch_old.port,
                new_port=scratch_old.port + 1,
            )
            transfer.run_pg_upgrade(argv, host, old.os_user, f"{root}/work", timeout=24 * 3600)
        else:
            transfer.prepare_new_cluster(old, new_inst, scratch_new.datadir, options, host)
            services.start_private(scratch_new, host, sock_new)
            transfer.dump_restore(
                scratch_old, scratch_new, host, f"{root}/dump", plan_.databases, ctx.params["jobs"], new_inst
            )
            service_for(scratch_new, host).stop("fast")
        services.start_private(scratch_new, host, sock_new)
        diffs = facts.compare(before, facts.snapshot(scratch_new))
        if diffs:
            raise CheckFailed("rehearsal: facts differ after the upgrade: " + "; ".join(diffs[:10]))
        return {
            "rehearsal": "passed",
            "seconds": round(time.monotonic() - started, 3),
            "tables": facts.table_count(before),
        }
    finally:
        for c in (scratch_new, scratch_old):
            if exists(host, f"{c.datadir}/postmaster.pid", old.os_user):
                service_for(c, host).stop("immediate")
        host.run(["rm", "-rf", "--", root, sock_old, sock_new], user=old.os_user, check=False)
