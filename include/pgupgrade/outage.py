"""Bounded concurrent outages: how many clusters may be inside an outage at once, whichever runs they belong to.

An Airflow pool bounds single task instances, not the span from gating clients to opening, so a run would block
its clients and then queue for a pool slot. Instead a run takes an outage slot of the run store (one statement
in the control database) *before* it gates clients — waiting, while its clients are still served, when all are
taken — and gives it back when it opens to clients; after a failure, when it ends without a rollback, or when
its rollback ends (a failed rollback keeps it: the cluster may still be down and needs a person).
"""

from __future__ import annotations

import logging

from pgupgrade.context import RunContext

log = logging.getLogger(__name__)


def take_slot(ctx: RunContext, slots: int | None) -> bool:
    """Sensor poke: True once this run holds an outage slot (at once when ``slots`` is None: unbounded)."""
    if not slots:
        return True
    got = ctx.store.take_outage_slot(ctx.lock.key, ctx.dag_id, ctx.run_id, slots)
    if got is None:
        held = ", ".join(f"{s['dag_id']}/{s['run_id']}" for s in ctx.store.outage_slots())
        log.info("all %d outage slot(s) taken (%s): clients stay served while this run waits", slots, held)
        return False
    ctx.state.record("outage_slot_taken", slot=got, of=slots)
    return True


def release_slot(ctx: RunContext, dag_id: str | None = None, run_id: str | None = None) -> None:
    """Gives back the slot of this run (or of the upgrade run named), if it holds one."""
    got = ctx.store.release_outage_slot(dag_id or ctx.dag_id, run_id or ctx.run_id)
    if got is not None:
        log.info("outage slot %s released", got)
