"""The primary's listed standbys through a major upgrade (each proven by the plan: ``pgupgrade.topology``).

Each standby gets a route in the plan (``standby_routes``, with why):

- ``rsync`` (link mode: PostgreSQL's documented way, pg_upgrade's "Upgrade streaming replication standby
  servers"). The primary stops first while its standbys still stream, so they receive its shutdown checkpoint;
  each standby stops once it replayed it, and "Latest checkpoint location" must then be equal on every node
  (``stop_standbys``; else the run fails and the rollback starts every node back). After pg_upgrade and before
  anything starts, the primary's host runs ``rsync --archive --delete --hard-links --size-only
  --no-inc-recursive`` of the old and new data directories to every standby host at once (over SSH as the OS
  user, with a timeout; ``sync_standbys``): the new directory arrives as hard links to the standby's own old
  files. Filters keep each standby's own top-level files (configuration, ``standby.signal``, logs, certificates)
  and its ``pg_replslot``: only PostgreSQL's data entries of the old directory follow the primary's (its
  ``global/pg_control`` becomes ``pg_control.old``, as pg_upgrade left the primary's). The new standby's
  configuration is then carried from its own old one (``config.carry_config`` on its host), plus
  ``standby.signal``.
- ``reclone`` (copy, clone, swap, dump/restore; tablespaces or an external ``pg_wal``; a data directory that does
  not mirror the primary's layout): stopped with the others, re-cloned after opening by ``pg_basebackup`` from
  the new primary on its host, outside the outage.

The new primary reserves WAL for them from its first start (``reserve_wal``): the old primary's physical slots
recreated, plus ``pgupgrade_standby_hold`` for standbys without one, dropped once every standby streams
(``release_wal``). After opening, ``start_standby`` (a mapped task per standby: ``to_start``) starts each on the
new major and proves it streams from the new primary.

Rollback (``standbys_back``, once the old primary serves again): a standby whose old directory is intact (an
rsync'd one that never started on the new major: its ``pg_control`` renamed back; a re-clone route's) starts and
must stream again. One that started on the new major (its files are hard links: replay changed the old ones
too), or does not stream again, is re-cloned from the old primary, its own top-level files kept. Journal:
``standby_stop_requested``/``standby_stopped``, ``standby_sync``/``standby_synced``, ``standby_new_start``/
``standby_streaming``; the rollback's ``standby_back``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

from psycopg2.extensions import make_dsn, parse_dsn

from pgupgrade import config, services, topology, versions
from pgupgrade.cluster import Cluster, parse_service, service_for
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, CommandError, ConfigError, PlanError, UnsafeState
from pgupgrade.major.model import MajorPlan, Method, TransferMode
from pgupgrade.major.transfer import new_cluster
from pgupgrade.scratch import exists, is_empty_dir
from pgupgrade.sql import connect, fetch_named, scalar_named
from pgupgrade.state import first_where

log = logging.getLogger(__name__)

# a data directory's top-level entries that PostgreSQL writes; anything else is the node's own
PG_ENTRIES = (
    "PG_VERSION", "base", "global", "pg_commit_ts", "pg_dynshmem", "pg_logical", "pg_multixact", "pg_notify",
    "pg_replslot", "pg_serial", "pg_snapshots", "pg_stat", "pg_stat_tmp", "pg_subtrans", "pg_tblspc",
    "pg_twophase", "pg_wal", "pg_xact", "postmaster.opts", "postmaster.pid", "backup_label", "backup_label.old",
    "tablespace_map", "tablespace_map.old", "current_logfiles",
)  # fmt: skip
HOLD_SLOT = "pgupgrade_standby_hold"
SYNC_TIMEOUT_S = 6 * 3600
REPLAY_TIMEOUT_S = 60
RESTART_STREAM_TIMEOUT_S = 120  # a restarted old standby that does not stream by then is re-cloned
_SSH_OPTIONS = "-o BatchMode=yes -o ConnectTimeout=15"


@dataclass(frozen=True)
class Route:
    """How one standby reaches the new major (the plan's ``standby_routes``)."""

    name: str
    how: str  # rsync | reclone
    why: str
    streams_as: str  # the name the primary streams to it under
    datadir: str  # its old data directory
    new_datadir: str
    root: str  # rsync: where the primary's common parent of old and new maps to on the standby host
    ssh: str | None = None  # rsync to another host: user@host (the primary's host logs in there)
    ssh_port: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- plan -------------------------------------------------------------------------------------------------------


def _cluster_wide_why(ctx: RunContext, method: Method, mode: TransferMode | None) -> str:
    """Why no standby can be rsynced ("" when they can)."""
    if method != Method.PG_UPGRADE:
        return "dump/restore writes other files than the old cluster's: re-cloned after opening"
    if mode != TransferMode.LINK:
        return f"{mode} mode: the new files are not hard links of the old ones: re-cloned after opening"
    with connect(ctx.cluster) as conn:
        spaces = [r["spcname"] for r in fetch_named(conn, "tablespaces")]
    if spaces:
        return f"tablespaces ({', '.join(spaces)}): re-cloned after opening, not rsynced"
    if ctx.host.run(["test", "-L", f"{ctx.cluster.datadir}/pg_wal"], check=False).exit_code == 0:
        return "pg_wal is outside the data directory: re-cloned after opening, not rsynced"
    return ""


def _layout(old_datadir: str, new_datadir: str) -> tuple[str, str, str]:
    """The common parent of the old and new data directories, and each relative to it (what a standby mirrors)."""
    common = os.path.commonpath([old_datadir, new_datadir])
    return common, os.path.relpath(old_datadir, common), os.path.relpath(new_datadir, common)


def _ssh_argv(dest: str, port: int) -> list[str]:
    return ["ssh", "-p", str(port), *_SSH_OPTIONS.split(), dest]


def plan_routes(
    ctx: RunContext, topo: dict[str, Any], new_inst: versions.Installation, new_datadir: str, method: Method,
    mode: TransferMode | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every listed standby's route, checked on its host (new binaries, service, new data directory, rsync and the
    primary's SSH login there); PlanError naming every problem, nothing stopped."""
    if not topo:
        return []
    old, host = ctx.cluster, ctx.host
    _, rel_old, rel_new = _layout(old.datadir, new_datadir)
    wide = _cluster_wide_why(ctx, method, mode)
    streams = {s["name"]: s["streams_as"] for s in topo["standbys"]}
    problems: list[str] = []
    with connect(old) as conn:
        sync = str(scalar_named(conn, "synchronous-standby-names"))
    if sync:
        problems.append(
            f"synchronous_standby_names = {sync!r}: the new primary would hold every commit until its synchronous "
            "standbys stream again, after opening; clear it for the upgrade (ALTER SYSTEM RESET, reload) and set it "
            "back once the standbys stream"
        )
    routes: list[Route] = []
    for standby, shost in ctx.standbys():
        where = f"standby {standby.name}"
        with connect(standby) as conn:
            cascading = [r["application_name"] for r in fetch_named(conn, "replication")]
        if cascading:
            problems.append(f"{where}: standbys stream from it (cascading: {', '.join(cascading)}): not handled")
            continue
        if parse_service(standby.service).kind != "pg_ctl":
            problems.append(f"{where}: service {standby.service}: only pg_ctl standbys are upgraded with the primary")
            continue
        try:
            inst = versions.inspect(new_inst.bindir, shost)
        except (CommandError, ConfigError) as exc:
            problems.append(f"{where}: no PostgreSQL {new_inst.major} at {new_inst.bindir} on {shost.name}: {exc}")
            continue
        if inst.major != new_inst.major:
            problems.append(f"{where}: {new_inst.bindir} on {shost.name} is {inst.version}, not {new_inst.major}")
            continue
        mirrored = standby.datadir.endswith(f"/{rel_old}")
        root = standby.datadir[: -len(rel_old) - 1] if mirrored else os.path.dirname(standby.datadir)
        new_dd = f"{root}/{rel_new}" if mirrored else f"{standby.datadir}_{new_inst.major}"
        if exists(shost, new_dd, standby.os_user) and not is_empty_dir(shost, new_dd, standby.os_user):
            problems.append(f"{where}: {new_dd} on {shost.name} exists and is not empty")
            continue
        why = wide or ("" if mirrored else f"{standby.datadir} does not end in {rel_old} as the primary's "
                       f"{old.datadir} does: re-cloned after opening, not rsynced")  # fmt: skip
        route = Route(standby.name, "reclone", why, streams[standby.name], standby.datadir, new_dd, root)
        if not why:
            route = replace(route, how="rsync", why="link mode: PostgreSQL's documented rsync, hard links")
            if standby.ssh_conn_id != old.ssh_conn_id:  # another host: the primary's host logs in there
                try:
                    dest, port = standby.ssh_destination()
                except ConfigError as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                route = replace(route, ssh=dest, ssh_port=port)
                login = host.run([*_ssh_argv(dest, port), "true"], user=old.os_user, check=False, timeout=60)
                if login.exit_code != 0:
                    problems.append(
                        f"{where}: the primary's host cannot log in to {dest} (port {port}) over SSH as "
                        f"{old.os_user} (key, known_hosts): {login.stderr.strip()[-300:]}"
                    )
            if shost.run(["rsync", "--version"], check=False).exit_code != 0:
                problems.append(f"{where}: rsync is not installed on {shost.name}")
        routes.append(route)
    if any(r.how == "rsync" for r in routes) and host.run(["rsync", "--version"], check=False).exit_code != 0:
        problems.append(f"rsync is not installed on the primary's host {host.name}")
    if problems:
        raise PlanError("; ".join(problems) + ". Nothing was stopped.")
    return [r.as_dict() for r in routes]


# -- cutover -----------------------------------------------------------------------------------------------------


def _routes(ctx: RunContext, plan_: MajorPlan) -> list[tuple[Route, Cluster, Host]]:
    if not plan_.standby_routes:
        return []
    listed = {c.name: (c, h) for c, h in ctx.standbys()}
    out = []
    for r in plan_.standby_routes:
        if r["name"] not in listed:
            raise ConfigError("postgres_conn_id", f"standby {r['name']} of the plan is no longer listed in standbys")
        out.append((Route(**r), *listed[r["name"]]))
    return out


def stop_standbys(ctx: RunContext) -> list[dict[str, Any]]:
    """After the primary's stop: each standby, once it replayed the primary's shutdown checkpoint, stopped; the
    checkpoint locations compared (CheckFailed when one differs: the rollback starts every node back)."""
    plan_ = ctx.plan(MajorPlan)
    routes = _routes(ctx, plan_)
    if not routes:
        return []
    control = services.controldata(ctx.cluster, ctx.host)  # the stopped primary's
    primary_at = control["Latest checkpoint location"]

    def stop(route: Route, standby: Cluster, shost: Host) -> dict[str, Any]:
        svc = service_for(standby, shost)
        ctx.state.record("standby_stop_requested", name=route.name)  # the rollback starts it back
        if route.how == "rsync" and svc.is_running():
            _wait_replayed(standby, primary_at, partial(_ship_wal, ctx, route, standby, control))
        svc.stop("fast")
        at = services.checkpoint_lsn(standby, shost)
        ctx.state.record("standby_stopped", name=route.name, checkpoint_lsn=at)
        return {"name": route.name, "checkpoint_lsn": at, "how": route.how}

    with ThreadPoolExecutor(max_workers=len(routes)) as pool:  # each waits for its own WAL retry
        out = list(pool.map(lambda t: stop(*t), routes))
    differ = [
        f"{o['name']} {o['checkpoint_lsn']}" for o in out if o["how"] == "rsync" and o["checkpoint_lsn"] != primary_at
    ]
    if differ:
        raise CheckFailed(
            f"Latest checkpoint location differs from the primary's {primary_at}: {', '.join(differ)}: a standby "
            "did not receive the primary's shutdown checkpoint; the rollback starts the old primary and every "
            "standby back"
        )
    return out


def _wait_replayed(standby: Cluster, lsn: str, ship: Callable[[str], None], timeout: float = REPLAY_TIMEOUT_S) -> None:
    """Until the standby has replayed the record at ``lsn``; if it has not at first sight, the WAL it lacks is
    shipped to it at once (``ship(its replay position)``): its primary is stopped, nothing more will stream."""
    started, shipped = time.monotonic(), False
    while True:
        with connect(standby) as conn:
            row = fetch_named(conn, "standby-replayed", {"lsn": lsn})[0]
        if row["replayed"]:
            return
        if not shipped:
            ship(str(row["replay_lsn"]))
            shipped = True
        if time.monotonic() > started + timeout:
            raise CheckFailed(f"standby {standby.name} has not replayed the primary's shutdown checkpoint {lsn}")
        time.sleep(0.2)


def wal_file(timeline: int, lsn: str, segment_bytes: int) -> str:
    """The name of the WAL segment file holding ``lsn`` on ``timeline`` (as pg_walfile_name)."""
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    segno = ((hi << 32) | lo) // segment_bytes
    per_id = 0x100000000 // segment_bytes
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def _ship_wal(ctx: RunContext, route: Route, standby: Cluster, control: dict[str, str], replay_lsn: str) -> None:
    """The WAL a standby could not stream — the cutover restarted the primary where only this run reaches it, so
    its standbys lost it then — copied from the stopped primary's pg_wal into the standby's: its startup process
    reads pg_wal while streaming fails (every ``wal_retrieve_retry_interval``, 5 s by default: the standbys wait
    for it at once, each in its own thread). Only the segments from its replay position to the primary's shutdown
    checkpoint (and the next, a record may cross into it)."""
    tli, size = int(control["Latest checkpoint's TimeLineID"]), int(control["Bytes per WAL segment"])
    first, last = wal_file(tli, replay_lsn, size), wal_file(tli, control["Latest checkpoint location"], size)
    wal = f"{ctx.cluster.datadir}/pg_wal"
    names = sorted(n for n in ctx.host.run(["ls", "-1", "--", wal], user=ctx.cluster.os_user).stdout.split()
                   if re.fullmatch(r"[0-9A-F]{24}", n) and first <= n)  # fmt: skip
    names = names[: names.index(last) + 2] if last in names else names
    argv = [
        "rsync",
        "--archive",
        *_transport(route),
        *[f"{wal}/{n}" for n in names],
        _dest(route, f"{standby.datadir}/pg_wal/"),
    ]
    ctx.host.run(argv, user=ctx.cluster.os_user, timeout=600)
    ctx.state.record("standby_wal_shipped", name=route.name, replay_lsn=replay_lsn, segments=names)
    log.info("standby %s was at %s: shipped %s from the stopped primary", route.name, replay_lsn, ", ".join(names))


def _transport(route: Route) -> list[str]:
    return ["-e", f"ssh -p {route.ssh_port} {_SSH_OPTIONS}"] if route.ssh else []


def _dest(route: Route, path: str) -> str:
    return f"{route.ssh}:{path}" if route.ssh else path


def rsync_argv(old_datadir: str, new_datadir: str, route: Route) -> list[str]:
    """The documented rsync of the old and new data directories to the standby's root, keeping the standby's
    own top-level files and replication slots (filters anchored at the common parent: ``--relative``)."""
    common, rel_old, rel_new = _layout(old_datadir, new_datadir)
    argv = ["rsync", "--archive", "--delete", "--hard-links", "--size-only", "--no-inc-recursive", "--relative",
            "--stats"]  # fmt: skip
    argv += [f"--include=/{rel_old}/{e}" for e in PG_ENTRIES if e != "postmaster.pid"]
    argv += [f"--exclude=/{rel_old}/pg_replslot/*", f"--exclude=/{rel_old}/*", f"--exclude=/{rel_new}/pg_replslot/*"]
    return [*argv, *_transport(route), f"{common}/./{rel_old}", f"{common}/./{rel_new}", _dest(route, f"{route.root}/")]


def _stats(stdout: str) -> dict[str, str]:
    keep = ("Number of files", "Number of regular files transferred", "Total file size", "Total bytes sent")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in stdout.splitlines()) if k in keep}


