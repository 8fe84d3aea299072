"""Clusters for the benchmark: one seeded template with the data, identical clones of it, and teardown.

Everything runs as the OS user postgres through the project's runner (``pgupgrade.commands``) and the test
harness (``tests/pgharness.py``); nothing here builds a shell string.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from psycopg2 import sql as psql

from pgupgrade.cluster import Cluster, Service
from pgupgrade.commands import LocalHost
from pgupgrade.scratch import write_settings
from pgupgrade.sql import connect, scalar

import pgharness
from pgharness import APP_DB, OS_USER, Pool, WriteProbe, postmasters_under

GB = 2**30
CHUNK_ROWS = 250_000  # rows per INSERT ... SELECT generate_series (≈ 55 MB of heap)

HOST = LocalHost(inventory=False)  # the bench's own tools (createdb, chmod...) are not the library's


def db_size(cluster: Cluster, dbname: str = APP_DB) -> int:
    with connect(cluster, dbname) as conn:
        return int(scalar(conn, "SELECT pg_database_size(current_database())"))


def generate(cluster: Cluster, gb: float) -> int:
    """~gb GiB in table bench_data of the app database (generate_series inserts, primary key built after the
    load); returns the rows inserted."""
    target = int(gb * GB)
    rows = 0
    with connect(cluster, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bench_data (id bigint NOT NULL, payload text NOT NULL)")
        while True:
            cur.execute("SELECT pg_database_size(current_database())")
            row = cur.fetchone()
            if row is None or int(row[0]) >= target:
                break
            n = min(CHUNK_ROWS, max(1000, (target - int(row[0])) // 240))
            cur.execute(
                "INSERT INTO bench_data SELECT g, repeat(md5(g::text), 6) FROM generate_series(%s, %s) g",
                (rows + 1, rows + n),
            )
            rows += n
        cur.execute("ALTER TABLE bench_data ADD PRIMARY KEY (id)")
        cur.execute("GRANT SELECT ON bench_data TO app_user")
        cur.execute("VACUUM ANALYZE bench_data")
    return rows


def add_relations(cluster: Cluster, n: int, batch: int = 500) -> None:
    """n empty tables (one relation each) in the app database, created in batches (lock table limits)."""
    with connect(cluster, APP_DB) as conn, conn.cursor() as cur:
        for first in range(1, n + 1, batch):
            last = min(n, first + batch - 1)
            cur.execute(
                psql.SQL(
                    "DO $$ BEGIN FOR i IN {}..{} LOOP EXECUTE format('CREATE TABLE rel_%s (id int)', i); "
                    "END LOOP; END $$"
                ).format(psql.Literal(first), psql.Literal(last))
            )
        cur.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'rel\\_%'")
        row = cur.fetchone()
        if row is None or row[0] != n:
            raise RuntimeError(f"created {row} tables rel_*, wanted {n}")


def make_template(pool: Pool, gb: float, name: str) -> tuple[Cluster, int]:
    """A 15.18 cluster seeded like the tests (roles, two databases, pg_tviews with TVIEWs), the probe's table and
    ~gb GiB of data; stopped, ready to be cloned. Returns it and its app database size in bytes."""
    cluster = pool.new("15.18", name)  # seeded like the tests
    WriteProbe.create_table(cluster)
    generate(cluster, gb)
    size = db_size(cluster)
    with connect(cluster) as conn:
        conn.cursor().execute("CHECKPOINT")
    Service(cluster, HOST).stop("fast")
    return cluster, size


def clone(pool: Pool, template: Cluster, name: str, settings: dict[str, str] | None = None) -> Cluster:
    """An identical copy of the (stopped) template in its own directory, port and socket, started."""
    port = next(pgharness._ports)
    home = pool.root / name
    sock = home / "sock"
    HOST.run(["mkdir", "-p", str(sock)], user=OS_USER)
    HOST.run(["cp", "-a", template.datadir, str(home / "data")], user=OS_USER, timeout=3600)
    cluster = replace(template, name=name, port=port, host=str(sock), datadir=str(home / "data"))
    conf = {"port": str(port), "unix_socket_directories": f"'{sock}'", **(settings or {})}
    write_settings(HOST, f"{cluster.datadir}/postgresql.conf", conf, OS_USER)
    Service(cluster, HOST).start()
    pool.track(cluster)
    return cluster


def home_of(cluster: Cluster) -> Path:
    return Path(cluster.datadir).parent


def teardown(cluster: Cluster) -> None:
    """Fast shutdown of every postmaster started in the cluster's directory (old, new, private), then removal."""
    home = home_of(cluster)
    for _ in range(3):
        _stop_all(home)
        if HOST.run(["rm", "-rf", "--", str(home)], timeout=3600, check=False).exit_code == 0:
            return
    HOST.run(["rm", "-rf", "--", str(home)], timeout=3600)


def _stop_all(home: Path) -> None:
    pids = postmasters_under(home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
