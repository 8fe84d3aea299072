"""What every step of a run gets: its identity, validated params, the cluster and host, its state dir."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.profiles import ExtensionProfile
from pgupgrade.state import ClusterLock, RunState


@dataclass
class RunContext:
    dag_id: str
    run_id: str
    params: dict[str, Any]
    cluster: Cluster
    host: Host
    state: RunState
    profile: ExtensionProfile
    spec: dict[str, Any] = field(default_factory=dict)  # fixed by the DAG factory (e.g. from/to major)

    @property
    def lock(self) -> ClusterLock:
        return ClusterLock.for_cluster(self.host.name, self.cluster.datadir, self.state.root)