def sync_standbys(ctx: RunContext) -> list[dict[str, Any]]:
    """After pg_upgrade, before anything starts: every rsync route at once from the primary's host."""
    plan_ = ctx.plan(MajorPlan)
    todo = [t for t in _routes(ctx, plan_) if t[0].how == "rsync"]
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        return list(pool.map(lambda t: _sync(ctx, plan_, *t), todo))


def _sync(ctx: RunContext, plan_: MajorPlan, route: Route, standby: Cluster, shost: Host) -> dict[str, Any]:
    started = time.monotonic()
    ctx.state.record("standby_sync", name=route.name, new_datadir=route.new_datadir)
    log.info("rsync of %s and %s to standby %s (%s)", plan_.old.datadir, plan_.new.datadir, route.name, shost.name)
    res = ctx.host.run(
        rsync_argv(plan_.old.datadir, plan_.new.datadir, route), user=ctx.cluster.os_user, timeout=SYNC_TIMEOUT_S
    )
    stats = _stats(res.stdout)
    configure_new_standby(standby, shost, route.new_datadir, plan_)
    seconds = round(time.monotonic() - started, 3)
    ctx.state.record("standby_synced", name=route.name, seconds=seconds, rsync=stats)
    log.info("standby %s synchronised in %.1fs: %s", route.name, seconds, stats)
    return {"name": route.name, "seconds": seconds, "rsync": stats}


