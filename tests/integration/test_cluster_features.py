"""Every cluster feature a DBA relies on survives a major upgrade in every transfer mode, and its rollback:
a tablespace (a table and an index in it), ``conf.d`` (include_dir), ``ALTER SYSTEM``, an extension whose library
is preloaded (pg_stat_statements), a partitioned table, an unlogged table, large objects, and a database with a
non-default libc locale (generated here) with an index on a text column.

CI covers each mode once across upgrade and rollback (link → 17, swap → 18, dump/restore → 17 upgrades; copy → 18
rollback; clone: the upgrade where the filesystem makes reflinks, else the plan's clear refusal); every other
mode x {upgrade, rollback} runs under ``-m slow``."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgupgrade import collations
from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_helpers import STATE, assert_rolled_back, report_of, run, upgrade_conf
from pgharness import APP_DB, HOST, OS_USER, Pool, ensure_locale, served_version, track_new

pytestmark = pytest.mark.usefixtures("airflow_home")

ROOT = Path(__file__).resolve().parents[2]
LOCALE = "fr_FR.UTF-8"
INTL_DB = "intl"
SPACE = "fast"
PRELOAD = "pg_stat_statements"
WORDS = ["cote", "côte", "coté", "côté", "Zèbre", "zèbre", "abricot", "Éclair", "eclair", "été", "etre", "être"]


def _conf_d_carried() -> bool:
    """Whether the include_dir carry-over (issue 15 item 2) is in: until then the new cluster would refuse to start
    on the copied ``include_dir = 'conf.d'`` (the directory is not carried), so the fixture leaves conf.d out."""
    config = ROOT / "include" / "pgupgrade" / "config.py"
    return config.exists() and "include_dir" in config.read_text()


CONF_D = _conf_d_carried()
CONF_D_PENDING = "conf.d carry-over: issue 15 item 2 in progress"


@dataclass(frozen=True)
class Features:
    cluster: Cluster
    tablespace_dir: str
    before: dict[str, Any]


def feature_cluster(pool: Pool) -> Features:
    """A 15 cluster (seeded as every test's) carrying every feature; its feature snapshot taken before any run."""
    ensure_locale(LOCALE)
    old = pool.new("15.18", settings={"shared_preload_libraries": f"'{PRELOAD}'"})
    home = Path(old.datadir).parent
    tblspc = str(home / "tblspc")  # outside the data directory, owned by postgres
    HOST.run(["mkdir", "-m", "0700", tblspc], user=OS_USER)
    if CONF_D:
        HOST.run(["mkdir", f"{old.config_dir}/conf.d"], user=OS_USER)
        HOST.run(["tee", f"{old.config_dir}/conf.d/10-dba.conf"], user=OS_USER, stdin="maintenance_work_mem = '77MB'\n")
        HOST.run(["tee", "-a", f"{old.config_dir}/postgresql.conf"], user=OS_USER, stdin="include_dir = 'conf.d'\n")
    with connect(old) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLESPACE {SPACE} LOCATION %s", (tblspc,))
        cur.execute("ALTER SYSTEM SET work_mem = '9MB'")
        cur.execute("SELECT pg_reload_conf()")
        cur.execute(f"CREATE DATABASE {INTL_DB} ENCODING 'UTF8' LOCALE %s TEMPLATE template0", (LOCALE,))
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE EXTENSION {PRELOAD}")
        cur.execute(
            f"CREATE TABLE ts_items (id int PRIMARY KEY USING INDEX TABLESPACE {SPACE}, label text) TABLESPACE {SPACE}"
        )
        cur.execute("INSERT INTO ts_items SELECT g, 'item ' || g FROM generate_series(1, 300) g")
        cur.execute(f"CREATE INDEX ts_items_label ON ts_items (label) TABLESPACE {SPACE}")
        cur.execute("CREATE TABLE measurements (id int, at date NOT NULL, v numeric) PARTITION BY RANGE (at)")
        cur.execute(
            "CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"
        )
        cur.execute(
            "CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
            " PARTITION BY LIST (id)"
        )
        cur.execute("CREATE TABLE measurements_2026_odd PARTITION OF measurements_2026 FOR VALUES IN (1, 3, 5, 7, 9)")
        cur.execute("CREATE TABLE measurements_2026_rest PARTITION OF measurements_2026 DEFAULT")
        cur.execute("CREATE TABLE measurements_other PARTITION OF measurements DEFAULT")
        cur.execute(
            "INSERT INTO measurements SELECT g % 10, date '2024-12-01' + g, g / 7.0 FROM generate_series(1, 800) g"
        )
        cur.execute("CREATE INDEX ON measurements (at)")
        cur.execute("CREATE UNLOGGED TABLE sessions_cache (k text PRIMARY KEY, v int)")
        cur.execute("INSERT INTO sessions_cache SELECT 'k' || g, g FROM generate_series(1, 250) g")
        cur.execute("CREATE TABLE lo_refs (name text PRIMARY KEY, loid oid NOT NULL)")
        cur.execute(
            "INSERT INTO lo_refs VALUES ('small', lo_from_bytea(0, convert_to('grüße', 'UTF8'))),"
            " ('big', lo_from_bytea(0, decode(repeat('00ff7f', 40000), 'hex')))"
        )
    with connect(old, INTL_DB) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE words (id serial PRIMARY KEY, w text NOT NULL)")
        cur.execute("INSERT INTO words (w) SELECT unnest(%s::text[])", (WORDS,))
        cur.execute("CREATE INDEX words_w ON words (w)")
        cur.execute("ANALYZE words")
    return Features(old, tblspc, features(old, tblspc))


def _hashes(conn: Any) -> dict[str, list[Any]]:
    """[rows, md5 of the rows in C order] of every user table (partitioned parents counted through their leaves)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
        )
        names = [r[0] for r in cur.fetchall()]
        out = {}
        for name in names:
            cur.execute(
                f"SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text COLLATE \"C\"), ''))"
                f" FROM {name} x"
            )
            rows, md5 = cur.fetchone()
            out[name] = [rows, None if name == "public.pg_tviews_metadata" else md5]  # its refresh times change
    return out


def _one(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def _all(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]


def features(cluster: Cluster, tblspc: str) -> dict[str, Any]:
    """What the cluster shows of every feature (compared before/after; the absolute checks are in check_features)."""
    out: dict[str, Any] = {}
    with connect(cluster) as conn:
        out["major"] = int(scalar(conn, "SHOW server_version_num")) // 10000
        out["tablespaces"] = _all(
            conn, "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname !~ '^pg_' ORDER BY 1"
        )
        out["work_mem"] = _one(conn, "SELECT setting, unit, sourcefile FROM pg_settings WHERE name = 'work_mem'")
        out["maintenance_work_mem"] = scalar(conn, "SHOW maintenance_work_mem")
        out["preload"] = scalar(conn, "SHOW shared_preload_libraries")
        out["intl"] = _one(
            conn, "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = %s",
            (INTL_DB,),
        )  # fmt: skip
    with connect(cluster, APP_DB) as conn:
        out["app_tables"] = _hashes(conn)
        out["in_tablespace"] = _all(
            conn,
            "SELECT c.relname FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace"
            " WHERE t.spcname = %s AND c.relnamespace = 'public'::regnamespace ORDER BY 1",
            (SPACE,),
        )
        out["partition_tree"] = _all(
            conn,
            "SELECT t.relid::text, coalesce(t.parentrelid::text, ''), t.isleaf, t.level,"
            " coalesce(pg_get_expr(c.relpartbound, c.oid), '') FROM pg_partition_tree('measurements') t"
            " JOIN pg_class c ON c.oid = t.relid ORDER BY 1",
        )
        out["unlogged"] = _all(
            conn,
            "SELECT relname FROM pg_class WHERE relpersistence = 'u' AND relnamespace = 'public'::regnamespace"
            " ORDER BY 1",
        )
        out["large_objects"] = _all(
            conn,
            "SELECT r.name, r.loid::bigint, md5(lo_get(r.loid)), length(lo_get(r.loid)) FROM lo_refs r ORDER BY 1",
        )
        out["large_object_count"] = scalar(conn, "SELECT count(*) FROM pg_largeobject_metadata")
        out["extension"] = _one(
            conn,
            "SELECT e.extversion, a.default_version FROM pg_extension e"
            " JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = %s",
            (PRELOAD,),
        )
    with connect(cluster, INTL_DB) as conn:
        out["intl_tables"] = _hashes(conn)
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            cur.execute("SET enable_bitmapscan = off")
            cur.execute("EXPLAIN (FORMAT JSON) SELECT w FROM words ORDER BY w")
            out["words_plan"] = cur.fetchone()[0][0]["Plan"]["Node Type"]
            cur.execute("SELECT w FROM words ORDER BY w")
            out["words_sorted"] = [r[0] for r in cur.fetchall()]
    return out


def check_features(feat: Features, cluster: Cluster, major: int) -> dict[str, Any]:
    """Every feature proven on ``cluster`` (after an upgrade: the new one serving; after a rollback: the old one)."""
    now = features(cluster, feat.tablespace_dir)
    before = feat.before
    assert now["major"] == major
    # tablespace: the same location, its table and indexes in it, the files under the serving major's directory
    assert now["tablespaces"] == [(SPACE, feat.tablespace_dir)] == before["tablespaces"]
    assert now["in_tablespace"] == before["in_tablespace"] == [("ts_items",), ("ts_items_label",), ("ts_items_pkey",)]
    assert list(Path(feat.tablespace_dir).glob(f"PG_{major}_*")), sorted(Path(feat.tablespace_dir).iterdir())
    # ALTER SYSTEM: in effect, from postgresql.auto.conf
    setting, unit, source = now["work_mem"]
    assert (setting, unit) == ("9216", "kB") and source.endswith("postgresql.auto.conf"), now["work_mem"]
    # the preloaded library and its extension: loaded, the view readable, at the installation's default version
    assert PRELOAD in now["preload"]
    installed, default = now["extension"]
    assert installed == default if major > 15 else installed == before["extension"][0], now["extension"]
    with connect(cluster, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) >= 0 FROM pg_stat_statements") is True
    # data: every table's rows and content, the partition tree, the unlogged table, the large objects' bytes
    assert now["app_tables"] == before["app_tables"]
    assert now["app_tables"]["public.measurements"][0] == 800 and now["app_tables"]["public.ts_items"][0] == 300
    assert now["partition_tree"] == before["partition_tree"] and len(now["partition_tree"]) == 6
    assert now["unlogged"] == before["unlogged"] and ("sessions_cache",) in now["unlogged"]
    assert now["app_tables"]["public.sessions_cache"][0] == 250
    assert now["large_objects"] == before["large_objects"] and now["large_object_count"] == 2
    assert [lo[3] for lo in now["large_objects"]] == [120000, 7]
    # the locale database: its collation, and an index scan that sorts per fr_FR (not per byte)
    assert now["intl"] == before["intl"] == ("UTF8", LOCALE, LOCALE)
    assert now["intl_tables"] == before["intl_tables"]
    assert now["words_plan"] in ("Index Scan", "Index Only Scan"), now["words_plan"]
    assert now["words_sorted"] == before["words_sorted"] != sorted(WORDS)  # sorted(): code points, as "C"
    assert now["words_sorted"].index("côte") < now["words_sorted"].index("Zèbre")
    if CONF_D:
        assert now["maintenance_work_mem"] == "77MB"
    return now


def _ok(dr: Any, states: dict[str, str]) -> None:
    assert dr.state == "success", {t: s for t, s in states.items() if s != "success"}


def _conf(pool: Pool, old: Cluster, major: int, mode: str) -> dict[str, object]:
    extra = {"method": "dump_restore"} if mode == "dump_restore" else {"transfer_mode": mode}
    return upgrade_conf(pool, old, str(major), target_major=major, verify_content=True, **extra)


def _end_of_check() -> None:
    if not CONF_D:
        pytest.xfail(CONF_D_PENDING)  # every other feature was proven above


def upgrade_case(pool: Pool, mode: str, major: int, *, drift: bool = False) -> None:
    """``drift``: the old cluster records another libc version for the fr_FR database (as after an OS upgrade)."""
    started = time.monotonic()
    feat = feature_cluster(pool)
    old = feat.cluster
    if drift:
        with connect(old) as conn, conn.cursor() as cur:
            cur.execute("UPDATE pg_database SET datcollversion = '2.1' WHERE datname = %s", (INTL_DB,))
    conf = _conf(pool, old, major, mode)
    new = track_new(pool, old, conf)
    dr, states = run("pg_major_upgrade", conf)
    _ok(dr, states)
    plan = RunState.for_run("pg_major_upgrade", dr.run_id, STATE).load("plan")
    assert plan["method"] == ("dump_restore" if mode == "dump_restore" else "pg_upgrade")
    assert served_version(old) == major
    check_features(feat, new, major)
    intl = (INTL_DB, "default", ["public.words_w"])
    if drift:  # the plan named the index; the after phase rebuilt it and refreshed the database's version
        assert [(c["database"], c["collation"], c["indexes"]) for c in plan["collations"]["changed"]] == [intl]
        warning = next(w for w in plan["warnings"] if "collation" in w)
        assert "REINDEX" in warning and "public.words_w" in warning and f"ALTER DATABASE {INTL_DB} REFRESH" in warning
        assert states["after.collations"] == "success"
    else:  # same libc here: the plan found every collation version equal
        assert not plan["collations"]["changed"] and plan["collations"]["summary"].endswith("no index needs rebuilding")
        assert intl in [(c["database"], c["collation"], c["indexes"]) for c in plan["collations"]["equal"]]
    assert collations.database_versions(new, [INTL_DB, APP_DB]) == []  # no database left to refresh
    rep = report_of(STATE, "pg_major_upgrade", dr.run_id)
    print(f"features {mode} → {major}: {time.monotonic() - started:.1f}s, outage {rep['outage']['seconds']}s")
    _end_of_check()


ROLLBACK_PATH = {"link": "restore_backup", "swap": "restore_backup", "copy": "old_intact", "clone": "old_intact",
                 "dump_restore": "old_intact"}  # fmt: skip


def rollback_case(pool: Pool, monkeypatch: pytest.MonkeyPatch, mode: str, major: int) -> None:
    started = time.monotonic()
    feat = feature_cluster(pool)
    old = feat.cluster
    conf = _conf(pool, old, major, mode)
    track_new(pool, old, conf)
    monkeypatch.setenv("PGUPGRADE_INJECT_FAILURE", "health_check")  # after the new cluster started
    dr, states = run("pg_major_upgrade", conf)
    assert dr.state == "failed", states
    monkeypatch.delenv("PGUPGRADE_INJECT_FAILURE")
    assert_rolled_back(old, "pg_major_upgrade", dr.run_id, ROLLBACK_PATH[mode])
    check_features(feat, old, 15)
    # the new cluster's tablespace directory moved aside, not left where the next run's pg_upgrade would refuse it
    names = sorted(p.name for p in Path(feat.tablespace_dir).iterdir())
    assert not [n for n in names if re.fullmatch(rf"PG_{major}_\d+", n)], names
    assert [n for n in names if re.fullmatch(rf"PG_{major}_\d+\.rolled-back-\d{{8}}T\d{{6}}", n)], names
    print(f"features {mode} → {major} rollback: {time.monotonic() - started:.1f}s")
    _end_of_check()


def reflinks_supported(directory: Path) -> bool:
    """Whether the filesystem holding ``directory`` clones files (``cp --reflink=always`` succeeds)."""
    src, dst = directory / ".reflink-probe", directory / ".reflink-probe-copy"
    src.write_bytes(b"x" * 4096)
    try:
        return subprocess.run(["cp", "--reflink=always", str(src), str(dst)], capture_output=True).returncode == 0
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# -- CI: each transfer mode once across upgrade and rollback -------------------------------------------------------


def test_link_to_17_carries_every_feature(pool):
    upgrade_case(pool, "link", 17)


@pytest.mark.full  # CI budget: link, dump_restore and the copy rollback run in CI
def test_swap_to_18_carries_every_feature(pool):
    """… and rebuilds the index of a collation whose version changed (the plan named it), then refreshes it."""
    upgrade_case(pool, "swap", 18, drift=True)


@pytest.mark.full  # CI budget: the dump/restore method itself is in CI (test_major_methods, test_major_rollback)
def test_dump_restore_to_17_carries_every_feature(pool):
    upgrade_case(pool, "dump_restore", 17)


def test_copy_to_18_rollback_brings_every_feature_back(pool, monkeypatch):
    rollback_case(pool, monkeypatch, "copy", 18)


@pytest.mark.full
def test_clone_upgrades_or_the_plan_refuses_clearly(pool):
    """clone needs a filesystem that makes reflinks: there the upgrade carries every feature; elsewhere the plan
    refuses before anything stops, and says that clone is what the filesystem cannot do."""
    if reflinks_supported(pool.root):
        upgrade_case(pool, "clone", 17)
        return
    feat = feature_cluster(pool)
    old = feat.cluster
    conf = _conf(pool, old, 17, "clone")
    dr, states = run("pg_major_upgrade", conf)
    assert dr.state == "failed" and states["plan.plan"] == "failed", states
    state = RunState.for_run("pg_major_upgrade", dr.run_id, STATE)
    error = next(e["error"] for e in state.events() if e["event"] == "step" and e["status"] == "failed")
    assert "clone" in error and ("not supported" in error.lower() or "reflink" in error.lower()), error
    assert not state.happened("old_stop_requested") and served_version(old) == 15
    assert not Path(str(conf["new_datadir"])).exists()
    check_features(feat, old, 15)


# -- slow: every other mode x {upgrade, rollback} --------------------------------------------------------------------


@pytest.mark.full
@pytest.mark.parametrize(("mode", "major"), [("copy", 17), ("link", 18), ("swap", 18), ("dump_restore", 18)])
def test_upgrade_every_mode(pool, mode, major):
    upgrade_case(pool, mode, major)


BASE_BACKUP_LOSES_UNLOGGED = pytest.mark.xfail(
    strict=True,
    reason="the link/swap way back (base backup + WAL replay) empties unlogged tables, as PostgreSQL does after any "
    "recovery: the rollback accepts and reports them empty (unlogged_tables_emptied); this checker counts their rows",
)


@pytest.mark.full
@pytest.mark.parametrize(
    ("mode", "major"),
    [
        pytest.param("link", 17, marks=BASE_BACKUP_LOSES_UNLOGGED),
        pytest.param("swap", 18, marks=BASE_BACKUP_LOSES_UNLOGGED),
        ("dump_restore", 17),
        ("copy", 17),
    ],
)
def test_rollback_every_mode(pool, monkeypatch, mode, major):
    rollback_case(pool, monkeypatch, mode, major)


@pytest.mark.full
def test_clone_rollback_where_reflinks_work(pool, monkeypatch):
    if not reflinks_supported(pool.root):
        pytest.skip(
            "this filesystem makes no reflinks: test_clone_upgrades_or_the_plan_refuses_clearly proves the refusal"
        )
    rollback_case(pool, monkeypatch, "clone", 17)


# -- collation versions: the plan compares them and names the indexes to rebuild -------------------------------------


@pytest.mark.full  # test_swap_to_18_carries_every_feature (full) also rebuilds such a change
def test_plan_names_the_indexes_to_rebuild_when_a_collation_version_changes(pool):
    """The old cluster records another libc version for the fr_FR database than the new installation gives it
    (as after an OS upgrade): the plan warns, names the index that sorts by it, and says to REINDEX it, then
    REFRESH the database's collation version; the equal default collations of the others are reported equal."""
    feat = feature_cluster(pool)
    old = feat.cluster
    with connect(old) as conn, conn.cursor() as cur:
        cur.execute("UPDATE pg_database SET datcollversion = '2.1' WHERE datname = %s", (INTL_DB,))
    conf = _conf(pool, old, 17, "link")
    dr, states = run("pg_major_upgrade", {**conf, "dry_run": True})
    _ok(dr, states)
    plan = RunState.for_run("pg_major_upgrade", dr.run_id, STATE).load("plan")
    changed = plan["collations"]["changed"]
    assert [(c["database"], c["collation"], c["old_version"], c["indexes"]) for c in changed] == [
        (INTL_DB, "default", "2.1", ["public.words_w"])
    ], changed
    assert plan["collations"]["reindex"] == {INTL_DB: ["public.words_w"]}
    warning = next(w for w in plan["warnings"] if "collation" in w)
    assert "REINDEX" in warning and "public.words_w" in warning and f"ALTER DATABASE {INTL_DB} REFRESH" in warning
    assert served_version(old) == 15 and not Path(str(conf["new_datadir"])).exists()
