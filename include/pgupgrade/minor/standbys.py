"""Rolling minor upgrade: the listed standbys on the target release first (PostgreSQL's release notes advise
standbys before their primary), one at a time, while the primary serves; the rollback puts them back last, after
the primary (an older standby may not replay a newer primary's WAL).

Installer ``bindir`` (the plan checked each standby: service ``pg_ctl``, ``new_bindir`` on its host is the
target). Each switch is proven before and after: the standby is the one in its data directory on its host with the
primary's system identifier, in recovery (``identity.verify``) before it is stopped; after its start from the
other bin directory it runs that release and streams from the primary again, its replay past the primary's WAL
position at its start. Journal: ``standby_switch`` before acting, ``standby_switched`` after.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from pgupgrade import identity, topology, versions
from pgupgrade.cluster import Cluster, service_for
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed
from pgupgrade.minor.plan import MinorPlan
from pgupgrade.minor.rollback import recorded_plan
from pgupgrade.sql import connect, scalar_named
from pgupgrade.state import RunJournal, first_where

log = logging.getLogger(__name__)


def _listed(ctx: RunContext) -> dict[str, tuple[Cluster, Host]]:
    return {c.name: (c, h) for c, h in ctx.standbys()}


def upgrade_standbys(ctx: RunContext) -> list[dict[str, Any]]:
    """Every standby the plan proved, on the target release, one at a time (bindir installer; the others leave
    them, as the plan warned)."""
    plan_ = ctx.plan(MinorPlan)
    if not plan_.rolls_standbys:
        return []
    listed = _listed(ctx)
    done = []
    for s in plan_.topology["standbys"]:
        standby, host = listed[s["name"]]
        if first_where(ctx.state, "standby_switched", name=s["name"], to=plan_.new.bindir):
            continue  # a retried task: this one is on the target already
        done.append(
            switch(ctx.state, ctx.cluster, standby, host, s, plan_.topology["system_identifier"],
                   plan_.new.bindir, plan_.new.version)
        )  # fmt: skip
    return done


def standbys_back(ctx: RunContext) -> list[dict[str, Any]]:
    """The rollback's last step: every standby the upgrade run switched, back to its previous bin directory."""
    up = ctx.upgrade_run
    plan_ = recorded_plan(up)
    if plan_ is None or not plan_.topology:
        return []
    listed = _listed(ctx)
    done = []
    for s in plan_.topology["standbys"]:
        went = first_where(up, "standby_switch", name=s["name"])
        if went is None or first_where(ctx.state, "standby_switched", name=s["name"], to=went["previous"]):
            continue
        standby, host = listed[s["name"]]
        done.append(
            switch(ctx.state, ctx.cluster, replace(standby, bindir=went["new"]), host, s,
                   plan_.topology["system_identifier"], went["previous"], plan_.old.version)
        )  # fmt: skip
    return done


def switch(
    journal: RunJournal,
    primary: Cluster,
    standby: Cluster,
    host: Host,
    planned: dict[str, Any],
    system_identifier: str,
    bindir: str,
    release: str,
) -> dict[str, Any]:
    """One standby restarted from ``bindir`` (which must be ``release``), proven streaming again."""
    started = time.monotonic()
    was = service_for(standby, host)
    if was.is_running():
        identity.verify(standby, host, expect_identifier=system_identifier, standby=True)
    got = versions.inspect(bindir, host).version
    if str(got) != release:
        raise CheckFailed(f"standby {standby.name}: {bindir}/postgres on {host.name} is {got}, not {release}")
    journal.record("standby_switch", name=standby.name, previous=standby.bindir, new=bindir)
    if was.is_running():
        was.stop("fast")
    moved = replace(standby, bindir=bindir)
    with connect(primary) as conn:
        since = str(scalar_named(conn, "wal-position"))
    service_for(moved, host).start()
    with connect(moved) as conn:
        runs = str(versions.Version.from_num(int(scalar_named(conn, "server-version-num"))))
    if runs != release:
        raise CheckFailed(f"standby {standby.name} runs {runs} after its restart from {bindir}, not {release}")
    lag = topology.caught_up(primary, planned["streams_as"], since)
    seconds = round(time.monotonic() - started, 3)
    journal.record("standby_switched", name=standby.name, to=bindir, release=release, seconds=seconds)
    log.info("standby %s on %s from %s, streaming again (%.1fs)", standby.name, release, bindir, seconds)
    return {"name": standby.name, "release": release, "bindir": bindir, "seconds": seconds, "replay_lag_bytes": lag}