def configure_new_standby(standby: Cluster, shost: Host, new_datadir: str, plan_: MajorPlan) -> None:
    """The standby's own configuration carried into its new data directory (for the new major, on its host), and
    ``standby.signal``."""
    new_inst = versions.inspect(plan_.new.bindir, shost)
    old_major = versions.Version.parse(plan_.old.version).major
    config.carry_config(standby, old_major, new_inst, new_datadir, shost)
    shost.run(["touch", f"{new_datadir}/standby.signal"], user=standby.os_user)


def reserve_wal(ctx: RunContext) -> list[str]:
    """On the new primary's first (private) start: the old primary's physical slots recreated and the hold slot,
    each reserving WAL from now on, so that every standby finds the WAL since the upgrade when it connects."""
    plan_ = ctx.plan(MajorPlan)
    if not plan_.standby_routes:
        return []
    names = [*plan_.standby_slots, HOLD_SLOT]
    with connect(new_cluster(ctx, plan_, private=True)) as conn:
        for name in names:
            fetch_named(conn, "physical-slot-create", {"name": name})
    ctx.state.record("standby_slots_created", slots=names)
    return names


# -- after opening -----------------------------------------------------------------------------------------------


def to_start(ctx: RunContext) -> list[str]:
    """After opening: the standbys still to start on the new major (one mapped ``standby`` task each)."""
    plan_ = ctx.plan(MajorPlan)
    return [r["name"] for r in plan_.standby_routes if not first_where(ctx.state, "standby_streaming", name=r["name"])]


