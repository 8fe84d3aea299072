"""Foundation acceptance: real servers of every major, the runner, the stand-in extension."""

from __future__ import annotations

import pytest

from pgupgrade import versions
from pgupgrade.cluster import Service
from pgupgrade.errors import CommandError, UnsafeState
from pgupgrade.scratch import InitdbOptions, initdb
from pgupgrade.sql import connect, scalar

from pgharness import APP_DB, HOST, OS_USER, Pool, installation, postmasters_under


def test_registry_finds_every_target_version():
    found = {str(i.version) for i in versions.discover()}
    assert {"15.18", "15.20", "16.2", "17.10", "18.6"} <= found
    inst = versions.for_major(17)
    assert inst.version == versions.Version(17, 10)
    assert inst.sharedir.startswith(inst.bindir.rsplit("/bin", 1)[0]) or inst.sharedir.startswith("/usr/share")


def test_four_majors_at_once_then_all_stopped():
    pool = Pool()
    try:
        clusters = {v: pool.new(v, seed=False) for v in ("15.18", "16", "17", "18")}
        for wanted, cluster in clusters.items():
            with connect(cluster) as conn:
                num = scalar(conn, "SHOW server_version_num")
            got = versions.Version.from_num(int(num))
            assert got.major == versions.Version.parse(wanted).major
            assert Service(cluster).is_running()
        assert len(postmasters_under(pool.root)) >= 4
    finally:
        pool.close()
    assert postmasters_under(pool.root) == []
    assert not any(Service(c).is_running() for c in clusters.values())
    pool.remove()


def test_pg_upgrade_check_15_18_to_17_10(pool):
    old = pool.new("15.18", seed=True)
    new_inst = installation("17.10")
    new_dir = str(pool.root / "check17" / "data")
    initdb(new_inst, new_dir, InitdbOptions(), os_user=OS_USER)
    res = HOST.run(
        [
            new_inst.bin("pg_upgrade"),
            "--check",
            "-b", old.bindir, "-B", new_inst.bindir,
            "-d", old.datadir, "-D", new_dir,
            "-p", str(old.port), "-P", str(old.port + 1),
            "-o", f"-c unix_socket_directories={old.host}",
            "-O", f"-c unix_socket_directories={old.host}",
        ],
        user=OS_USER,
        cwd=str(pool.root),
    )  # fmt: skip
    assert "Clusters are compatible" in res.stdout
    with pytest.raises(UnsafeState):
        initdb(new_inst, old.datadir, InitdbOptions(), os_user=OS_USER)


def test_bad_argv_gives_typed_error(pool):
    inst = installation("17")
    with pytest.raises(CommandError) as err:
        HOST.run([inst.bin("pg_upgrade"), "--no-such-option"], user=OS_USER, cwd="/tmp")
    assert err.value.exit_code == 1 and "unrecognized option" in err.value.stderr


@pytest.mark.parametrize("version", ["15.18", "17"])
def test_standin_extension_queue_and_update(pool, version):
    cluster = pool.new(version)
    with connect(cluster, APP_DB) as conn, conn.cursor() as cur:
        assert scalar(conn, "SELECT pg_tviews_version()") == "0.1.5"
        cur.execute("SELECT pg_tviews_refresh('tv_order_totals', true)")
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_get_queue()") == 0
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('new-customer', 1)")
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_get_queue()") >= 1
        assert scalar(conn, "SELECT count(*) FROM tv_order_totals WHERE customer = 'new-customer'") == 0
        cur.execute("SELECT pg_tviews_drain_queue()")
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_get_queue()") == 0
        assert scalar(conn, "SELECT count(*) FROM tv_order_totals WHERE customer = 'new-customer'") == 1
        cur.execute("ALTER EXTENSION pg_tviews UPDATE TO '0.2.0'")
        assert scalar(conn, "SELECT pg_tviews_version()") == "0.2.0"
        assert scalar(conn, "SELECT count(*) FROM pg_proc WHERE proname = 'pg_tviews_refresh_async'") == 0
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'pg_tviews_metadata'")
        cols = {r[0] for r in cur.fetchall()}
        assert {"stats_last_computed", "query_plan", "source_hash"} <= cols and "internal_version" not in cols
        cur.execute("SELECT pg_tviews_refresh('tv_order_totals')")
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_stats()") == 2
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_validate()") == 0
