"""Fault matrix: every upgrade DAG broken on purpose at every step, by injection and by realistic causes.

For each DAG family (major 15.18 → 16 by pg_upgrade link / copy and by dump/restore, minor 15.18 → 15.20 by the
bindir installer, the pg_tviews 0.1 → 0.2 migration) the steps are enumerated from the journal of one successful
run (RunState events of kind "step"). Each case then runs the DAG through Airflow (dag.test) on a fresh seeded
cluster while a write probe keeps inserting, makes one thing fail, runs the rollback run the failure triggered,
and checks: the cluster serves (the old version, or the new one when the run had validated and opened it), no
acknowledged write is missing, the facts equal the snapshot taken before the run, and the rollback's report
names its path.

    bash tests/reliability/run.sh                       # the full matrix → docs/reliability.md
    bash tests/reliability/run.sh --family minor --cause inject --limit 3 --out /tmp/m.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (ROOT / "tests", ROOT / "tests" / "integration", ROOT / "include"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

if "AIRFLOW_HOME" not in os.environ or "PGUPGRADE_STATE_DIR" not in os.environ:  # run as a script, not by pytest
    import conftest  # noqa: F401  (sets AIRFLOW_HOME, PGUPGRADE_STATE_DIR, PGUPGRADE_BINDIRS before Airflow loads)

from pgupgrade import facts as pgfacts  # noqa: E402
from pgupgrade import sql as pgsql  # noqa: E402
from pgupgrade.cluster import Cluster  # noqa: E402
from pgupgrade.sql import connect, scalar  # noqa: E402
from pgupgrade.state import RunState, safe_name, state_root  # noqa: E402

from airflow_helpers import report_of, run, triggered_runs  # noqa: E402
from pgharness import APP_DB, OS_USER, Pool, WriteProbe, installation  # noqa: E402

MAJOR_ROLLBACK, MINOR_ROLLBACK, EXT_ROLLBACK = (
    "pg_major_upgrade_rollback",
    "pg_minor_upgrade_rollback",
    "pg_tviews_extension_rollback",
)
PROBE_TABLE = "public.write_probe"


# -- DAG families ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    dag_id: str
    rollback_dag_id: str
    old_version: str
    new_version: str  # what "upgraded" means: a server version ("16", "15.20") or the extension version
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "major"  # major | minor | extension

    def conf(self, cluster: Cluster, work: Path) -> dict[str, Any]:
        from conftest import register_connection

        home = Path(cluster.datadir).parent
        base: dict[str, Any] = {
            "postgres_conn_id": register_connection(cluster),
            "backup_dir": str(home / "backup"),
        }
        if self.kind == "major":
            base |= {
                "new_bindir": installation(self.new_version).bindir,
                "new_datadir": str(home / "data16"),
                "terminate_after_s": 0,
            }
        elif self.kind == "minor":
            base |= {
                "installer": "bindir",
                "terminate_after_s": 0,  # the write probe never leaves by itself
                "target_version": self.new_version,
                "new_bindir": installation(self.new_version).bindir,
                "min_free_gb": 1,
            }
        return {**base, **self.extra}

    def served(self, cluster: Cluster) -> str:
        """What the cluster serves now: its server version, or (extension family) the extension's version."""
        with connect(cluster, APP_DB) as conn:
            if self.kind == "extension":
                return str(scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews'"))
            num = int(scalar(conn, "SHOW server_version_num"))
        return str(num // 10000) if self.kind == "major" else f"{num // 10000}.{num % 100}"

    @property
    def old_served(self) -> str:
        return {"major": "15", "minor": self.old_version, "extension": "0.1.5"}[self.kind]

    @property
    def new_served(self) -> str:
        return {"major": self.new_version, "minor": self.new_version, "extension": "0.2.0"}[self.kind]


FAMILIES = {
    "major-link": Family(
        "major-link", "pg15_to_pg16_upgrade", MAJOR_ROLLBACK, "15.18", "16", {"transfer_mode": "link"}
    ),
    "major-copy": Family(
        "major-copy", "pg15_to_pg16_upgrade", MAJOR_ROLLBACK, "15.18", "16", {"transfer_mode": "copy"}
    ),
    "major-dump": Family(
        "major-dump", "pg15_to_pg16_upgrade", MAJOR_ROLLBACK, "15.18", "16", {"method": "dump_restore"}
    ),
    "minor": Family("minor", "pg_minor_upgrade", MINOR_ROLLBACK, "15.18", "15.20", kind="minor"),
    "extension": Family(
        "extension", "pg_tviews_0_1_to_0_2_migration", EXT_ROLLBACK, "15.18", "0.2.0", kind="extension"
    ),
}


# -- watching a run from outside: its journal, its processes ----------------------------------------------------------


def run_dirs(dag_id: str) -> set[Path]:
    base = state_root() / "runs" / safe_name(dag_id)
    return set(base.iterdir()) if base.exists() else set()


def journal_events(path: Path) -> list[dict[str, Any]]:
    try:
        text = (path / "journal.jsonl").read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


Predicate = Callable[[list[dict[str, Any]]], bool]


def after_step(name: str) -> Predicate:
    return lambda evs: any(e["event"] == "step" and e.get("step") == name and e["status"] == "success" for e in evs)


def after_event(name: str) -> Predicate:
    return lambda evs: any(e["event"] == name for e in evs)


class Trigger:
    """Runs ``action`` once, as soon as the journal of the next run of dag_id satisfies ``when`` (a background
    thread polling every 20 ms): a fault that strikes while a step is under way."""

    def __init__(self, dag_id: str, when: Predicate, action: Callable[[], None]):
        self.dag_id, self.when, self.action = dag_id, when, action
        self.known = run_dirs(dag_id)
        self.fired: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for d in run_dirs(self.dag_id) - self.known:
                evs = journal_events(d)
                if evs and self.when(evs):
                    steps = [e["step"] for e in evs if e["event"] == "step"]
                    self.fired = f"after {steps[-1] if steps else 'start'}"
                    self.action()
                    return
            self._stop.wait(0.02)

    def __enter__(self) -> Trigger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def postmaster_pid(datadir: str) -> int | None:
    try:
        return int(Path(datadir, "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def kill_postmaster(datadir: str) -> None:
    pid = postmaster_pid(datadir)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def processes_matching(*needles: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmd for n in needles):
            pids.append(int(proc.name))
    return pids


# -- one case ----------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """What one case changes: a fault set up around the upgrade run."""

    family: Family
    cause: str
    step: str | None = None  # the step a fault was aimed at (injection), for the table
    pool: Pool | None = None
    cluster: Cluster | None = None
    conf: dict[str, Any] = field(default_factory=dict)
    work: Path = Path()
    note: str = ""
    driver: subprocess.Popen[str] | None = None


@dataclass
class Outcome:
    family: str
    cause: str
    step: str  # the step that failed (from the journal), or what was aimed at
    upgrade: str  # the upgrade run's state
    rollback_path: str  # as named by the rollback run's decision and report ("—" when no rollback was needed)
    rollback: str  # the rollback run's state
    serves: str
    lost: int
    facts_equal: bool | None
    seconds: float
    verdict: str  # ok | kept new (validated new version serves; going back refused) | refused (nothing serves) | FAIL
    note: str = ""
    cluster: Cluster | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def row(self) -> str:
        facts = {True: "yes", False: "**no**", None: "—"}[self.facts_equal]
        verdict = {"ok": "ok", "kept new": "kept new", "refused": "refused"}.get(self.verdict, "**FAIL**")
        return (
            f"| {self.family} | {self.step} | {self.cause} | {self.upgrade} | {self.rollback_path} | {self.rollback} | "
            f"{self.serves} | {'n/a' if self.lost < 0 else self.lost} | {facts} | {self.seconds:.0f} | {verdict} | "
            f"{self.note.replace('|', '/')} |"
        )


HEADER = (
    "| DAG | step that failed | cause | upgrade run | rollback path | rollback run | serves | lost writes | "
    "facts equal | s | verdict | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def comparable(f: dict[str, Any]) -> dict[str, Any]:
    """Facts without the write probe's table (checked row by row instead) and the tool's own pgupgrade schema."""
    out = json.loads(json.dumps(f))
    for db in out["databases"].values():
        db["tables"] = {t: v for t, v in db["tables"].items() if t != PROBE_TABLE and not t.startswith("pgupgrade.")}
    return out


def lost_writes(probe: Any, cluster: Cluster) -> int:
    lost = getattr(probe, "lost", None)
    return len(lost(cluster) if lost else probe.missing(cluster))


def upgrade_run_id(dag_id: str, known: set[str]) -> str | None:
    new = [r for r in triggered_runs(dag_id) if r.run_id not in known]
    return new[-1].run_id if new else None


def mark_crashed(dag_id: str, run_id: str) -> None:
    """What the scheduler does when a worker vanished: the running task instance and the run become failed."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    with create_session() as session:
        for ti in session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id):
            if ti.state in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, None):
                ti.state = TaskInstanceState.FAILED
        dr = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one()
        dr.state = DagRunState.FAILED


def run_upgrade_in_subprocess(case: Case, kill_when: Callable[[], bool], timeout: float = 600) -> str:
    """Runs the upgrade DAG in a separate worker process (dag.test) and SIGKILLs that process's whole group when
    kill_when() turns true. Returns a note on what was killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "tests"), str(ROOT / "include")])}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fault_driver.py"), case.family.dag_id, json.dumps(case.conf)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if kill_when():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return "worker process group SIGKILLed"
            time.sleep(0.02)
        return f"worker exited {proc.returncode} before the kill"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def run_case(pool: Pool, family: Family, cause: str, step: str | None = None) -> Outcome:
    """One cell of the matrix. Never raises for a finding: the outcome says what happened.

    The write probe (an application that keeps inserting and reconnecting) runs through the whole upgrade run and
    is stopped before the rollback run: applications stay stopped until the rollback has finished (the
    ``stop_applications`` hook's contract); every write it got acknowledged must be on the serving cluster."""
    started = time.monotonic()
    cluster = pool.new(family.old_version)
    WriteProbe.create_table(cluster)
    work = pool.root / f"case-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    shutil.chown(work, OS_USER, OS_USER)
    case = Case(family, cause, step, pool, cluster, family.conf(cluster, work), work)
    if family.kind == "major":  # the new cluster, so that the pool stops it too
        pool.track(replace(cluster, bindir=case.conf["new_bindir"], datadir=case.conf["new_datadir"]))
    before = pgfacts.snapshot(cluster)
    known = {r.run_id for r in triggered_runs(family.dag_id)}
    probe = WriteProbe(cluster).start()
    run_id: str | None = None
    up_state, failed_step, rb_path, rb_state, refusal = "?", step or "—", "—", "—", ""
    kept_verified = False  # the rollback refused to go back and checked the kept new version: it passed
    try:
        time.sleep(0.3)
        with CAUSES[cause](case):
            if cause == "worker_killed":
                run_id = upgrade_run_id(family.dag_id, known)
                assert run_id, "the killed worker left no run"
                mark_crashed(family.dag_id, run_id)
                up_state = "worker killed"
            else:
                dr, _ = run(family.dag_id, case.conf)
                run_id, up_state = dr.run_id, str(dr.state)
        time.sleep(0.3)
        probe.stop()
        ustate = RunState.for_run(family.dag_id, run_id)
        evs = ustate.events()
        fails = [e["step"] for e in evs if e["event"] == "step" and e["status"] == "failed"]
        steps = [e["step"] for e in evs if e["event"] == "step"]
        if fails:
            failed_step = fails[0]
        elif cause == "worker_killed":
            failed_step = (
                "pg_upgrade" if ustate.happened("transfer_started") else f"after {steps[-1] if steps else '—'}"
            )
        elif up_state == "success":
            failed_step = "none failed"
        triggered = [r for r in triggered_runs(family.rollback_dag_id) if r.run_id == f"rollback__{run_id}"]
        if triggered or (cause == "worker_killed" and ustate.side_effects()):
            # a crashed run's rollback comes from the DAG's failure callback, with this conf
            conf = {"upgrade_dag_id": family.dag_id, "upgrade_run_id": run_id,
                    "postgres_conn_id": case.conf["postgres_conn_id"]}  # fmt: skip
            rb, _ = run(family.rollback_dag_id, dict(triggered[0].conf) if triggered else conf)
            rb_state = str(rb.state)
            rstate = RunState.for_run(family.rollback_dag_id, rb.run_id)
            decision = rstate.load("decision") or {}
            refusal = next(
                (e.get("error", "") for e in rstate.events() if e["event"] == "step" and e["status"] == "failed"), ""
            )
            named = None
            with contextlib.suppress(TypeError, FileNotFoundError, KeyError):
                named = report_of(state_root(), family.rollback_dag_id, rb.run_id).get("rollback_path")
            would = re.search(r"path would be (\w+)", refusal)  # refused before deciding: the path it names
            rb_path = str(decision.get("path") or (would.group(1) if would else "none decided"))
            kept_verified = rstate.happened("kept_new_verified")
            rebuilt = ustate.first("old_rebuilt")  # the rollback journals it with the run it undoes
            if rebuilt:
                case.note += (f"; rebuilt from the base backup + {rebuilt['wal_files']} WAL files, replayed to "
                              f"{rebuilt['replayed_to']} (stopped at {rebuilt['stopped_at']})")  # fmt: skip
            if named != decision.get("path"):
                case.note += f"; the report names path {named!r}"
            if refusal:
                case.note += f"; rollback: {refusal[:160]}"
    except Exception as exc:  # a case that breaks the harness is a finding too
        case.note += f"; harness: {type(exc).__name__}: {exc}"[:300]
    finally:
        probe.stop()
        pgsql.load.cache_clear()
    serves, lost, equal = "down", -1, None
    try:
        lost = lost_writes(probe, cluster)
        serves = family.served(cluster)
        diffs = pgfacts.compare(
            comparable(before),
            comparable(pgfacts.snapshot(cluster)),
            same_extension_versions=serves == family.old_served,
        )
        equal = not diffs
        if diffs:
            case.note += "; facts: " + "; ".join(diffs[:2])
        left = slots(cluster)
        if left:  # a slot left on a serving cluster keeps its WAL forever
            equal = False
            case.note += f"; replication slots left: {', '.join(left)}"
    except Exception as exc:
        case.note += f"; cluster not answering: {str(exc).strip().splitlines()[-1][-80:]}"
    serving_ok = serves == family.old_served or (
        serves == family.new_served
        and (up_state == "success" or kept_verified or _validated_and_opened(family, run_id))
    )
    if lost == 0 and equal and serving_ok and rb_state in ("—", "success"):
        verdict = "ok"
    elif lost == 0 and equal and serving_ok and serves == family.new_served and "UnsafeState" in refusal:
        verdict = "kept new"  # validated, opened, written to: going back would discard those writes
    elif lost in (0, -1) and rb_state == "failed" and "UnsafeState" in refusal:
        verdict = "refused"  # the rollback refused to lose data: nothing lost, the lock marks the cluster
    else:
        verdict = "FAIL"
    return Outcome(
        family.name, cause, failed_step, up_state, rb_path, rb_state, serves, lost, equal,
        time.monotonic() - started, verdict, case.note.strip("; "), cluster,
    )  # fmt: skip


def slots(cluster: Cluster) -> list[str]:
    with connect(cluster) as conn:
        return [r[0] for r in pgsql.fetch(conn, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")]


def _validated_and_opened(family: Family, run_id: str | None) -> bool:
    if run_id is None:
        return False
    st = RunState.for_run(family.dag_id, run_id)
    return st.happened("opened") and any(
        e["event"] == "step" and e.get("step") in ("validate_facts", "validate_tviews") and e["status"] == "success"
        for e in st.events()
    )


# -- causes ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def inject(case: Case) -> Iterator[None]:
    assert case.step
    old = os.environ.get("PGUPGRADE_INJECT_FAILURE")
    os.environ["PGUPGRADE_INJECT_FAILURE"] = case.step
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PGUPGRADE_INJECT_FAILURE", None)
        else:
            os.environ["PGUPGRADE_INJECT_FAILURE"] = old


def _fire_note(case: Case, trig: Trigger, what: str) -> None:
    case.note = f"{what} {trig.fired}" if trig.fired else f"{what}: never fired"


@contextlib.contextmanager
def server_killed(case: Case) -> Iterator[None]:
    """SIGKILL of the serving postmaster while the run works on it: the old one right after the backup (major,
    minor), or the extension's database server right after its backup; the new major after its private start."""
    assert case.cluster
    datadir = case.cluster.datadir
    when = after_step("block_logins" if case.family.kind != "extension" else "backup")
    if case.step == "new":
        datadir, when = case.conf["new_datadir"], after_step("start_new_private")
    trig = Trigger(case.family.dag_id, when, lambda: kill_postmaster(datadir))
    with trig:
        yield
    _fire_note(case, trig, f"postmaster of {'new' if case.step == 'new' else 'old'} cluster SIGKILLed")


def private_bindir(src: str, dest: Path) -> Path:
    """A copy of an installation's bin directory (symlinks): the shared installation is never changed."""
    dest.mkdir(parents=True)
    for f in Path(src).iterdir():
        (dest / f.name).symlink_to(f)
    return dest


@contextlib.contextmanager
def binary_missing(case: Case) -> Iterator[None]:
    """The new installation loses a binary between the plan and its use (a package removed under the run):
    pg_upgrade (major) or postgres (minor), in a private copy of the bin directory given as new_bindir."""
    name = "pg_upgrade" if case.family.kind == "major" else "postgres"
    copy = private_bindir(case.conf["new_bindir"], case.work / "newbin")
    case.conf["new_bindir"] = str(copy)
    trig = Trigger(case.family.dag_id, after_step("plan"), lambda: (copy / name).unlink())
    with trig:
        yield
    _fire_note(case, trig, f"{name} removed from new_bindir")


@contextlib.contextmanager
def failing_sql(case: Case) -> Iterator[None]:
    """A statement of the run's SQL raises: the extension's update (upgrade-extension.sql) or, for the server
    upgrades, the health check (health-check.sql) once the new server started (major) or once the backup is
    taken (minor). The SQL directory is switched from the moment on (dag.test runs the tasks in this process)."""
    name = "upgrade-extension.sql" if case.family.kind == "extension" else "health-check.sql"
    d = case.work / "sql"
    shutil.copytree(pgsql.SQL_DIR, d)
    f = d / name
    f.write_text(f"DO $inject$ BEGIN RAISE EXCEPTION 'injected failure in {name}'; END $inject$;\n" + f.read_text())
    saved = pgsql.SQL_DIR

    def switch() -> None:
        pgsql.SQL_DIR = d
        pgsql.load.cache_clear()

    when = {"major": after_step("start_new_private"), "minor": after_step("backup")}.get(case.family.kind)
    trig = Trigger(case.family.dag_id, when, switch) if when else None
    if trig is None:
        switch()
    try:
        with trig or contextlib.nullcontext():
            yield
    finally:
        pgsql.SQL_DIR = saved
        pgsql.load.cache_clear()
    case.note = f"{name} raises" + (f" ({trig.fired})" if trig else "")


@contextlib.contextmanager
def worker_killed(case: Case) -> Iterator[None]:
    """The worker running the outage is SIGKILLed (with its process group, as an OOM kill of the task's cgroup or
    a pod eviction does) while pg_upgrade runs (or, dump/restore, while pg_restore runs)."""
    needle = "pg_restore" if case.conf.get("method") == "dump_restore" else "pg_upgrade"
    new_datadir = case.conf.get("new_datadir", "")
    seen: list[float] = []

    def when() -> bool:
        if not seen and processes_matching(needle, new_datadir if needle == "pg_upgrade" else ""):
            if needle == "pg_upgrade" and processes_matching("pg_upgrade", "--check"):
                return False
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 0.3

    case.note = f"{run_upgrade_in_subprocess(case, when)} while {needle} ran"
    yield


LOOP_SIZE_MB = 200


@contextlib.contextmanager
def small_filesystem(where: Path) -> Iterator[str]:
    """A small filesystem at ``where``: a loop-mounted ext4 image if mounting is permitted, else tmpfs. Yields
    which one it is."""
    where.mkdir(parents=True, exist_ok=True)
    image = where.with_suffix(".img")
    subprocess.run(["truncate", "-s", f"{LOOP_SIZE_MB}M", str(image)], check=True)
    kind = "loop ext4"
    res = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
    if res.returncode == 0:
        res = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True)
    if res.returncode != 0:
        kind = "tmpfs"
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LOOP_SIZE_MB}m", "tmpfs", str(where)], check=True)
    shutil.chown(where, OS_USER, OS_USER)
    try:
        yield kind
    finally:
        for pid in processes_matching("postgres", str(where)):  # a server left on it would keep it busy
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        image.unlink(missing_ok=True)


def fill(mount: Path, leave_kb: int = 256) -> None:
    st = os.statvfs(mount)
    free = st.f_bfree * st.f_frsize - leave_kb * 1024  # ext4's reserved blocks too: the backup may run as root
    if free > 0:
        subprocess.run(["fallocate", "-l", str(free), str(mount / "filler")], check=False)


@contextlib.contextmanager
def disk_full(case: Case) -> Iterator[None]:
    """The backup directory ("backup") or the new data directory ("new") lies on a small filesystem that another
    process fills up right after the plan checked the free space."""
    target = case.step or "backup"
    mount = case.work / f"fs-{target}"
    with small_filesystem(mount) as kind:
        key = "backup_dir" if target == "backup" else "new_datadir"
        case.conf[key] = str(mount / ("backup" if target == "backup" else "data16"))
        if target == "new":
            assert case.pool and case.cluster
            case.pool.track(replace(case.cluster, bindir=case.conf["new_bindir"], datadir=case.conf[key]))
        trig = Trigger(case.family.dag_id, after_step("plan"), lambda: fill(mount))
        with trig:
            yield
        _fire_note(case, trig, f"{key} on a full {LOOP_SIZE_MB} MB {kind}: filled")


CAUSES: dict[str, Callable[[Case], contextlib.AbstractContextManager[None]]] = {
    "inject": inject,
    "server_killed": server_killed,
    "binary_missing": binary_missing,
    "failing_sql": failing_sql,
    "worker_killed": worker_killed,
    "disk_full": disk_full,
}

# Realistic causes per family: (cause, aim) — aim picks a variant (which server, which directory).
REALISTIC: dict[str, list[tuple[str, str | None]]] = {
    "major-link": [
        ("server_killed", "old"),
        ("server_killed", "new"),
        ("binary_missing", None),
        ("failing_sql", None),
        ("worker_killed", None),
        ("disk_full", "backup"),
    ],
    "major-copy": [("worker_killed", None), ("disk_full", "new")],
    "major-dump": [("worker_killed", None), ("disk_full", "new"), ("server_killed", "old")],
    "minor": [("server_killed", "old"), ("binary_missing", None), ("failing_sql", None), ("disk_full", "backup")],
    "extension": [("server_killed", "old"), ("failing_sql", None), ("disk_full", "backup")],
}


# -- enumerating the steps -------------------------------------------------------------------------------------------


def steps_of(pool: Pool, family: Family) -> tuple[list[str], float]:
    """The journaled steps of one successful run, in order (a sensor by its ``.poke`` step, which is where an
    injected failure strikes). Returns (steps, seconds of the run)."""
    cluster = pool.new(family.old_version)
    work = pool.root / f"enum-{uuid.uuid4().hex[:8]}"
    conf = family.conf(cluster, work)
    if family.kind == "major":
        pool.track(replace(cluster, bindir=conf["new_bindir"], datadir=conf["new_datadir"]))
    started = time.monotonic()
    dr, states = run(family.dag_id, conf)
    took = time.monotonic() - started
    assert dr.state == "success", states
    names: list[str] = []
    for e in RunState.for_run(family.dag_id, dr.run_id).events():
        if e["event"] == "step" and e["status"] == "success" and e["step"] not in names:
            names.append(e["step"])
    return [n for n in names if f"{n}.poke" not in names], took


# -- the whole matrix ------------------------------------------------------------------------------------------------


def write_table(outcomes: list[Outcome], path: Path, seconds: float, header_note: str) -> None:
    doc = path.read_text() if path.exists() else ""
    marker = "<!-- fault-matrix -->"
    head = doc.split(marker)[0] if marker in doc else doc
    bad = [o for o in outcomes if o.verdict == "FAIL"]
    refused = [o for o in outcomes if o.verdict == "refused"]
    kept = [o for o in outcomes if o.verdict == "kept new"]
    body = (
        f"{marker}\n## Last full run\n\n{header_note}\n\n{len(outcomes)} cases in {seconds / 60:.1f} min, "
        f"{len(outcomes) - len(bad) - len(refused) - len(kept)} ok, {len(kept)} kept new, {len(refused)} refused, "
        f"{len(bad)} FAIL.\n\n{HEADER}\n" + "\n".join(o.row() for o in outcomes) + "\n"
    )
    path.write_text(head.rstrip() + "\n\n" + body if head.strip() else body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), help="default: all")
    ap.add_argument("--cause", action="append", choices=sorted(CAUSES), help="default: all")
    ap.add_argument("--limit", type=int, default=0, help="at most this many injected steps per family (0: all)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = ap.parse_args(argv)
    command = " ".join(["bash tests/reliability/run.sh", *(argv if argv is not None else sys.argv[1:])])
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    order = ["major-link", "minor", "extension", "major-dump", "major-copy"]  # the most distinct paths first
    families = [FAMILIES[f] for f in (args.family or order)]
    causes = args.cause or list(CAUSES)
    pool = Pool()
    outcomes: list[Outcome] = []
    started = time.monotonic()

    def record(o: Outcome) -> None:
        outcomes.append(o)
        print(o.row(), flush=True)
        write_table(outcomes, Path(args.out), time.monotonic() - started, f"`{command}` (in progress)")

    try:
        for fam in families:
            if "inject" in causes:
                steps, took = steps_of(pool, fam)
                print(f"{fam.name}: {len(steps)} steps, successful run {took:.0f}s: {', '.join(steps)}", flush=True)
                for s in steps[: args.limit or None]:
                    record(run_case(pool, fam, "inject", s))
            for cause, aim in REALISTIC.get(fam.name, []):
                if cause in causes:
                    record(run_case(pool, fam, cause, aim))
            pool.close()  # servers of finished cases
            pool.clusters.clear()
    finally:
        pool.close()
        pool.remove()
    took = time.monotonic() - started
    write_table(outcomes, Path(args.out), took, f"`{command}`")
    print(f"{len(outcomes)} cases in {took:.0f}s; table in {args.out}")
    return 0 if all(o.verdict != "FAIL" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
