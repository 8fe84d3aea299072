"""The extension's maintained entities (TVIEWs) and its queue, for every runbook: the queue drained, entity
facts and scan times, a forced refresh, and the facts snapshot taken before the stop."""

from __future__ import annotations

import logging
import time
from typing import Any

from pgupgrade import checks, facts, services
from pgupgrade.cluster import Cluster
from pgupgrade.context import RunContext
from pgupgrade.sql import connect, psql, scalar

log = logging.getLogger(__name__)


def queue_empty(ctx: RunContext, databases: list[str], cluster: Cluster | None = None) -> bool:
    """Whether the extension's queue is empty in every database (on ``cluster``, default the run's)."""
    cluster = cluster or ctx.cluster
    ext_dbs = checks.extension_databases(cluster, databases, ctx.profile)
    if not ext_dbs:
        log.info("%s is not installed in any database: nothing to wait for", ctx.profile.extname)
        return True
    sizes = checks.queue_sizes(cluster, ext_dbs, ctx.profile)
    log.info("queue sizes: %s", sizes)
    return not any(sizes.values())


def extension_facts(cluster: Cluster, databases: list[str], ctx: RunContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for db in checks.extension_databases(cluster, databases, ctx.profile):
        with connect(cluster, db) as conn:
            timings = {}
            for entity in ctx.profile.entities(conn):
                started = time.perf_counter()
                scalar(conn, psql.SQL("SELECT count(*) FROM {}").format(psql.Identifier(entity)))
                timings[entity] = time.perf_counter() - started
            out[db] = {
                "version": ctx.profile.installed_version(conn),
                "metadata_rows": len(ctx.profile.metadata_rows(conn)),
                "scan_s": timings,
            }
    return out


def refresh_all(ctx: RunContext, cluster: Cluster, databases: list[str]) -> int:
    n = 0
    for db in checks.extension_databases(cluster, databases, ctx.profile):
        with connect(cluster, db) as conn:
            for entity in ctx.profile.entities(conn):
                ctx.profile.refresh(conn, entity, force=True)
                n += 1
    return n


def snapshot_before(ctx: RunContext, databases: list[str]) -> dict[str, Any]:
    """The facts the validation compares against (the extension's entities included), saved as facts_before."""
    serving = services.old_now(ctx)  # privately, once the cutover restarted it there
    before = facts.snapshot(serving, content=ctx.params["verify_content"])
    before["extension"] = extension_facts(serving, databases, ctx)
    ctx.state.save("facts_before", before)
    return {"tables": facts.table_count(before), "wal_lsn": before["wal_lsn"]}