def start_standby(ctx: RunContext, name: str) -> dict[str, Any]:
    """One standby on the new major (re-cloned first on a reclone route), proven streaming from the new primary."""
    plan_ = ctx.plan(MajorPlan)
    [(route, standby, shost)] = [t for t in _routes(ctx, plan_) if t[0].name == name]
    primary = new_cluster(ctx, plan_, private=False)
    started = time.monotonic()
    new = replace(standby, bindir=plan_.new.bindir, datadir=route.new_datadir, confdir=None)
    if route.how == "reclone" and not first_where(ctx.state, "standby_new_start", name=name):
        ctx.state.record("standby_reclone", name=name, new_datadir=route.new_datadir)
        basebackup(shost, standby.os_user, plan_.new.bindir, route.new_datadir, primary_conninfo(standby, shost))
        configure_new_standby(standby, shost, route.new_datadir, plan_)
    ctx.state.record("standby_new_start", name=name)  # from here its old files may change (rsync)
    lag = _start_streaming(primary, new, shost, route.streams_as)
    _runs_major(new, versions.Version.parse(plan_.new.version).major)
    seconds = round(time.monotonic() - started, 3)
    ctx.state.record("standby_streaming", name=name, seconds=seconds, replay_lag_bytes=lag)
    log.info("standby %s on the new major, streaming (%s, %.1fs)", name, route.how, seconds)
    return {"name": name, "how": route.how, "seconds": seconds, "replay_lag_bytes": lag}


