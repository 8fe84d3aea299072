"""Keeping clients out of a cluster and letting them back in: the ``ClientGate`` seam.

``HbaGate`` keeps every login role but the tool's own out through ``pg_hba.conf``: ``reject`` lines (marked with
``GATE_MARK``) put first and loaded by a reload, so nothing in the catalog changes (a NOLOGIN would replicate to
standbys and must be undone on every path), and connected clients keep working until the grace period ends.
A client that connects as the tool's own role cannot be told apart in ``pg_hba.conf``: the cutover's first step
restarts the cluster where only the run reaches it (``clients.terminate_clients``), which ends every session and
keeps every role out until the cluster opens. (A gate in the pooler in front of the cluster plugs in here;
``gate_for`` chooses.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host, LocalHost
from pgupgrade.errors import CheckFailed, ConfigError
from pgupgrade.sql import connect, fetch_named, scalar_named

log = logging.getLogger(__name__)

# pg_hba.conf lines the gate adds end with this comment: removed when the gate opens, never carried to a new cluster
GATE_MARK = "# pgupgrade-gate"
_ROLES_PER_LINE = 50


class ClientGate(Protocol):
    """Who may connect to one cluster."""

    def block(self) -> list[str]:
        """Keeps new client sessions out; returns what it closed, so that exactly that is opened again."""
        ...

    def unblock(self, blocked: list[str]) -> None:
        """Lets clients in again (what ``block`` returned, possibly over several calls)."""
        ...

    def sessions(self) -> list[dict[str, Any]]:
        """Client sessions connected now (not the tool's own)."""
        ...

    def terminate(self) -> int:
        """Ends every client session; how many were ended."""
        ...


def gate_lines(roles: list[str]) -> list[str]:
    """``reject`` lines for roles, over the Unix socket and TCP, every database (never replication)."""
    for role in roles:
        if '"' in role or "\n" in role:
            raise ConfigError("client gate", f"role {role!r} cannot be named in pg_hba.conf; rename it or stop it")
    lines = []
    for i in range(0, len(roles), _ROLES_PER_LINE):
        names = ",".join(f'"{r}"' for r in roles[i : i + _ROLES_PER_LINE])
        lines += [f"local all {names} reject {GATE_MARK}", f"host all {names} all reject {GATE_MARK}"]
    return lines


def without_gate(text: str) -> str:
    """pg_hba.conf text without the gate's lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.rstrip().endswith(GATE_MARK))


@dataclass(frozen=True)
class HbaGate:
    cluster: Cluster
    host: Host = field(default_factory=LocalHost)

    def _hba_file(self) -> str:
        """Where the server reads pg_hba.conf from: asked of the server, else the configuration directory's."""
        try:
            with connect(self.cluster) as conn:
                return str(scalar_named(conn, "hba-file"))
        except psycopg2.OperationalError:
            return f"{self.cluster.config_dir}/pg_hba.conf"

    def _rewrite(self, path: str, text: str) -> None:
        """Replaces the file in one rename (never a half-written pg_hba.conf), keeping its owner and mode."""
        user, tmp = self.cluster.os_user, f"{path}.pgupgrade-new"
        self.host.run(["cp", "-p", "--", path, tmp], user=user)
        self.host.run(["tee", tmp], user=user, stdin=text)
        self.host.run(["mv", "-f", "--", tmp, path], user=user)

    def _reload(self, expect_rejects: bool) -> None:
        with connect(self.cluster) as conn:
            check = fetch_named(conn, "hba-rules-check")[0]
            if check["errors"]:
                raise CheckFailed(f"pg_hba.conf does not load: {check['details']}")
            if expect_rejects and not check["rejects"]:
                raise CheckFailed("the gate's reject lines are not in the pg_hba.conf the server reads")
            scalar_named(conn, "reload-conf")
        time.sleep(0.1)  # the postmaster re-reads pg_hba.conf on SIGHUP: before the next connection it accepts

    def block(self) -> list[str]:
        """Reject lines for every login role but ours, first in pg_hba.conf, then a reload."""
        with connect(self.cluster) as conn:
            roles = [r["rolname"] for r in fetch_named(conn, "gate-roles")]
            path = str(scalar_named(conn, "hba-file"))
        text = without_gate(self.host.run(["cat", "--", path], user=self.cluster.os_user).stdout)
        if roles:
            self._rewrite(path, "\n".join(gate_lines(roles)) + "\n" + text)
            self._reload(expect_rejects=True)
        log.info("pg_hba.conf %s rejects %d roles until the cluster opens", path, len(roles))
        return roles

    def unblock(self, blocked: list[str]) -> None:
        """Removes the gate's lines (whichever roles they name); reloads a running server."""
        path = self._hba_file()
        res = self.host.run(["cat", "--", path], user=self.cluster.os_user, check=False)
        if res.exit_code != 0:
            log.warning("no pg_hba.conf at %s: nothing to open", path)
            return
        if without_gate(res.stdout) != res.stdout:
            self._rewrite(path, without_gate(res.stdout))
        try:
            self._reload(expect_rejects=False)
        except psycopg2.OperationalError:
            log.info("the cluster is down: it reads the opened pg_hba.conf when it starts")

    def sessions(self) -> list[dict[str, Any]]:
        with connect(self.cluster) as conn:
            return fetch_named(conn, "client-connections")

    def terminate(self) -> int:
        with connect(self.cluster) as conn:
            return sum(1 for r in fetch_named(conn, "terminate-clients") if r["terminated"])


def gate_for(cluster: Cluster, host: Host | None = None) -> ClientGate:
    """The gate in front of this cluster: today always ``HbaGate``."""
    return HbaGate(cluster, host or LocalHost())
