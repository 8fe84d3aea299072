"""The write probe (the benchmark's and the upgrade tests' client) detects a lost acknowledged write."""

from __future__ import annotations

import time

from pgupgrade.sql import connect

from pgharness import APP_DB, WriteProbe


def test_probe_reports_exactly_the_deleted_acknowledged_row(pool):
    cluster = pool.new("15.18")
    WriteProbe.create_table(cluster)
    probe = WriteProbe(cluster).start()
    try:
        time.sleep(1)
    finally:
        probe.stop()
    ids = [i for i, _ in probe.acked]
    assert len(ids) >= 5, (len(ids), probe.errors)
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and probe.longest_gap() > 0
    assert probe.lost(cluster) == []  # nothing deleted: nothing lost

    victim = ids[len(ids) // 2]
    with connect(cluster, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM write_probe WHERE id = %s", (victim,))
        assert cur.rowcount == 1
    assert probe.lost(cluster) == [victim]
