"""What every step of a run gets: its identity, validated params, the cluster and host, its state dir."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pgupgrade import identity, plans
from pgupgrade import state as run_state
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.errors import ConfigError, UnsafeState
from pgupgrade.profiles import ExtensionProfile
from pgupgrade.state import Lock, RunJournal, RunStore
from pgupgrade.state.spool import Spool

P = TypeVar("P")


@dataclass
class RunContext:
    dag_id: str
    run_id: str
    params: dict[str, Any]
    cluster: Cluster
    host: Host
    state: RunJournal
    profile: ExtensionProfile
    spec: dict[str, Any] = field(default_factory=dict)  # fixed by the DAG factory (e.g. from/to major)
    store: RunStore = field(default_factory=run_state.store)  # where ``state`` and the cluster lock live
    # a standby's connection id → its cluster and the host it runs on (the Airflow layer reads connections)
    resolve: Callable[[str], tuple[Cluster, Host]] | None = field(default=None, repr=False, compare=False)
    _plans: dict[type, Any] = field(default_factory=dict, repr=False, compare=False)
    _standbys: list[tuple[Cluster, Host]] | None = field(default=None, repr=False, compare=False)
    _lock_key: str | None = field(default=None, repr=False, compare=False)

    def standbys(self) -> list[tuple[Cluster, Host]]:
        """The cluster's standbys as its connection lists them (extra ``standbys``), each with its host: resolved
        once per context (each resolution may open an SSH connection; a step of the cutover must not repeat it)."""
        if not self.cluster.standbys:
            return []
        if self.resolve is None:
            raise ConfigError(f"{self.cluster.name}.extra.standbys", "no way to read the standbys' connections here")
        if self._standbys is None:
            self._standbys = [self.resolve(conn_id) for conn_id in self.cluster.standbys]
        return self._standbys

    def plan(self, cls: type[P]) -> P:
        """This run's recorded plan as its runbook's type, read once per context."""
        if cls not in self._plans:
            data = self.state.load("plan")
            if data is None:
                raise UnsafeState(f"no plan recorded for run {self.dag_id}/{self.run_id}: the plan task runs first")
            self._plans[cls] = plans.from_json(cls, data)
        plan: P = self._plans[cls]
        return plan

    @property
    def lock(self) -> Lock:
        """The cluster's lock, keyed by the database host's node name and the data directory's real path: as
        recorded by this run (or the upgrade run it acts for) when it proved the cluster, else asked of the host."""
        if self._lock_key is None:
            recorded = self.state.load("identity") or (
                self.upgrade_run.load("identity") if self.params.get("upgrade_run_id") else None
            )
            self._lock_key = (recorded or {}).get("lock_key") or identity.lock_key(self.cluster, self.host)
        return self.store.cluster_lock(self._lock_key)

    @property
    def upgrade_run(self) -> RunJournal:
        """The upgrade run a rollback or cleanup run acts for (params ``upgrade_dag_id``, ``upgrade_run_id``), in
        the same store."""
        return self.journal_of(self.params["upgrade_dag_id"], self.params["upgrade_run_id"])

    def journal_of(self, dag_id: str, run_id: str) -> RunJournal:
        """A run's journal in this context's store, with its spool on this cluster's database host."""
        return journal(self.store, self.host, self.cluster, dag_id, run_id)


def journal(store: RunStore, host: Host, cluster: Cluster, dag_id: str, run_id: str) -> RunJournal:
    """A run's journal in store, with its spool (for a control database that goes away) on the cluster's
    database host."""
    return store.run(dag_id, run_id, Spool.beside(host, cluster.os_user, cluster.datadir, dag_id, run_id))
