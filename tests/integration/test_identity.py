"""Identity before every destructive step, against real servers: the connection's server must be the primary in
``pg_datadir`` on the runner's host. A standby (same system identifier), another cluster's data directory, and a
worker that is not the database host are refused, naming both values; the right cluster passes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pgupgrade import identity
from pgupgrade.cluster import Cluster, Service
from pgupgrade.errors import ConfigError, UnsafeState
from pgupgrade.scratch import write_settings

from pgharness import HOST, OS_USER, Pool, lock_of


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
