"""Real PostgreSQL servers for tests: any installed version, as the postgres OS user, in temp dirs.

Versions are named "15.18", "15.20", "16", "17", "18" (a bare major means the newest installed minor).
The stand-in pg_tviews extension (tests/extension/pg_tviews) is copied into each version's share dir.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from pgupgrade import identity, versions
from pgupgrade.cluster import Cluster, Service
from pgupgrade.commands import LocalHost
from pgupgrade.scratch import InitdbOptions, create_cluster, write_settings
from pgupgrade.sql import connect
from pgupgrade.state import ClusterLock, FileRunStore, state_root
from pgupgrade.state.control import ControlStore

HOST = LocalHost()
OS_USER = "postgres"
EXT_SRC = Path(__file__).resolve().parent / "extension" / "pg_tviews"
BASE = Path(os.environ.get("PGUPGRADE_TEST_DIR", "/tmp/pgupgrade-tests"))
# below Linux's ephemeral range (32768-60999): a server that listens on TCP must never find its port taken by a
# client's outgoing connection while it is stopped (a cutover restarts it on the same port); and outside the
# product's private ports (20000-29999, services.private_port); 100 per worker
_ports = itertools.count(10000 + (os.getpid() % 90) * 100)


def server_port() -> int:
    """A port for a test's PostgreSQL server (this worker's range, below the ephemeral one)."""
    return next(_ports)


@cache
def all_installations() -> list[versions.Installation]:
    return versions.discover()


def installation(version: str) -> versions.Installation:
    wanted = versions.Version.parse(version)
    exact = "." in version
    for inst in all_installations():
        if (exact and inst.version == wanted) or (not exact and inst.major == wanted.major):
            install_standin(inst)
            return inst
    have = ", ".join(str(i.version) for i in all_installations())
    raise LookupError(f"PostgreSQL {version} is not installed here (have: {have}); run include/scripts/install.sh")


@cache
def install_standin(inst: versions.Installation) -> None:
    target = Path(inst.extension_dir)
    for src in EXT_SRC.glob("pg_tviews*"):
        shutil.copy2(src, target / src.name)


def session_dir() -> Path:
    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o755)
    path = Path(tempfile.mkdtemp(prefix=f"s{os.getpid()}-", dir=BASE))
    shutil.chown(path, OS_USER, OS_USER)
    return path


@dataclass
class Pool:
    """Every cluster a test session started; ``close`` stops them all."""

    root: Path = field(default_factory=session_dir)
    clusters: list[Cluster] = field(default_factory=list)

    def new(
        self,
        version: str,
        name: str | None = None,
        *,
        seed: bool = True,
        checksums: bool = False,
        settings: dict[str, str] | None = None,
        wal_mb: int = 16,
    ) -> Cluster:
        inst = installation(version)
        port = server_port()
        name = name or f"pg{inst.major}_{port}"
        home = self.root / name
        cluster = create_cluster(
            inst,
            str(home / "data"),
            name=name,
            port=port,
            socket_dir=str(home / "sock"),
            os_user=OS_USER,
            options=InitdbOptions(checksums=checksums, wal_segsize_mb=wal_mb),
            settings={"work_mem": "'7MB'", "fsync": "off", **(settings or {})},
        )
        self.clusters.append(cluster)
        if seed:
            seed_data(cluster)
        return cluster

    def standby(self, primary: Cluster, name: str | None = None, *, start: bool = True) -> Cluster:
        """A streaming standby of ``primary`` on this host: ``pg_basebackup -R`` over the primary's Unix socket,
        its own port, socket and ``cluster_name`` (the name it streams under), started unless asked not to."""
        port = server_port()
        name = name or f"{primary.name}_s{port}"
        home = self.root / name
        HOST.run(["mkdir", "-p", str(home / "sock")], user=OS_USER)
        HOST.run(
            [primary.bin("pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", primary.user,
             "-D", str(home / "data"), "-R", "-X", "stream", "-c", "fast", "-w"],
            user=OS_USER,
            timeout=600,
        )  # fmt: skip
        settings = {"port": str(port), "unix_socket_directories": f"'{home / 'sock'}'", "cluster_name": f"'{name}'"}
        write_settings(HOST, f"{home}/data/postgresql.conf", settings, OS_USER)
        standby = replace(
            primary, name=name, host=str(home / "sock"), port=port, datadir=str(home / "data"), standbys=()
        )
        if start:
            Service(standby, HOST).start()
        self.clusters.append(standby)
        return standby

    def with_config_outside(self, cluster: Cluster) -> Cluster:
        """Moves the configuration files out of the data directory, as Debian's pg_createcluster lays them
        out (data_directory, hba_file and ident_file set in postgresql.conf); restarts the cluster."""
        svc = Service(cluster, HOST)
        svc.stop()
        confdir = str(Path(cluster.datadir).parent / "etc")
        HOST.run(["mkdir", "-p", confdir], user=OS_USER)
        for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
            HOST.run(["mv", f"{cluster.datadir}/{name}", f"{confdir}/{name}"], user=OS_USER)
        moved = replace(cluster, confdir=confdir)
        write_settings(
            HOST,
            f"{confdir}/postgresql.conf",
            {
                "data_directory": f"'{cluster.datadir}'",
                "hba_file": f"'{confdir}/pg_hba.conf'",
                "ident_file": f"'{confdir}/pg_ident.conf'",
                "cluster_name": f"'{cluster.name}'",
            },
            OS_USER,
        )
        Service(moved, HOST).start()
        self.clusters[self.clusters.index(cluster)] = moved
        return moved

    def track(self, cluster: Cluster) -> Cluster:
        self.clusters.append(cluster)
        return cluster

    def close(self) -> None:
        for c in self.clusters:
            if Path(c.datadir, "postmaster.pid").exists():
                HOST.run([c.bin("pg_ctl"), "-D", c.datadir, "-m", "immediate", "-w", "stop"], user=OS_USER, check=False)
        for pid in postmasters_under(self.root):  # servers started by code under test and not tracked
            os.kill(pid, 9)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def postmasters_under(root: Path) -> list[int]:
    """PIDs of postgres processes whose command line names a directory below root."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"postgres") and any(str(root).encode() in part for part in cmd):
            pids.append(int(proc.name))
    return pids


