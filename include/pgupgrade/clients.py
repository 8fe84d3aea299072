"""Client sessions around an outage, for every runbook: block logins (through the cluster's ClientGate), wait
for clients to leave, terminate whoever is left when the cutover starts."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pgupgrade import services
from pgupgrade.context import RunContext
from pgupgrade.entities import queue_empty
from pgupgrade.errors import CheckFailed
from pgupgrade.gates import gate_for
from pgupgrade.sql import connect, scalar_named

log = logging.getLogger(__name__)


def block_logins(ctx: RunContext) -> list[str]:
    roles = sorted(set(ctx.state.load("blocked_roles", [])) | set(gate_for(ctx.cluster, ctx.host).block()))
    ctx.state.save("blocked_roles", roles)
    ctx.state.record("logins_blocked", roles=roles)
    return roles


def clients_gone(ctx: RunContext) -> bool:
    """Sensor poke: no client sessions left, or the grace period (terminate_after_s) is over — the cutover then
    terminates whoever is left as its first act, so the clients' outage starts inside one task."""
    sessions = gate_for(ctx.cluster, ctx.host).sessions()
    if not sessions:
        return True
    grace = ctx.params["terminate_after_s"]
    blocked = ctx.state.first("logins_blocked")
    since = dt.datetime.fromisoformat(blocked["at"]) if blocked else dt.datetime.now(dt.UTC)
    waited = (dt.datetime.now(dt.UTC) - since).total_seconds()
    log.info(
        "%d client sessions left after %.0fs: %s",
        len(sessions),
        waited,
        ", ".join(f"{s['usename']}@{s['datname']} pid {s['pid']}" for s in sessions[:10]),
    )
    if grace >= 0 and waited >= grace:
        log.warning(
            "%d client sessions left after the %ss grace period: the cutover terminates them", len(sessions), grace
        )
        return True
    return False


def terminate_clients(ctx: RunContext, databases: list[str]) -> dict[str, Any]:
    """First step of the cutover: a checkpoint while clients still work, then the cluster restarted where only
    this run reaches it — every session left after the grace period ends, whatever role it uses (the tool's own
    included), and none comes back until the cluster opens — then wait (bounded by queue_wait_timeout_s) until
    the extension's queue is empty."""
    with connect(ctx.cluster) as conn:
        scalar_named(conn, "checkpoint")  # the shutdown checkpoint then has little left to write
    ctx.state.record("cutover_started")
    left = gate_for(ctx.cluster, ctx.host).sessions()
    if left and ctx.params["terminate_after_s"] < 0:
        raise CheckFailed("client sessions are connected and terminate_after_s is -1 (never terminate)")
    private = services.restart_private(ctx)
    if left:
        ctx.state.record("clients_terminated", count=len(left))
        log.warning("the restart ended %d client sessions", len(left))
    deadline = time.monotonic() + ctx.params["queue_wait_timeout_s"]
    while not queue_empty(ctx, databases, private):
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"the queue is not empty after queue_wait_timeout_s={ctx.params['queue_wait_timeout_s']}s"
            )
        time.sleep(0.1)
    return {"terminated": len(left)}
