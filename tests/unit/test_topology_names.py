"""The name a standby streams under, as the primary's pg_stat_replication shows it (pgupgrade.topology)."""

import pytest

from pgupgrade.topology import streams_as


@pytest.mark.parametrize(
    ("receiver", "name"),
    [
        ({"status": None, "conninfo": None, "cluster_name": "s1"}, None),  # no WAL receiver runs
        ({"status": "streaming", "conninfo": "port=5432 application_name=app1", "cluster_name": "s1"}, "app1"),
        ({"status": "streaming", "conninfo": "host=/tmp port=5432", "cluster_name": "s1"}, "s1"),
        ({"status": "streaming", "conninfo": "host=/tmp port=5432", "cluster_name": ""}, "walreceiver"),
        ({"status": "waiting", "conninfo": "", "cluster_name": "s2"}, "s2"),
    ],
)
def test_streams_as(receiver, name):
    assert streams_as(receiver) == name