def connection_env(cluster: Cluster, conn_id: str | None = None) -> tuple[str, str]:
    """(variable, value) that makes the cluster an Airflow connection through the environment secrets backend."""
    conn_id = conn_id or cluster.name
    value = {
        "conn_type": "postgres",
        "host": cluster.host,
        "port": cluster.port,
        "schema": cluster.dbname,
        "login": cluster.user,
        "password": cluster.password or "",
        "extra": cluster.to_extra(),
    }
    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value)


APP_DB = "app"
TVIEW = "tv_order_totals"
BACKING = "orders"


def seed_data(cluster: Cluster, rows: int = 1000) -> None:
    """Two databases, a role, tables with rows, and the stand-in extension at 0.1.5 with two TVIEWs."""
    with connect(cluster) as conn, conn.cursor() as cur:
        cur.execute("CREATE ROLE app_user LOGIN")
        cur.execute("CREATE DATABASE app OWNER app_user")
        cur.execute("CREATE DATABASE reporting")
    with connect(cluster, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTENSION pg_tviews VERSION '0.1.5'")
        cur.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute(
            "INSERT INTO orders (customer, amount) SELECT 'c' || (g %% 37), (g %% 1000) / 10.0"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        cur.execute("CREATE TABLE customers (name text PRIMARY KEY, country text)")
        cur.execute("INSERT INTO customers SELECT 'c' || g, 'DE' FROM generate_series(0, 36) g")
        cur.execute(
            "SELECT pg_tviews_create('tv_order_totals', 'orders',"
            " 'SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer')"
        )
        cur.execute("SELECT pg_tviews_create('tv_customers', 'customers', 'SELECT name, country FROM customers')")
        cur.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_user")
    with connect(cluster, "reporting") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb)")
        cur.execute(
            "INSERT INTO events SELECT g, jsonb_build_object('n', g) FROM generate_series(1, %s) g", (rows // 2,)
        )


# -- what a server serves after a run: its version, the seeded data, the facts ------------------------------------


def track_new(pool: Pool, old: Cluster, conf: dict[str, object]) -> Cluster:
    from dataclasses import replace

    return pool.track(replace(old, bindir=str(conf["new_bindir"]), datadir=str(conf["new_datadir"])))


def served_version(cluster: Cluster) -> int:
    from pgupgrade.sql import scalar

    with connect(cluster) as conn:
        return int(scalar(conn, "SHOW server_version_num")) // 10000


def served(cluster: Cluster) -> tuple[int, str]:
    from pgupgrade.sql import scalar

    with connect(cluster) as conn:
        return int(scalar(conn, "SHOW server_version_num")), str(scalar(conn, "SELECT version()"))


def data_checks_out(cluster: Cluster, orders: int = 1000) -> None:
    from pgupgrade.sql import scalar

    with connect(cluster, APP_DB) as conn:
        assert scalar(conn, "SELECT count(*) FROM orders") == orders
        assert scalar(conn, "SELECT count(*) FROM tv_order_totals") == 37
        assert scalar(conn, "SELECT count(*) FROM pg_tviews_metadata WHERE last_error IS NOT NULL") == 0
        assert scalar(conn, "SELECT pg_tviews_version()") == "0.1.5"
        assert scalar(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_user'") is True


def same_rows(a: dict[str, Any], b: dict[str, Any]) -> None:
    from pgupgrade import facts

    assert facts.compare(a, b, same_extension_versions=True) == []
    assert a["databases"].keys() == b["databases"].keys()


class WriteProbe:
    """An application that never stops: a separate process (so a busy caller cannot delay it) inserts a numbered
    row every interval, reconnects after errors, and records which inserts the server acknowledged (committed),
    with their monotonic times (CLOCK_MONOTONIC is system-wide, so comparable with the caller's).

    Every attempt takes a fresh id: an insert that committed but whose acknowledgement was lost leaves a row
    that is simply not counted, instead of wedging the probe on a primary-key conflict. ``pause``/``resume``
    model the application being stopped and started by an operator. The process is spawned (a caller running
    threads is never forked), so a script that uses the probe needs the ``if __name__ == "__main__":`` guard."""

    def __init__(self, cluster: Cluster, dbname: str = APP_DB, user: str = "app_user", interval: float = 0.05):
        import multiprocessing as mp

        self.cluster, self.dbname, self.user, self.interval = cluster, dbname, user, interval
        ctx = mp.get_context("spawn")  # no fork of a caller that runs threads (Airflow, samplers)
        self._queue: Any = ctx.Queue()
        self._stop, self._paused, self._ready = ctx.Event(), ctx.Event(), ctx.Event()
        self._errors: Any = ctx.Value("i", 0)
        conninfo = {
            **cluster.conninfo(dbname),
            "user": user,
            "connect_timeout": 2,
            "application_name": "write_probe",
            "options": "-c statement_timeout=5000",
        }
        self._proc = ctx.Process(
            target=_probe_loop,
            args=(conninfo, interval, self._queue, self._stop, self._paused, self._ready, self._errors),
            daemon=True,
        )
        self._acked: list[tuple[int, float]] = []
        self._done = False

    @staticmethod
    def create_table(cluster: Cluster, dbname: str = APP_DB, user: str = "app_user") -> None:
        from psycopg2 import sql as psql

        with connect(cluster, dbname) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS write_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            cur.execute(psql.SQL("GRANT ALL ON write_probe TO {}").format(psql.Identifier(user)))

    def start(self, timeout: float = 30) -> WriteProbe:
        """Starts the process and returns once it has had its first insert acknowledged."""
        self._proc.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"write probe: no insert acknowledged within {timeout}s ({self.errors} errors)")
        return self

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        self._drain(until_done=True)  # before join: a process with queued items does not exit
        self._proc.join(timeout=10)

    def _drain(self, until_done: bool = False) -> None:
        import queue

        while not self._done:
            try:
                item = self._queue.get(timeout=0.5) if until_done else self._queue.get_nowait()
            except queue.Empty:
                if until_done and self._proc.is_alive():
                    continue
                return
            if item is None:
                self._done = True
            else:
                self._acked.append(item)

    @property
    def acked(self) -> list[tuple[int, float]]:
        """(id, monotonic time) of every acknowledged insert so far."""
        self._drain()
        return self._acked

    @property
    def errors(self) -> int:
        return int(self._errors.value)

    def longest_gap(self) -> float:
        times = [t for _, t in self.acked]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def lost(self, cluster: Cluster) -> list[int]:
        """Acknowledged ids missing from the table in cluster (after an upgrade: the new one)."""
        with connect(cluster, self.dbname) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM write_probe")
            present = {r[0] for r in cur.fetchall()}
        return [i for i, _ in self.acked if i not in present]

    missing = lost


def _probe_loop(
    conninfo: dict[str, Any], interval: float, out: Any, stop: Any, paused: Any, ready: Any, errors: Any
) -> None:
    """The probe process: one attempt per interval, each with a fresh id; (id, time) of each acknowledged one."""
    import time

    import psycopg2

    attempt, conn = 0, None
    try:
        while not stop.is_set():
            if paused.is_set():
                if conn is not None:
                    conn.close()
                    conn = None
                stop.wait(interval)
                continue
            attempt += 1
            try:
                if conn is None:
                    conn = psycopg2.connect(**conninfo)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO write_probe (id) VALUES (%s)", (attempt,))
                out.put((attempt, time.monotonic()))
                ready.set()
            except psycopg2.Error:
                with errors.get_lock():
                    errors.value += 1
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn = None
            stop.wait(interval)
    finally:
        if conn is not None:
            conn.close()
        out.put(None)


def control_store(cluster: Cluster, db: str, *, create: bool = False, root: Path | None = None) -> ControlStore:
    """The control-database store in database ``db`` of a test cluster (``create``: the database first)."""
    if create:
        with connect(cluster) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}"')
    info = cluster.conninfo(db)
    info.pop("application_name", None)
    return ControlStore(info, root=root) if root else ControlStore(info)


def lock_of(cluster: Cluster, root: Path | None = None) -> ClusterLock:
    """The file store's lock of a cluster on this machine, under the key the runs use."""
    return FileRunStore(root or state_root()).cluster_lock(identity.lock_key(cluster, HOST))


def ensure_locale(name: str = "fr_FR.UTF-8") -> str:
    """A libc locale the servers can use: generated with localedef when ``locale -a`` lacks it (as root, into the
    system's locale archive; idempotent). Returns the name."""

    def have() -> bool:
        listed = HOST.run(["locale", "-a"]).stdout.split()
        return name.lower().replace("utf-8", "utf8") in {n.lower() for n in listed}

    if not have():
        lang, charmap = name.split(".", 1)
        HOST.run(["localedef", "-i", lang, "-f", charmap, name], timeout=120)
    assert have(), f"locale {name} missing after localedef"
    return name


def wait_replayed(standby: Cluster, query: str, params: tuple[Any, ...], timeout: float = 60) -> None:
    """Until ``query`` (one value) is true on the standby in the application database: a row replayed there."""
    deadline = time.monotonic() + timeout
    while True:
        with connect(standby, APP_DB) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            if cur.fetchone()[0]:
                return
        assert time.monotonic() < deadline, f"{query} {params}: not replayed by {standby.name} after {timeout}s"
        time.sleep(0.2)


def wait_streaming(primary: Cluster, names: set[str], timeout: float = 60) -> None:
    """Until the primary streams to every standby named (application_name in pg_stat_replication)."""
    deadline = time.monotonic() + timeout
    while True:
        with connect(primary) as conn, conn.cursor() as cur:
            cur.execute("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
            if names <= {r[0] for r in cur.fetchall()}:
                return
        assert time.monotonic() < deadline, f"{names} not streaming after {timeout}s"
        time.sleep(0.3)