def release_wal(ctx: RunContext) -> bool:
    """Once every standby streams: the hold slot dropped (the standbys' own slots keep what they need)."""
    plan_ = ctx.plan(MajorPlan)
    if not plan_.standby_routes:
        return False
    waiting = to_start(ctx)
    if waiting:
        raise CheckFailed(f"standbys not streaming yet: {', '.join(waiting)}; the hold slot keeps their WAL")
    with connect(new_cluster(ctx, plan_, private=False)) as conn:
        fetch_named(conn, "drop-replication-slot", {"slot": HOLD_SLOT})
    return True


def _start_streaming(
    primary: Cluster, standby: Cluster, shost: Host, streams_as: str, timeout: float = topology.STREAM_TIMEOUT_S
) -> int:
    """The standby started unless it runs, proven streaming from ``primary`` past its WAL position at the start
    (``topology.caught_up``); its replay lag in bytes then."""
    with connect(primary) as conn:
        since = str(scalar_named(conn, "wal-position"))
    services.start_if_down(standby, shost)
    return topology.caught_up(primary, streams_as, since, timeout)


def _runs_major(cluster: Cluster, major: int) -> None:
    with connect(cluster) as conn:
        runs = versions.Version.from_num(int(scalar_named(conn, "server-version-num")))
    if runs.major != major:
        raise CheckFailed(f"standby {cluster.name} runs {runs}, not {major}")


