"""Identity before every destructive step, against real servers: the connection's server must be the primary in
``pg_datadir`` on the runner's host. A standby (same system identifier), another cluster's data directory, and a
worker that is not the database host are refused, naming both values; the right cluster passes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pgupgrade import guard, identity, profiles
from pgupgrade.cluster import Cluster, Service
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PlanError, UnsafeState
from pgupgrade.scratch import write_settings

from pgharness import HOST, OS_USER, Pool, control_store, lock_of


@pytest.fixture(scope="module")
def primary(pool: Pool) -> Cluster:
    return pool.new("15.18", "identity_primary", seed=False, settings={"wal_level": "replica"})


@pytest.fixture(scope="module")
def standby(pool: Pool, primary: Cluster) -> Cluster:
    home = Path(primary.datadir).parent.parent / "identity_standby"
    datadir, port = str(home / "data"), primary.port + 4
    HOST.run(["mkdir", "-p", str(home)], user=OS_USER)
    env = primary.libpq_env()
    HOST.run([primary.bin("pg_basebackup"), "-D", datadir, "-R", "-X", "stream"], user=OS_USER, env=env)
    write_settings(HOST, f"{datadir}/postgresql.auto.conf", {"port": str(port)}, OS_USER)
    standby = pool.track(replace(primary, name="identity_standby", datadir=datadir, port=port))
    Service(standby, HOST).start()
    return standby


def test_the_right_cluster_passes_and_records_its_identity(primary: Cluster) -> None:
    proven = identity.verify(primary, HOST)
    assert proven["system_identifier"] and proven["datadir"] == str(Path(primary.datadir).resolve())
    assert lock_of(primary).key == identity.lock_key(primary, HOST) == f"{proven['node']}:{proven['datadir']}"


def test_a_standby_is_refused_although_it_shares_the_identifier(primary: Cluster, standby: Cluster) -> None:
    with pytest.raises(UnsafeState, match="in recovery"):
        identity.verify(standby, HOST)
    # the primary's connection with the standby's data directory: same identifier, other server
    with pytest.raises(UnsafeState, match=r"data_directory: the server says .*identity_primary.*pg_datadir is"):
        identity.verify(replace(primary, datadir=standby.datadir), HOST)


def test_another_clusters_data_directory_is_refused_naming_both_identifiers(pool: Pool, primary: Cluster) -> None:
    other = pool.new("15.18", "identity_other", seed=False)
    with pytest.raises(UnsafeState, match=r"system identifier: the connection's server has \d+, .* says \d+"):
        identity.verify(replace(primary, datadir=other.datadir), HOST)


def test_without_ssh_the_worker_must_be_the_database_host(primary: Cluster) -> None:
    with pytest.raises(ConfigError, match=r"does not exist on .*the Airflow worker must be the database host"):
        identity.verify(replace(primary, datadir="/nonexistent/pgdata"), HOST)


def test_the_cluster_holding_the_control_database_is_never_taken(pool: Pool, primary: Cluster) -> None:
    """take_cluster proves the identity, refuses the cluster whose system identifier is the control database's
    (its outage would stop the journal), and otherwise takes the lock and records identity and lock key."""
    store = control_store(primary, "ctl_here", create=True)

    def ctx_for(cluster: Cluster, run_id: str) -> RunContext:
        return RunContext(
            dag_id="pg15_to_pg16_upgrade",
            run_id=run_id,
            params={},
            cluster=cluster,
            host=HOST,
            state=store.run("pg15_to_pg16_upgrade", run_id),
            profile=profiles.get("pg_tviews"),
            store=store,
        )

    with pytest.raises(PlanError, match="holds the control database"):
        guard.take_cluster(ctx_for(primary, "r-self"), lambda *_: False)
    assert store.run("pg15_to_pg16_upgrade", "r-self").side_effects() == []
    other = pool.new("15.18", "identity_target", seed=False)
    ctx = ctx_for(other, "r-other")
    assert "acquired" in guard.take_cluster(ctx, lambda *_: False)
    recorded = ctx.state.load("identity")
    assert recorded["lock_key"] == ctx.lock.key == lock_of(other).key
    assert ctx.lock.release("pg15_to_pg16_upgrade", "r-other")
