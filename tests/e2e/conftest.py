"""Session fixtures of the distributed topology (tests/topology.py): a second database host reached over TCP
only (SSH as postgres, PostgreSQL on 127.0.0.2), and one Airflow with the CeleryExecutor and two workers in their
own namespaces, shared by every test marked ``distributed``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from pgupgrade.cluster import Cluster

from pgharness import Pool
from topology import DistributedAirflow, SecondHost, control_database


@pytest.fixture(scope="session")
def second_host() -> Iterator[SecondHost]:
    """Host ``dbhost2`` (127.0.0.2): ``new_cluster(version)`` makes a started cluster there; its SSH connection
    (``second_host.ssh_conn_id``) is in the environment of every process of ``distributed_airflow``."""
    started = time.monotonic()
    host = SecondHost().start()
    print(f"second host {host.hostname} up in {time.monotonic() - started:.1f}s")
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="session")
def control_cluster(pool: Pool) -> Cluster:
    """The control database's own cluster (on 127.0.0.1, TCP): a test may stop it without stopping Airflow."""
    cluster = pool.new("17", "distributed_control", seed=False, settings={"listen_addresses": "'127.0.0.1'"})
    return replace(cluster, host="127.0.0.1")


@pytest.fixture(scope="session")
def distributed_extra_env(control_cluster: Cluster) -> dict[str, str]:
    """Environment added to every process of the shared distributed stack: the control database (database
    pgupgrade_control of ``control_cluster``) and fault drills (Variable pgupgrade_inject_failure). Connections a
    test needs later go through ``distributed_airflow.add_connection`` (REST) instead."""
    return {**control_database(control_cluster), "PGUPGRADE_FAULT_DRILLS": "1"}


@pytest.fixture(scope="session")
def distributed_airflow(
    pool: Pool, second_host: SecondHost, distributed_extra_env: dict[str, str]
) -> Iterator[DistributedAirflow]:
    """api-server, scheduler, dag-processor, triggerer as root here; celery workers ``worker-a`` and
    ``worker-b`` as the ``airflow`` user in their own namespaces; broker redis; metadata on 127.0.0.1 (TCP)."""
    started = time.monotonic()
    meta = pool.new("17", "distributed_meta", seed=False, settings={"listen_addresses": "'127.0.0.1'"})
    env = {**second_host.connection_env(), **distributed_extra_env}
    assert second_host.keydir is not None
    stack = DistributedAirflow(replace(meta, host="127.0.0.1"), env, shared=[second_host.keydir]).start()
    print(f"distributed airflow up in {time.monotonic() - started:.1f}s (logs in {stack.home})")
    try:
        yield stack
    finally:
        stack.stop()  # its home (logs of every component and task) stays, as the other e2e stacks' homes do
