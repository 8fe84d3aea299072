"""The cluster a run may act on: proven and locked before the plan, proven again before the old cluster stops."""

from __future__ import annotations

from typing import Any

from pgupgrade import identity
from pgupgrade.cluster import Cluster
from pgupgrade.context import RunContext
from pgupgrade.errors import PlanError
from pgupgrade.state import IsAlive


def take_cluster(ctx: RunContext, is_alive: IsAlive) -> str:
    """Proves the connection reaches the primary in ``pg_datadir`` on the runner's host, refuses the cluster that
    holds the run store, records the identity, then takes the cluster's lock. Changes nothing on the cluster."""
    proven = identity.verify(ctx.cluster, ctx.host)
    if ctx.store.keeps_state_on(proven["system_identifier"]):
        raise PlanError(
            f"cluster {ctx.cluster.name!r} (system identifier {proven['system_identifier']}) holds the control "
            "database this run journals to: an upgrade would stop the journal with the cluster. Move the control "
            "database to another cluster first."
        )
    lock = ctx.lock
    line = lock.acquire(ctx.dag_id, ctx.run_id, is_alive)
    ctx.state.save("identity", {**proven, "lock_key": lock.key})
    return f"{line}; proven: system identifier {proven['system_identifier']} in {proven['node']}:{proven['datadir']}"


def prove(ctx: RunContext, cluster: Cluster | None = None) -> dict[str, Any]:
    """Before a destructive step on the old cluster (where it serves now: ``cluster``, default the run's): the
    same cluster the plan proved (identifier recorded)."""
    recorded = ctx.state.load("identity") or {}
    return identity.verify(cluster or ctx.cluster, ctx.host, expect_identifier=recorded.get("system_identifier"))
