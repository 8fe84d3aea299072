"""Idempotence of what a window dispatches: a minor upgrade of a cluster already on the target release ends
green at the plan with a log line and leaves the server untouched (same postmaster start time, same version); in
a manual run the scheduled-run dispatch does nothing."""

from __future__ import annotations

import pytest

from pgupgrade.minor import fields as minor_fields
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState, state_root

from airflow_helpers import minor_conf, run
from pgharness import Pool

pytestmark = pytest.mark.usefixtures("airflow_home")


def test_minor_upgrade_of_a_cluster_already_at_the_target_ends_green_untouched(
    pool: Pool,
) -> None:
    cluster = pool.new("15.20", "already_1520", seed=False)
    with connect(cluster) as conn:
        started = scalar(conn, "SELECT pg_postmaster_start_time()")
    conf = minor_conf(cluster)
    dr, states = run(minor_fields.DAG_ID, conf)
    assert dr.state == "success", states
    assert states["manual_only"] == "success" and states["trigger_cluster_runs"] == "skipped", states
    assert states["plan.plan"] == "success" and states["plan.dry_run_gate"] == "success", states
    for task_id in ("pre_upgrade.backup", "stop.block_logins", "cutover", "report"):
        assert states[task_id] == "skipped", (task_id, states)
    plan = RunState.for_run(minor_fields.DAG_ID, dr.run_id, state_root()).load("plan")
    assert plan["already_upgraded"] is True  # dry_run_gate logs "nothing to do: <reason>"
    assert plan["reason"] == "the cluster already runs 15.20"
    with connect(cluster) as conn:
        assert scalar(conn, "SELECT pg_postmaster_start_time()") == started
        assert int(scalar(conn, "SHOW server_version_num")) == 150020
