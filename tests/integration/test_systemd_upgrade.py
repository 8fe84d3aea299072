"""``systemd:<unit>`` clusters end managed: on a database host whose PID 1 is a real systemd (tests/systemd_host.py,
reached over SSH like any remote host), a Debian cluster run as ``postgresql@16-<name>.service`` is link-upgraded
to 17 through the DAG and ends under ``postgresql@17-<name>.service``, enabled and running, the old unit disabled
and stopped; a link upgrade that fails after opening (``after_open_failure=rollback``) is rolled back and ends
with the old unit enabled and running again, the new one disabled, the data as before.

16 → 17 (the wheels, linked where postgresql-common looks inside the host): this machine's Debian 15 may be newer
than the 17 wheel, which pg_upgrade refuses in the schema restore (see tests/integration/test_debian_clusters.py)."""

from __future__ import annotations

import os

import pytest

from pgupgrade.sql import connect, scalar

from airflow_helpers import run, run_triggered_rollback
from conftest import register_connection
from pgharness import APP_DB, installation, served_version
from systemd_host import SystemdHost

pytestmark = [
    pytest.mark.usefixtures("airflow_home"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts, namespaces and a cgroup: needs root"),
]


def _conf(cluster, **over):
    return {
        "postgres_conn_id": register_connection(cluster),
        "target_major": 17,
        "transfer_mode": "link",
        "new_bindir": installation("17").bindir,
        "terminate_after_s": 0,
        **over,
    }


def _orders(cluster) -> int:
    with connect(cluster, APP_DB) as conn:
        return int(scalar(conn, "SELECT count(*) FROM orders"))


def test_systemd_units_switched_by_the_upgrade_and_back_by_the_rollback(monkeypatch):
    with SystemdHost() as dbhost:
        for key, value in dbhost.connection_env().items():
            monkeypatch.setenv(key, value)
        ok, failing = dbhost.new_cluster("16", enable=True), dbhost.new_cluster("16", enable=True)
        for c in (ok, failing):
            dbhost.allow_units(f"postgresql@17-{dbhost.cluster_name(c)}")

        dr, states = run("pg_major_upgrade", _conf(ok))
        assert dr.state == "success", states
        name = dbhost.cluster_name(ok)
        assert dbhost.unit_state(f"postgresql@17-{name}") == ("active", "enabled")
        assert dbhost.unit_state(ok) == ("inactive", "disabled")
        assert served_version(ok) == 17 and _orders(ok) >= 1000
        listed = [line.split()[:4] for line in dbhost.run(["pg_lsclusters", "--no-header"]).splitlines()]
        assert ["17", name, str(ok.port), "online"] in listed, listed

        before = _orders(failing)
        monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "analyze")
        dr, states = run("pg_major_upgrade", _conf(failing, after_open_failure="rollback"))
        monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
        assert dr.state == "failed" and states["trigger_rollback"] == "success", states
        rb, rb_states = run_triggered_rollback("pg_major_upgrade_rollback", dr.run_id)
        assert rb.state == "success", rb_states
        name = dbhost.cluster_name(failing)
        assert dbhost.unit_state(failing) == ("active", "enabled")
        assert dbhost.unit_state(f"postgresql@17-{name}")[1] != "enabled"
        assert dbhost.unit_state(f"postgresql@17-{name}")[0] != "active"
        assert served_version(failing) == 16 and _orders(failing) == before