def primary_conninfo(standby: Cluster, shost: Host) -> tuple[str, dict[str, str] | None]:
    """The standby's own ``primary_conninfo`` (``postgres -C``, as its configuration says), without the
    password (returned as PGPASSWORD)."""
    res = shost.run([standby.bin("postgres"), "-C", "primary_conninfo", "-D", standby.config_dir], user=standby.os_user)
    dsn = parse_dsn(res.stdout.strip())
    if not dsn.get("host") and not dsn.get("hostaddr"):
        raise UnsafeState(f"standby {standby.name}: its primary_conninfo names no host: cannot re-clone it")
    password = dsn.pop("password", None)
    if password:
        shost.redactor.add(password)
    return make_dsn(**dsn), ({"PGPASSWORD": password} if password else None)


def basebackup(shost: Host, user: str, bindir: str, into: str, source: tuple[str, dict[str, str] | None]) -> None:
    """``pg_basebackup`` with ``bindir``'s programs into ``into`` (absent or empty) on a standby's host, from
    ``source`` (``primary_conninfo``'s connection string and password environment)."""
    conninfo, env = source
    shost.run(
        [f"{bindir}/pg_basebackup", "-D", into, "-X", "stream", "-c", "fast", "-w", "-d", conninfo],
        user=user,
        env=env,
        timeout=SYNC_TIMEOUT_S,
    )


# -- rollback ----------------------------------------------------------------------------------------------------


