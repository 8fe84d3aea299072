"""A cluster as a primary and its streaming standbys, as the plan sees it and checks it.

The connection's ``extra`` lists the standbys (``standbys``: Airflow postgres connection ids, one per standby,
each with its own ``pg_bindir``, ``pg_datadir``, ``os_user``, ``service`` and ``ssh_conn_id``); the primary's
``pg_stat_replication`` says who actually streams. Every listed standby is proven before anything stops:

- it is the standby in its ``pg_datadir`` on its host (``identity.verify(standby=True)``: pg_controldata there,
  ``postmaster.pid``, in recovery) and shares the primary's system identifier;
- it streams from this primary now: its WAL receiver is ``streaming`` and the primary has a WAL sender under the
  name it streams with (its connection string's ``application_name``, else ``cluster_name``, else libpq's
  ``walreceiver``) — names must be unique among the standbys;
- its replay is at most ``max_standby_lag_mb`` behind the primary's current WAL position (as the primary sees it:
  ``pg_stat_replication.replay_lsn``);
- it runs the primary's release.

WAL senders no listed standby accounts for (an unlisted standby, a cascading one is not seen here at all, a
``pg_basebackup`` or ``pg_receivewal``) are reported as ``unlisted``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2
from psycopg2.extensions import parse_dsn

from pgupgrade import identity, versions
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.errors import CheckFailed, CommandError, ConfigError, PlanError, UnsafeState
from pgupgrade.sql import connect, fetch_named, scalar_named

MB = 1024 * 1024
STREAM_TIMEOUT_S = 300  # a restarted standby streams past its primary's position within this


@dataclass(frozen=True)
class Standby:
    name: str  # its connection id
    host: str  # the database host it runs on, as the runner reaches it
    datadir: str
    service: str
    version: str
    streams_as: str | None  # the application_name of its WAL receiver; None: no WAL receiver runs
    receiver: str | None  # the WAL receiver's status (streaming, ...)
    replay_lag_bytes: int | None  # None: the primary has no WAL sender under its name
    sync_state: str | None
    problems: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    primary: str
    system_identifier: str
    version: str
    standbys: tuple[Standby, ...]
    unlisted: tuple[dict[str, Any], ...]  # pg_stat_replication rows no listed standby accounts for

    @property
    def problems(self) -> list[str]:
        return [f"standby {s.name}: {p}" for s in self.standbys for p in s.problems]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def streams_as(receiver: dict[str, Any]) -> str | None:
    """The application_name a standby's WAL receiver connects with (None when no receiver runs)."""
    if receiver["status"] is None:
        return None
    given = parse_dsn(receiver["conninfo"] or "").get("application_name")
    return str(given or receiver["cluster_name"] or "walreceiver")


def discover(primary: Cluster, standbys: Sequence[tuple[Cluster, Host]], *, max_lag_bytes: int) -> Topology:
    """The primary's standbys as listed, each proven (see the module doc); problems collected, not raised."""
    with connect(primary) as conn:
        senders = fetch_named(conn, "replication")
        me = fetch_named(conn, "wal-receiver")[0]
        sysid = identity.served(primary)["system_identifier"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in senders:
        by_name.setdefault(s["application_name"], []).append(s)
    version = _release(me)
    found = [_standby(c, h, sysid, version, by_name, max_lag_bytes) for c, h in standbys]
    names = [s.streams_as for s in found if s.streams_as]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        found = [
            s if s.streams_as not in dup else _with(s, f"streams as {s.streams_as!r}, as another standby does: "
                                                        "give each its own cluster_name or application_name")
            for s in found
        ]  # fmt: skip
    accounted = {s.streams_as for s in found}
    unlisted = tuple(s for s in senders if s["application_name"] not in accounted)
    return Topology(primary.name, sysid, version, tuple(found), unlisted)


def _release(row: dict[str, Any]) -> str:
    """The release a server runs (15.18), without a packager's suffix."""
    return str(versions.Version.from_num(row["server_version_num"]))


def _with(s: Standby, problem: str) -> Standby:
    return Standby(**{**asdict(s), "problems": (*s.problems, problem)})


def _standby(
    cluster: Cluster,
    host: Host,
    sysid: str,
    version: str,
    senders: dict[str, list[dict[str, Any]]],
    max_lag_bytes: int,
) -> Standby:
    try:
        with connect(cluster) as conn:
            receiver = fetch_named(conn, "wal-receiver")[0]
    except psycopg2.Error as exc:
        problem = f"does not answer on its connection: {str(exc).strip()}"
        return Standby(cluster.name, host.name, cluster.datadir, cluster.service, "", None, None, None, None,
                       (problem,))  # fmt: skip
    problems: list[str] = []
    try:
        identity.verify(cluster, host, expect_identifier=sysid, standby=True)
    except (UnsafeState, ConfigError, CommandError) as exc:
        problems.append(str(exc))
    name = streams_as(receiver)
    sender = senders[name][0] if name and senders.get(name) else None
    lag = sender["replay_lag_bytes"] if sender else None
    if _release(receiver) != version:
        problems.append(f"runs {_release(receiver)}, the primary {version}")
    if receiver["status"] != "streaming":
        problems.append(f"its WAL receiver is {receiver['status'] or 'not running'}, not streaming")
    elif sender is None:
        problems.append(f"the primary has no WAL sender for {name!r}: it streams from another server")
    if lag is not None and lag > max_lag_bytes:
        problems.append(
            f"its replay is {lag / MB:.1f} MB behind the primary, more than max_standby_lag_mb="
            f"{max_lag_bytes // MB}: let it catch up, or raise the limit"
        )
    return Standby(
        name=cluster.name,
        host=host.name,
        datadir=cluster.datadir,
        service=cluster.service,
        version=_release(receiver),
        streams_as=name,
        receiver=receiver["status"],
        replay_lag_bytes=lag,
        sync_state=sender["sync_state"] if sender else None,
        problems=tuple(problems),
    )


def planned(primary: Cluster, standbys: Sequence[tuple[Cluster, Host]], max_lag_mb: int) -> dict[str, Any]:
    """The topology for a plan: refused (PlanError, every problem named, nothing stopped) unless every listed
    standby is proven; {} for a cluster without listed standbys."""
    if not standbys:
        return {}
    topology = discover(primary, standbys, max_lag_bytes=max_lag_mb * MB)
    if topology.problems:
        raise PlanError("; ".join(topology.problems) + ". Nothing was stopped.")
    return topology.as_dict()


def caught_up(primary: Cluster, name: str, since: str, timeout: float = STREAM_TIMEOUT_S) -> int:
    """Waits until the primary streams to ``name`` again with its replay at or past ``since``; the replay lag in
    bytes then."""
    deadline = time.monotonic() + timeout
    while True:
        with connect(primary) as conn:
            lag = scalar_named(conn, "standby-caught-up", {"name": name, "since": since})
        if lag is not None:
            return int(lag)
        if time.monotonic() > deadline:
            raise CheckFailed(f"standby {name} does not stream from the primary past {since} after {timeout:.0f}s")
        time.sleep(0.5)
