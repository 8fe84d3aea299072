"""The benchmark's scenarios: each runs once on fresh clones of the template and returns its measurements.

Outage is what a client sees: the longest gap between acknowledged inserts of the write probe
(``pgharness.WriteProbe``, a separate process inserting every 50 ms and reconnecting after errors).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.clusters import HOST, clone, home_of, teardown
from pgupgrade import scratch, services
from pgupgrade.cluster import Cluster, Service
from pgupgrade.errors import CommandError
from pgupgrade.major import transfer
from pgupgrade.scratch import create_cluster, initdb
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_stack import AirflowStack
from pgharness import APP_DB, OS_USER, Pool, WriteProbe, installation

ROOT = Path(__file__).resolve().parents[1]
NEW = "16"
DATABASES = (APP_DB, "reporting")
MAJOR_DAG, MINOR_DAG = "pg15_to_pg16_upgrade", "pg_minor_upgrade"
ROLLBACK = {MAJOR_DAG: "pg_major_upgrade_rollback", MINOR_DAG: "pg_minor_upgrade_rollback"}
GRACE_S = 2  # terminate_after_s: what a DBA sets once the applications were asked to stop
SEED_SLEEPS = {"after stopping applications": 30, "after stopping PostgreSQL": 5, "after starting": 10}

Measures = dict[str, float]
PRE_CHECKS = (
    "SELECT COUNT(*) FROM pg_tviews_metadata;",
    "SELECT pg_tviews_version();",
    "SELECT COUNT(*) FROM pg_tviews_get_queue();",
    "SELECT COUNT(*) FROM pg_prepared_xacts;",
)


@dataclass
class Env:
    """What every scenario needs: the pool, the stopped template, and (for DAG runs) the Airflow stack."""

    pool: Pool
    template: Cluster
    state_dir: Path
    stack: AirflowStack | None = None
    counter: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**6)))

    def fresh(self, tag: str, template: Cluster | None = None, settings: dict[str, str] | None = None) -> Cluster:
        return clone(self.pool, template or self.template, f"b{next(self.counter)}_{tag}", settings)


def run(argv: list[str], cluster: Cluster | None = None, dbname: str = "postgres", **kw: Any) -> float:
    """One command as postgres (the project's runner); returns its seconds."""
    env = {**(cluster.libpq_env(dbname) if cluster else {}), **kw.pop("env", {})}
    kw.setdefault("timeout", 3600)
    kw.setdefault("cwd", "/tmp")
    return float(HOST.run(argv, user=OS_USER, env=env, **kw).duration_s)


def lost_count(probe: WriteProbe, cluster: Cluster) -> float:
    return float(len(probe.lost(cluster)))


@contextmanager
def probing(cluster: Cluster) -> Iterator[WriteProbe]:
    probe = WriteProbe(cluster).start()
    try:
        time.sleep(0.5)
        yield probe
        time.sleep(1.0)  # acknowledged inserts after the end of the outage
    finally:
        probe.stop()


# -- shell equivalents -------------------------------------------------------------------------------------


def _new_datadir(cluster: Cluster) -> str:
    return str(home_of(cluster) / "data16")


def _work(cluster: Cluster) -> str:
    work = str(home_of(cluster) / "work")
    run(["mkdir", "-p", work])
    return work


def by_hand(old: Cluster, new_dir: str, *options: str) -> list[str]:
    """pg_upgrade as the seed types it (with explicit ports, so it never meets another server's default)."""
    new16 = installation(NEW)
    return [new16.bin("pg_upgrade"), "-b", old.bindir, "-B", new16.bindir, "-d", old.datadir, "-D", new_dir, *options]


def bare_link(env: Env) -> Measures:
    """A bare script doing the essential steps: initdb matching and the configuration copied beforehand, then
    stop (fast), pg_upgrade --link, start."""
    old = env.fresh("bare")
    new16, new_dir, work = installation(NEW), _new_datadir(old), _work(old)
    try:
        with probing(old) as probe:
            t0 = time.monotonic()
            initdb(new16, new_dir, scratch.matching_options(old), os_user=OS_USER, host=HOST)
            run(["cp", f"{old.datadir}/postgresql.conf", f"{old.datadir}/pg_hba.conf", new_dir])
            run([old.bin("pg_ctl"), "-D", old.datadir, "-m", "fast", "-w", "stop"])
            up = run(
                by_hand(old, new_dir, "--link", "-j", "2", "-p", str(old.port + 1), "-P", str(old.port + 2)), cwd=work
            )
            run([new16.bin("pg_ctl"), "-D", new_dir, "-l", f"{new_dir}/startup.log", "-w", "start"])
            total = time.monotonic() - t0
        return {"outage": probe.longest_gap(), "total": total, "pg_upgrade": up, "lost": lost_count(probe, old)}
    finally:
        teardown(old)


def seed_literal(env: Env) -> Measures:
    """The seed's "Step-by-Step: pg_upgrade Method" (PostgreSQL 15 → 16), its commands argv-translated and its
    fixed sleeps kept. The application is the write probe: "systemctl stop myapp" pauses it, "systemctl start
    myapp" resumes it; the new cluster's directory is initdb'd beforehand (Debian's package does that)."""
    old = env.fresh("seed")
    new16, new_dir, work = installation(NEW), _new_datadir(old), _work(old)
    new = old.with_installation(new16.bindir, new_dir)
    sql_file = str(ROOT / "include/sql/post-upgrade-validation.sql")
    failed: list[str] = []

    def psql(cluster: Cluster, query: str, db: str = APP_DB) -> None:
        res = HOST.run(
            [cluster.bin("psql"), "-X", "-tAc", query], user=OS_USER, env=cluster.libpq_env(db), cwd="/tmp", check=False
        )
        if res.exit_code:
            failed.append(query)

    try:
        with probing(old) as probe:
            t0 = time.monotonic()
            # Phase 1 (before the window): support matrix, --check, backup, pre-upgrade analysis
            psql(old, "SELECT version();")
            run([new16.bin("postgres"), "--version"])
            initdb(new16, new_dir, scratch.matching_options(old), os_user=OS_USER, host=HOST)
            ports = ["-p", str(old.port), "-P", str(old.port + 1)]
            run(by_hand(old, new_dir, *ports, "--check"), cwd=work)
            run([old.bin("pg_dump"), "-f", f"{work}/mydb-pg15.sql", APP_DB], old)
            for q in PRE_CHECKS:
                psql(old, q)
            # Phase 2: stop services
            t_window = time.monotonic()
            probe.pause()  # systemctl stop myapp
            time.sleep(SEED_SLEEPS["after stopping applications"])
            psql(old, "SELECT COUNT(*) FROM pg_stat_activity WHERE usename != 'postgres';", "postgres")
            run([old.bin("pg_ctl"), "-D", old.datadir, "-m", "fast", "-w", "stop"])  # systemctl stop postgresql
            time.sleep(SEED_SLEEPS["after stopping PostgreSQL"])
            HOST.run([old.bin("pg_isready"), "-h", old.host, "-p", str(old.port)], check=False)
            # Phase 3: pg_upgrade --link, configuration copied, start
            run(["chmod", "700", new_dir])
            up = run(by_hand(old, new_dir, *ports, "--link"), cwd=work)
            run(["cp", f"{old.datadir}/postgresql.conf", f"{new_dir}/postgresql.conf"])
            run([new16.bin("pg_ctl"), "-D", new_dir, "-l", f"{new_dir}/startup.log", "-w", "start"])
            time.sleep(SEED_SLEEPS["after starting"])
            psql(new, "SELECT version();", "postgres")
            HOST.run([new16.bin("pg_isready"), "-h", new.host, "-p", str(new.port)], check=False)
            # Phase 4: extension (cargo pgrx install skipped: the SQL-only stand-in is installed for 16 already)
            psql(new, "SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews';")
            psql(new, "SELECT pg_tviews_version();")
            for q in (
                "SELECT COUNT(*) FROM pg_tviews_metadata;",
                "SELECT entity_name FROM pg_tviews_metadata WHERE backing_table_name IS NULL;",
                "SELECT COUNT(*) FROM pg_tviews_metadata WHERE last_error IS NOT NULL;",
            ):
                psql(new, q)
            # Phase 5: validation (the seed's health-check.sql → the project's standalone validation script)
            res = HOST.run(
                [new16.bin("psql"), "-X", "-f", sql_file],
                user=OS_USER,
                env=new.libpq_env(APP_DB),
                cwd="/tmp",
                check=False,
            )
            if res.exit_code:
                failed.append("post-upgrade-validation.sql")
            psql(
                new,
                "DO $$ DECLARE rec RECORD; BEGIN FOR rec IN SELECT entity_name FROM pg_tviews_metadata LOOP "
                "PERFORM pg_tviews_refresh(rec.entity_name, force => true); END LOOP; END $$;",
            )
            psql(new, "SELECT COUNT(*) FROM tv_order_totals;")
            # Step 14: restart applications, wait for readiness
            probe.resume()  # systemctl start myapp ("sleep 15" for its readiness follows: outside the outage, not run)
            window = time.monotonic() - t_window
            total = time.monotonic() - t0
        if failed:
            print(f"  seed: {len(failed)} command(s) failed (a bash script goes on): {failed}", flush=True)
        return {
            "outage": probe.longest_gap(),
            "window": window,
            "total": total,
            "pg_upgrade": up,
            "lost": lost_count(probe, old),
        }
    finally:
        teardown(old)


# -- the DAGs under the real scheduler -----------------------------------------------------------------------


class RssSampler:
    """Peak resident memory (VmHWM) of the Python processes below the scheduler (executor workers and task
    processes), sampled from /proc every 0.3 s."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid, self.peak_kb, self.peak_cmd = root_pid, 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            parent: dict[int, int] = {}
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        continue
            for pid in parent:
                p, under = parent.get(pid), False
                while p and p > 1:
                    if p == self.root_pid:
                        under = True
                        break
                    p = parent.get(p)
                if not under:
                    continue
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                except OSError:
                    continue
                m = re.search(r"VmHWM:\s+(\d+) kB", status)
                if m and "postgres" not in cmd and int(m.group(1)) > self.peak_kb:
                    self.peak_kb, self.peak_cmd = int(m.group(1)), cmd[:120]


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def register(stack: AirflowStack, cluster: Cluster) -> str:
    """The cluster as an Airflow postgres connection, created through the REST API (the stack runs already)."""
    stack.api(
        "POST",
        "/connections",
        json={
            "connection_id": cluster.name,
            "conn_type": "postgres",
            "host": cluster.host,
            "port": cluster.port,
            "schema": cluster.dbname,
            "login": cluster.user,
            "extra": json.dumps(cluster.to_extra()),
        },
    )
    return str(cluster.name)


def _wait_run(stack: AirflowStack, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
    """Polls the run until it finished; a busy api-server answering late is not a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info: dict[str, Any] = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if info["state"] in ("success", "failed"):
                return info
        except requests.RequestException as exc:
            print(f"  (api-server: {type(exc).__name__}; polling on)", flush=True)
        time.sleep(1)
    raise TimeoutError(f"{dag_id}/{run_id} did not finish in {timeout}s; logs in {stack.home}")


def run_dag(env: Env, dag_id: str, cluster: Cluster, conf: dict[str, Any]) -> Measures:
    """Triggers dag_id through the REST API with the probe running; outage, total time, lost writes, and every
    step's seconds from the run's journal."""
    stack = env.stack
    assert stack is not None, "DAG scenarios need the Airflow stack"
    conf = {"postgres_conn_id": register(stack, cluster), **conf}
    run_id = f"bench-{cluster.name}"
    scheduler_pid = next(p.pid for p in stack.procs if "scheduler" in p.args)
    with probing(cluster) as probe, RssSampler(scheduler_pid) as rss:
        stack.trigger(dag_id, conf, run_id)
        info = _wait_run(stack, dag_id, run_id, timeout=3 * 3600)
    if info["state"] != "success":
        bad = {t: s for t, s in stack.task_states(dag_id, run_id).items() if s not in ("success", "skipped")}
        after = "rollback did not finish"
        try:  # let its rollback run finish before the cluster is torn down; writes must survive it too
            rb = _wait_run(stack, ROLLBACK[dag_id], f"rollback__{run_id}", timeout=600)
            after = f"rollback {rb['state']}, acknowledged writes lost: {len(probe.lost(cluster))}"
        except Exception as exc:
            after += f" ({type(exc).__name__})"
        raise RuntimeError(f"{dag_id} run {run_id} {info['state']}: {bad}; {after}; logs in {stack.home}")
    print(f"  peak RSS {rss.peak_kb / 1024:.0f} MB: {rss.peak_cmd}", flush=True)
    events = RunState.for_run(dag_id, run_id, env.state_dir).events()
    out: Measures = {
        "outage": probe.longest_gap(),
        "total": (_parse_time(info["end_date"]) - _parse_time(info["start_date"])).total_seconds(),
        "lost": lost_count(probe, cluster),
        "task_rss_mb": rss.peak_kb / 1024,
    }
    at = {e["event"]: _parse_time(e["at"]) for e in reversed(events)}  # first occurrence of each
    if "logins_blocked" in at and "opened" in at:
        out["report_outage"] = (at["opened"] - at["logins_blocked"]).total_seconds()
    for e in events:
        if e["event"] == "step" and e.get("seconds") is not None:
            out[f"step:{e['step']}"] = float(e["seconds"])
    return out


def _major_conf(old: Cluster, **over: Any) -> dict[str, Any]:
    home = home_of(old)
    return {
        "new_bindir": installation(NEW).bindir,
        "new_datadir": str(home / "data16"),
        "backup_dir": str(home / "backup"),
        "transfer_mode": "link",
        "terminate_after_s": GRACE_S,
        "jobs": 2,
        **over,
    }


def dag_link(env: Env) -> Measures:
    old = env.fresh("daglink")
    try:
        return run_dag(env, MAJOR_DAG, old, _major_conf(old))
    finally:
        teardown(old)


def dag_dump_restore(env: Env) -> Measures:
    old = env.fresh("dagdump")
    try:
        return run_dag(env, MAJOR_DAG, old, _major_conf(old, method="dump_restore"))
    finally:
        teardown(old)


def dag_minor(env: Env) -> Measures:
    old = env.fresh("dagminor")
    conf = {
        "installer": "bindir",
        "target_version": "15.20",
        "new_bindir": installation("15.20").bindir,
        "backup_dir": str(home_of(old) / "backup"),
        "min_free_gb": 1,
        "terminate_after_s": GRACE_S,
    }
    try:
        return run_dag(env, MINOR_DAG, old, conf)
    finally:
        teardown(old)


# -- dump/restore by hand --------------------------------------------------------------------------------


def _target(env: Env, old: Cluster) -> Cluster:
    """An empty 16 cluster matching the old one, started (made before the timing starts, as a DBA would)."""
    home = home_of(old)
    return create_cluster(
        installation(NEW),
        str(home / "new16"),
        name=f"{old.name}_new",
        port=old.port + 3,
        socket_dir=str(home / "sock16"),
        os_user=OS_USER,
        options=scratch.matching_options(old),
        settings={"work_mem": "'7MB'", "fsync": "off"},
    )


def _rows(cluster: Cluster) -> int:
    with connect(cluster, APP_DB) as conn:
        return int(scalar(conn, "SELECT count(*) FROM bench_data"))


def _hand(env: Env, tag: str, body: Callable[[Cluster, Cluster, str], None]) -> Measures:
    old = env.fresh(tag)
    try:
        new = _target(env, old)
        work = _work(old)
        t0 = time.monotonic()
        globals_sql = f"{work}/globals.sql"
        run([new.bin("pg_dumpall"), "-g", "-f", globals_sql], old)
        run([new.bin("psql"), "-X", "-q", "-f", globals_sql], new)
        body(old, new, work)
        seconds = time.monotonic() - t0
        if _rows(new) != _rows(old):
            raise RuntimeError(f"{tag}: bench_data row counts differ after the copy")
        return {"seconds": seconds}
    finally:
        teardown(old)


def dump_dir_j2(env: Env) -> Measures:
    def body(old: Cluster, new: Cluster, work: str) -> None:
        for db in DATABASES:
            run([new.bin("pg_dump"), "-Fd", "-j", "2", "-f", f"{work}/{db}.dir", db], old)
            run([new.bin("pg_restore"), "-C", "-j", "2", "-d", "postgres", f"{work}/{db}.dir"], new)

    return _hand(env, "fdj2", body)


class Unsupported(RuntimeError):
    """A tool that cannot do the job on this schema: shown in the table with the reason, not a harness failure."""


def pgcopydb_clone(env: Env) -> Measures:
    def uri(c: Cluster, db: str) -> str:
        return f"postgres://{c.user}@/{db}?host={c.host}&port={c.port}"

    def body(old: Cluster, new: Cluster, work: str) -> None:
        path = f"{installation(NEW).bindir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        for db in DATABASES:
            run([new.bin("createdb"), "-T", "template0", db], new)
            argv = ["pgcopydb", "clone", "--source", uri(old, db), "--target", uri(new, db), "--table-jobs", "2",
                    "--index-jobs", "2", "--dir", f"{work}/pgcopydb-{db}"]  # fmt: skip
            try:
                run(argv, env={"PATH": path, "HOME": work})
            except UnicodeDecodeError:  # its processes' log lines interleave mid-character when it fails
                raise Unsupported(
                    f"pgcopydb clone of {db} failed (its log is not valid UTF-8; by hand: cannot copy to the "
                    "extension-owned sequence pg_tviews_queue_id_seq)"
                ) from None
            except CommandError as exc:
                errors = [ln for ln in exc.stderr.splitlines() if " ERROR " in ln and "line ignored" not in ln]
                raise Unsupported(f"pgcopydb clone of {db} failed: {' / '.join(errors[:2])}") from None

    return _hand(env, "pgcopydb", body)


def seed_plain_dump(env: Env) -> Measures:
    """The seed's `pg_dump mydb > file.sql` and `psql -f`, for each database."""

    def body(old: Cluster, new: Cluster, work: str) -> None:
        for db in DATABASES:
            run([new.bin("pg_dump"), "-f", f"{work}/{db}.sql", db], old)
            run([new.bin("createdb"), "-T", "template0", db], new)
            run([new.bin("psql"), "-X", "-q", "-f", f"{work}/{db}.sql", db], new)

    return _hand(env, "plain", body)


# -- scaling of the pg_upgrade step ----------------------------------------------------------------------------


def pg_upgrade_step(env: Env, tag: str, *, jobs: int, relations: int = 0, template: Cluster | None = None) -> Measures:
    """The DAG's own pg_upgrade command (``upgrade.pg_upgrade_argv``, link mode) on a fresh clone; seconds."""
    from bench.clusters import add_relations

    old = env.fresh(tag, template, {"max_locks_per_transaction": "1024"} if relations else None)
    try:
        if relations:
            add_relations(old, relations)
        new16, new_dir = installation(NEW), _new_datadir(old)
        options = scratch.matching_options(old)
        Service(old, HOST).stop("fast")
        transfer.prepare_new_cluster(old, new16, new_dir, options, HOST)
        sock = services.make_socket_dir(HOST, str(home_of(old) / "upsock"), OS_USER)
        argv = transfer.pg_upgrade_argv(
            old,
            new16,
            new_dir,
            mode="link",
            jobs=jobs,
            socket_dir=sock,
            check=False,
            old_port=old.port,
            new_port=old.port + 1,
        )
        res = transfer.run_pg_upgrade(argv, HOST, OS_USER, _work(old), timeout=3 * 3600)
        return {"seconds": res.duration_s}
    finally:
        teardown(old)


# -- DAG parse time -----------------------------------------------------------------------------------------

_PARSE = """
import gc, json, os, sys
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk
gc.freeze()  # as the dag-processor's manager does before it forks the parsing processes
out = {}
for f in sorted(Path(sys.argv[1]).glob("*.py")):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # like the dag-processor: each file in a fresh process forked from one that imported Airflow
        os.close(r)
        bag = DagBag(dag_folder=str(f))
        res = {"s": sum(x.duration.total_seconds() for x in bag.dagbag_stats), "errors": list(bag.import_errors)}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out[f.name] = json.loads(fh.read())
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


def dag_parse(env: Env) -> Measures:
    """Per-file parse durations as the dag-processor measures them (each file in a process forked from one that
    imported Airflow), and the wall time of that whole process (interpreter start and Airflow import included)."""
    penv = dict(env.stack.env) if env.stack else dict(os.environ)
    # as deployed: the plugins folder holds airflow_local_settings.py, which every Airflow process imports
    penv.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _PARSE, str(ROOT / "dags")],
        env=penv,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    cold = time.monotonic() - t0
    files = json.loads(out.stdout.strip().splitlines()[-1])
    errors = [e for f in files.values() for e in f["errors"]]
    if errors:
        raise RuntimeError(f"DAG import errors in {errors}")
    seconds = [f["s"] for f in files.values()]
    print("  parse seconds per file: " + ", ".join(f"{k} {v['s']:.2f}" for k, v in files.items()), flush=True)
    return {"files_sum": sum(seconds), "files_max": max(seconds), "cold": cold}