def standbys_back(ctx: RunContext) -> list[dict[str, Any]]:
    """The rollback's last step (the old primary serves again): every standby the upgrade stopped, back on the
    old major and streaming: restarted when its old directory is intact, else re-cloned from the old primary."""
    from pgupgrade.major.rollback import recorded_plan

    up = ctx.upgrade_run
    plan_ = recorded_plan(up)
    if plan_ is None or not plan_.standby_routes:
        return []
    with connect(ctx.cluster) as conn:  # a primary rebuilt from its base backup has none (pg_replslot is not in it)
        for name in plan_.standby_slots:
            fetch_named(conn, "physical-slot-create", {"name": name})
    out = []
    for route, standby, shost in _routes(ctx, plan_):
        stopped = first_where(up, "standby_stop_requested", name=route.name)
        if not stopped or first_where(ctx.state, "standby_back", name=route.name):
            continue  # never stopped by the upgrade, or already back (a retried task)
        started = time.monotonic()
        new = replace(standby, bindir=plan_.new.bindir, datadir=route.new_datadir, confdir=None)
        services.stop_if_running(new, shost)
        if first_where(up, "standby_sync", name=route.name) or first_where(up, "standby_reclone", name=route.name):
            _remove_new(new, shost, versions.Version.parse(plan_.new.version).major)
        intact = route.how == "reclone" or not first_where(up, "standby_new_start", name=route.name)
        how = "restarted" if intact and _restarted(ctx.cluster, standby, shost, route) else "recloned"
        if how == "recloned":
            _reclone_old(standby, shost)
            _start_streaming(ctx.cluster, standby, shost, route.streams_as)
        _runs_major(standby, versions.Version.parse(plan_.old.version).major)
        seconds = round(time.monotonic() - started, 3)
        ctx.state.record("standby_back", name=route.name, how=how, seconds=seconds)
        log.info("standby %s back on the old major (%s, %.1fs)", route.name, how, seconds)
        out.append({"name": route.name, "how": how, "seconds": seconds})
    return out


def _remove_new(new: Cluster, shost: Host, major: int) -> None:
    """The standby's new data directory (rsync'd or re-cloned by this run) removed, once it is proven to be one of
    the new major; its files are hard links, the old directory keeps its own."""
    version = shost.run(["cat", f"{new.datadir}/PG_VERSION"], user=new.os_user, check=False)
    if version.exit_code == 0 and version.stdout.strip() != str(major):
        raise UnsafeState(f"{new.datadir} on {shost.name} holds PostgreSQL {version.stdout.strip()}, not {major}")
    shost.run(["rm", "-rf", "--", new.datadir], user=new.os_user)


def _restarted(primary: Cluster, standby: Cluster, shost: Host, route: Route) -> bool:
    """The intact old standby started (its pg_control renamed back first when the rsync renamed it); whether it
    streams from the old primary again within the limit (if not, it is stopped for a re-clone)."""
    control = services.pg_control_state(shost, standby.datadir, standby.os_user)
    if control["pg_control.old"] and not control["pg_control"]:
        services.restore_pg_control(shost, standby.datadir, standby.os_user)
    try:
        _start_streaming(primary, standby, shost, route.streams_as, RESTART_STREAM_TIMEOUT_S)
        return True
    except (CheckFailed, CommandError) as exc:
        log.warning("standby %s did not come back streaming (%s): re-cloning it", route.name, exc)
        services.stop_if_running(standby, shost)
        return False


def _reclone_old(standby: Cluster, shost: Host) -> None:
    """The old data directory re-cloned from the old primary, the standby's own top-level files (configuration,
    standby.signal, logs, certificates) set aside first and put back after."""
    user, datadir = standby.os_user, standby.datadir
    source = primary_conninfo(standby, shost)  # while its configuration is in place
    own = [
        n for n in shost.run(["ls", "-A1", "--", datadir], user=user).stdout.splitlines()
        if n and n not in PG_ENTRIES
    ]  # fmt: skip
    if not re.fullmatch(r"\d+", shost.run(["cat", f"{datadir}/PG_VERSION"], user=user).stdout.strip()):
        raise UnsafeState(f"{datadir} on {shost.name} is not a PostgreSQL data directory: not re-cloned")
    aside = f"{datadir}.pgupgrade-own"
    shost.run(["mkdir", "-p", "-m", "0700", "--", aside], user=user)
    for name in own:
        shost.run(["mv", "--", f"{datadir}/{name}", f"{aside}/{name}"], user=user)
    shost.run(["rm", "-rf", "--", datadir], user=user)
    basebackup(shost, user, standby.bindir, datadir, source)
    for name in own:
        shost.run(["rm", "-rf", "--", f"{datadir}/{name}"], user=user)
        shost.run(["mv", "--", f"{aside}/{name}", f"{datadir}/{name}"], user=user)
    shost.run(["rmdir", "--", aside], user=user)
    shost.run(["touch", f"{datadir}/standby.signal"], user=user)
