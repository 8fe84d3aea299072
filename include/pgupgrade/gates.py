"""Keeping clients out of a cluster and letting them back in: the ``ClientGate`` seam.

Today's implementation is ``NologinGate``: ``ALTER ROLE … NOLOGIN`` for every login role but the tool's own and
the bootstrap superuser, sessions listed and terminated through the catalog. (A gate in pg_hba.conf or in the
pooler in front of the cluster plugs in here; ``gate_for`` chooses.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, fetch_named, psql

# pg_hba.conf lines the gate adds end with this comment: removed when the gate opens, never carried to a new cluster
GATE_MARK = "# pgupgrade-gate"


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


@dataclass(frozen=True)
class NologinGate:
    cluster: Cluster

    def block(self) -> list[str]:
        """ALTER ROLE … NOLOGIN for every login role but ours and the bootstrap superuser."""
        with connect(self.cluster) as conn, conn.cursor() as cur:
            roles = [r["rolname"] for r in fetch_named(conn, "login-roles")]
            for role in roles:
                cur.execute(psql.SQL("ALTER ROLE {} NOLOGIN").format(psql.Identifier(role)))
        return roles

    def unblock(self, blocked: list[str]) -> None:
        with connect(self.cluster) as conn, conn.cursor() as cur:
            for role in blocked:
                if fetch_named(conn, "role-exists", {"role": role}):
                    cur.execute(psql.SQL("ALTER ROLE {} LOGIN").format(psql.Identifier(role)))

    def sessions(self) -> list[dict[str, Any]]:
        with connect(self.cluster) as conn:
            return fetch_named(conn, "client-connections")

    def terminate(self) -> int:
        with connect(self.cluster) as conn:
            return sum(1 for r in fetch_named(conn, "terminate-clients") if r["terminated"])


def gate_for(cluster: Cluster) -> ClientGate:
    """The gate in front of this cluster: today always ``NologinGate``."""
    return NologinGate(cluster)
