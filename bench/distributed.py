"""Issue #14's benchmark: what the distributed deployment costs a link upgrade, measured in one run.

``python -m bench.distributed [--size-mb N] [--reps N] [--events N] [--quick] [--no-doc]``
(or ``bash bench/run.sh --distributed ...``). Two parts:

1. The 15→16 link upgrade (``pg15_to_pg16_upgrade``, the same conf as ``bench.run``'s link scenario) of identical
   clones of one seeded template, under a write probe, (a) on the distributed stack — the cluster on a second
   host (``tests/topology.SecondHost``: own namespaces, sshd as postgres, PostgreSQL on 127.0.0.2), the
   CeleryExecutor with two namespaced non-root workers, run state in a control database — and (b) on the
   LocalExecutor stack with the file store and the cluster on this host (``tests/airflow_stack.AirflowStack``).
   One stack at a time (distributed first, then local: two stacks on 2 cores starve each other's api-server);
   repetition i of one side is paired with repetition i of the other. Client outage (the probe's longest gap),
   total run time, and what the control database did inside the critical section (``logins_blocked`` →
   ``opened``): journal events, and every statement it served then (its server log).
2. The journal's write latency: ``--events`` ``record()`` calls of ``ControlStore``'s journal against a control
   database on a local PostgreSQL over TCP (127.0.0.1, ``fsync=on`` as in production, and ``fsync=off``) vs the
   file store's fsync'd append (``RunState.record``) on the same disk; median and p99, and the cutover's events
   times the median = the journal's share of the outage.

Prints a table; unless ``--quick`` or ``--no-doc``, replaces its own section of docs/benchmarks.md (between the
markers below; ``bash bench/run.sh`` keeps that section when it rewrites the rest of the file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "include")]

from bench import scenarios as sc  # noqa: E402
from bench.clusters import HOST, clone, make_template, teardown  # noqa: E402
from pgupgrade.cluster import Cluster, service_for  # noqa: E402
from pgupgrade.scratch import write_settings  # noqa: E402
from pgupgrade.sql import connect  # noqa: E402
from pgupgrade.state import RunState  # noqa: E402
from pgupgrade.state.control import ControlStore  # noqa: E402

from airflow_stack import AirflowStack, free_port  # noqa: E402
from pgharness import OS_USER, Pool, connection_env, installation  # noqa: E402
from topology import DistributedAirflow, SecondHost, control_database  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench.distributed: begin -->", "<!-- bench.distributed: end -->"
CONTROL_DB = "pgupgrade_control"
DAGS = (sc.MAJOR_DAG, sc.ROLLBACK[sc.MAJOR_DAG])
SIDES = ("dist", "local")
# both stacks: a task's calls to the execution API wait up to 30 s (default 5) — on a loaded 2-core machine the
# api-server answers late, and a task that gives up fails the run
STACK_ENV = {"AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30"}
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[(\S*)\] LOG:  duration: ([0-9.]+) ms")

Events = list[dict[str, Any]]


# -- the doc section ------------------------------------------------------------------------------------------


def section_of(text: str) -> str:
    """This benchmark's section of the doc (markers included), or ""."""
    if BEGIN not in text or END not in text:
        return ""
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def with_section(text: str, section: str) -> str:
    """The doc with its section replaced by section (appended at the end when it had none)."""
    if not section:
        return text
    old = section_of(text)
    if old:
        return text.replace(old, section)
    return text.rstrip("\n") + "\n\n" + section + "\n"


# -- clusters --------------------------------------------------------------------------------------------------


def bench_root() -> Path:
    """The clusters' directory: on the machine's disk (/var/tmp), visible in the second host's namespace (which
    hides /tmp and postgres' home behind tmpfs: its own ``new_cluster`` would put the data in memory)."""
    path = Path(tempfile.mkdtemp(prefix="pgupgrade-bench-dist-", dir="/var/tmp"))
    path.chmod(0o755)
    shutil.chown(path, OS_USER, OS_USER)
    return path


def remote_clone(pool: Pool, host: SecondHost, template: Cluster, name: str) -> Cluster:
    """A copy of the (stopped) template started inside the second host as postgres, listening on its address
    (socket in its own /var/run/postgresql); the returned Cluster is reached over TCP and acted on through SSH."""
    home = pool.root / name
    datadir = str(home / "data")
    HOST.run(["mkdir", "-p", str(home)], user=OS_USER)
    HOST.run(["cp", "-a", template.datadir, datadir], user=OS_USER, timeout=3600)
    port = host._port()
    settings = {
        "port": str(port),
        "listen_addresses": f"'{host.address}'",
        "unix_socket_directories": "'/var/run/postgresql'",
    }
    write_settings(HOST, f"{datadir}/postgresql.conf", settings, OS_USER)
    inside = replace(template, name=name, port=port, host="/var/run/postgresql", datadir=datadir)
    service_for(inside, host.host).start()
    cluster = replace(inside, host=host.address, ssh_conn_id=host.ssh_conn_id)
    host.clusters.append(cluster)
    return cluster


def control_conninfo(control: Cluster) -> dict[str, Any]:
    info = control.conninfo(CONTROL_DB)
    info.pop("application_name", None)
    return info


def sql_on(cluster: Cluster, *statements: str) -> None:
    with connect(cluster) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)


# -- part 1: the link upgrade on both stacks --------------------------------------------------------------------


@dataclass
class Side:
    label: str
    stack: AirflowStack
    fresh: Callable[[str], Cluster]
    journal: Callable[[str, str], Events]
    server_log: Path | None = None  # the control database's log (distributed side)
    counter: int = 0


def _at(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def control_statements(log: Path, since: dt.datetime, until: dt.datetime) -> tuple[int, float]:
    """(count, server-side seconds) of the statements the product's control connections ran in [since, until]
    (the control cluster logs each statement's duration when it ends; application name pgupgrade-control)."""
    n, ms = 0, 0.0
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m or m.group(2) != "pgupgrade-control":
            continue
        at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
        if since <= at <= until:
            n, ms = n + 1, ms + float(m.group(3))
    return n, ms / 1000


def link_run(side: Side) -> dict[str, Any]:
    side.counter += 1
    old = side.fresh(f"{side.label}{side.counter}")
    stack = side.stack
    run_id = f"bench14-{old.name}-{uuid.uuid4().hex[:6]}"
    try:
        stack.add_connection(old.name, json.loads(connection_env(old)[1]))
        conf = {**sc._major_conf(old), "postgres_conn_id": old.name}
        with sc.probing(old) as probe:
            stack.trigger(sc.MAJOR_DAG, conf, run_id)
            info = sc._wait_run(stack, sc.MAJOR_DAG, run_id, timeout=1800)
        if info["state"] != "success":
            bad = {t: s for t, s in stack.task_states(sc.MAJOR_DAG, run_id).items() if s not in ("success", "skipped")}
            rollback, deadline = f"rollback__{run_id}", time.monotonic() + 600
            while time.monotonic() < deadline:  # its rollback, if one was triggered, finishes before the cluster goes
                state = stack.run_state(sc.ROLLBACK[sc.MAJOR_DAG], rollback)
                if state in ("success", "failed") or (state is None and time.monotonic() > deadline - 540):
                    break
                time.sleep(2)
            raise RuntimeError(f"{side.label}: {run_id} {info['state']}: {bad}; logs in {stack.home}")
        events = side.journal(sc.MAJOR_DAG, run_id)
        first = {e["event"]: _at(e["at"]) for e in reversed(events)}
        blocked, cutover, opened = first["logins_blocked"], first["cutover_started"], first["opened"]
        inside = [e for e in events if blocked <= _at(e["at"]) <= opened]
        out: dict[str, Any] = {
            "outage": probe.longest_gap(),
            "total": (sc._parse_time(info["end_date"]) - sc._parse_time(info["start_date"])).total_seconds(),
            "report_outage": (opened - blocked).total_seconds(),
            "cutover": (opened - cutover).total_seconds(),
            "lost": float(len(probe.lost(old))),
            "events": float(len(inside)),
            "events_cutover": float(sum(1 for e in inside if cutover <= _at(e["at"]))),
            "event_names": [e["event"] + (f":{e['step']}" if e["event"] == "step" else "") for e in inside],
            "steps": {e["step"]: float(e["seconds"]) for e in inside if e["event"] == "step" and e.get("seconds")},
            "workers": sorted({h for h in stack.task_hostnames(sc.MAJOR_DAG, run_id).values() if h}),
        }
        if side.server_log is not None:
            n, secs = control_statements(side.server_log, blocked, opened)
            out["ctl_statements"], out["ctl_server_s"] = float(n), secs
            n, secs = control_statements(side.server_log, cutover, opened)
            out["ctl_statements_cutover"], out["ctl_server_s_cutover"] = float(n), secs
        return out
    finally:
        teardown(old)


# -- part 2: the journal's write latency ------------------------------------------------------------------------


def latencies(record: Callable[[int], None], n: int) -> list[float]:
    record(-1)  # warm-up: the connection, the schema check, the run's directory
    out = []
    for i in range(n):
        t = time.perf_counter()
        record(i)
        out.append(time.perf_counter() - t)
    return out


def journal_latency(control: Cluster, state_dir: Path, n: int) -> dict[str, list[float]]:
    """Seconds per record() of a journal event like the cutover's (a step event with its details)."""
    store = ControlStore(control_conninfo(control))
    res: dict[str, list[float]] = {}
    j = store.run("bench_latency", f"fsync-on-{uuid.uuid4().hex[:6]}")
    res["control_fsync_on"] = latencies(lambda i: j.record("step", step="stop_old", status="done", seconds=0.5, i=i), n)
    sql_on(control, "ALTER SYSTEM SET fsync = off", "SELECT pg_reload_conf()")
    time.sleep(1)
    try:
        j2 = store.run("bench_latency", f"fsync-off-{uuid.uuid4().hex[:6]}")
        res["control_fsync_off"] = latencies(
            lambda i: j2.record("step", step="stop_old", status="done", seconds=0.5, i=i), n
        )
    finally:
        sql_on(control, "ALTER SYSTEM RESET fsync", "SELECT pg_reload_conf()")
    f = RunState.for_run("bench_latency", f"file-{uuid.uuid4().hex[:6]}", state_dir)
    res["file"] = latencies(lambda i: f.record("step", step="stop_old", status="done", seconds=0.5, i=i), n)
    store.db.close()
    return res


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# -- the table ---------------------------------------------------------------------------------------------------


def fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    if unit in ("", "rows") or abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def cell(values: list[float], unit: str) -> str:
    if not values:
        return "not measured"
    med = statistics.median(values)
    spread = f" (min {fmt(min(values), unit)}, max {fmt(max(values), unit)})" if len(values) > 1 else ""
    sign = "+" if unit == "s±" and med > 0 else ""
    u = {"s±": "s", "": ""}.get(unit, unit)
    return f"{sign}{fmt(med, unit.rstrip('±'))} {u}".rstrip() + spread


@dataclass
class Results:
    reps: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per repetition: side → measures
    latency: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def vals(self, side: str, key: str) -> list[float]:
        return [float(r[side][key]) for r in self.reps if side in r and key in r[side]]

    def paired(self, key: str, op: Callable[[float, float], float]) -> list[float]:
        return [op(float(r["dist"][key]), float(r["local"][key])) for r in self.reps if "dist" in r and "local" in r]


def table(res: Results, size: str) -> list[str]:
    rows: list[tuple[str, str]] = []
    add = rows.append

    def both(key: str, unit: str) -> str:
        return f"{cell(res.vals('dist', key), unit)} / {cell(res.vals('local', key), unit)}"

    add(("Lost acknowledged writes, every run", cell(res.vals("dist", "lost") + res.vals("local", "lost"), "rows")))
    add((f"(a) distributed: client outage, link 15→16 ({size})", cell(res.vals("dist", "outage"), "s")))
    add((f"(b) local (LocalExecutor, file store): client outage ({size})", cell(res.vals("local", "outage"), "s")))
    add(("**Outage (a) - (b)**, per repetition (target ≤ +1 s)", cell(res.paired("outage", lambda a, b: a - b), "s±")))
    add(("Outage (a) / (b), per repetition", cell(res.paired("outage", lambda a, b: a / b), "x")))
    add(("(a) total run time (start → end of the DAG run)", cell(res.vals("dist", "total"), "s")))
    add(("(b) total run time (start → end of the DAG run)", cell(res.vals("local", "total"), "s")))
    add(("Total (a) - (b), per repetition", cell(res.paired("total", lambda a, b: a - b), "s±")))
    add(("Total (a) / (b), per repetition", cell(res.paired("total", lambda a, b: a / b), "x")))
    add(("Journal: logins_blocked → opened (sensors included), (a) / (b)", both("report_outage", "s")))
    add(("Journal: cutover task, cutover_started → opened, (a) / (b)", both("cutover", "s")))
    add(("Journal events logins_blocked → opened, (a) / (b)", both("events", "")))
    add(("Journal events in the cutover task, (a) / (b)", both("events_cutover", "")))
    add(
        (
            "(a) control-database statements logins_blocked → opened (its log)",
            cell(res.vals("dist", "ctl_statements"), ""),
        )
    )
    add(("(a) ... of them in the cutover task", cell(res.vals("dist", "ctl_statements_cutover"), "")))
    add(("(a) their server-side time, summed (section / cutover)",
         f"{cell([v * 1000 for v in res.vals('dist', 'ctl_server_s')], 'ms')} / "
         f"{cell([v * 1000 for v in res.vals('dist', 'ctl_server_s_cutover')], 'ms')}"))  # fmt: skip
    lat = res.latency
    names = {
        "control_fsync_on": "control database (TCP 127.0.0.1, fsync=on, synchronous_commit=on)",
        "control_fsync_off": "control database, fsync=off (as the tests' clusters)",
        "file": "file store (append + fsync, same disk)",
    }
    for key, label in names.items():
        if key in lat:
            ms = [v * 1000 for v in lat[key]]
            add((f"record() latency, {label}: median / p99", f"{fmt(statistics.median(ms), 'ms')} / "
                 f"{fmt(p99(ms), 'ms')} ms (n={len(ms)})"))  # fmt: skip
    events, stmts = res.vals("dist", "events_cutover"), res.vals("dist", "ctl_statements_cutover")
    outage = res.vals("dist", "outage")
    if events and outage and "control_fsync_on" in lat and "file" in lat:
        ev, out_s = statistics.median(events), statistics.median(outage)
        ctl, fil = statistics.median(lat["control_fsync_on"]), statistics.median(lat["file"])
        pct = f"{100 * ev * ctl / out_s:.2f} % of (a)'s outage"
        share = f"{ev:.0f} x {ctl * 1000:.2f} ms = {ev * ctl * 1000:.0f} ms ({pct})"
        add(("**Journal's share of the outage**: cutover events x median record(), control DB", share))
        add(("... the same with the file store", f"{ev:.0f} x {fil * 1000:.2f} ms = {ev * fil * 1000:.0f} ms"))
        add(("... difference control DB - file store", f"{ev * (ctl - fil) * 1000:+.0f} ms"))
        if stmts:
            st = statistics.median(stmts)
            every = f"{st:.0f} x {ctl * 1000:.2f} ms = {st * ctl * 1000:.0f} ms"
            add(("Every control statement in the cutover x median record(), control DB", every))
    return ["| figure | measured: median (min, max) |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]


def step_table(res: Results) -> list[str]:
    """The critical section's steps (journal seconds), distributed vs local: where a difference comes from."""
    steps: list[str] = []
    for r in res.reps:
        for side in SIDES:
            for s in r.get(side, {}).get("steps", {}):
                if s not in steps:
                    steps.append(s)
    lines = ["| step inside the critical section | (a) distributed | (b) local | (a) - (b) |", "|---|---|---|---|"]
    for s in steps:
        a = [float(r["dist"]["steps"][s]) for r in res.reps if s in r.get("dist", {}).get("steps", {})]
        b = [float(r["local"]["steps"][s]) for r in res.reps if s in r.get("local", {}).get("steps", {})]
        if a and b:
            d = statistics.median(a) - statistics.median(b)
            lines.append(f"| {s} | {statistics.median(a):.2f} s | {statistics.median(b):.2f} s | {d:+.2f} s |")
    return lines


def machine_line() -> str:
    from bench.run import commit, machine

    return f"{machine()}; commit {commit()}"


def section(args: argparse.Namespace, res: Results, info: dict[str, str]) -> str:
    cmd = "bash bench/run.sh --distributed" + (f" {' '.join(args.argv)}" if args.argv else "")
    lines = [
        BEGIN,
        "## Distributed deployment vs one machine (issue #14)",
        "",
        "Generated by `python -m bench.distributed` (`bash bench/run.sh --distributed`); `bash bench/run.sh` keeps "
        "this section when it rewrites the rest of the file.",
        "",
        "```sh",
        "bash bench/run.sh --distributed                 # 200 MB, 2 repetitions per side; rewrites this section",
        "bash bench/run.sh --distributed --reps 2 --size-mb 500 --events 1000",
        "bash bench/run.sh --distributed --quick         # tiny data, 1 repetition, 100 events: smoke check, no doc",
        "```",
        "",
        "Needs what `include/scripts/install.sh` installs (PostgreSQL 15.18, 16 and 17, openssh-server, "
        "redis-server, celery); runs as root (namespaces, the `airflow` worker user).",
        "",
        f"- Machine: {info['machine']}",
        f"- Date: {info['date']}; command `{cmd}`; wall time {info['wall']}",
        f"- Data: {info['data']}; {args.reps} repetition(s) per side; median (min, max) over them; differences "
        "and ratios are taken per repetition pair (repetition i of each side), then their median",
        f"- Load: {info['load']}",
    ]
    if res.errors:
        lines.append(f"- Errors: {'; '.join(res.errors)}")
    lines += ["", *table(res, info["size"]), "", *step_table(res), "", METHOD, END]
    return "\n".join(lines)


METHOD = """**Method.** Part 1: one template cluster (PostgreSQL 15.18 seeded like the tests, plus `bench_data` filled
to the size above, as in `bench.run`), copied (`cp -a`) for every run into `/var/tmp` — the same ext4 disk for both
sides (the second host's own home is a tmpfs, which would favour it). (a) The copy is started inside the second
host (`tests/topology.SecondHost`: UTS + mount + PID namespaces, sshd as postgres on 127.0.0.2, the cluster
listening on 127.0.0.2); Airflow is `DistributedAirflow` (CeleryExecutor, redis broker, two celery workers
`worker-a`/`worker-b` as the non-root `airflow` user in their own namespaces, metadata database on 127.0.0.1
TCP), the run store a control database (`pgupgrade_control` on its own PostgreSQL 17 cluster on 127.0.0.1,
`fsync=on`); every command on the database host goes over SSH. (b) The copy runs on this host (Unix socket),
Airflow is `AirflowStack` (LocalExecutor), the run store the file store (`PGUPGRADE_STATE_DIR` on the same disk).
One stack runs at a time (the distributed one with its repetitions, then the local one): two stacks at once on
2 cores made a task's execution-API call time out. Both stacks get `AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT=30`
(default 5 s) for the same reason; nothing else differs from the tests' stacks. The DAG
is triggered through the REST API with `bench.run`'s link conf (`transfer_mode=link`, `terminate_after_s=2`,
`jobs=2`, `backup_dir` beside the cluster). Client outage = the longest gap between acknowledged inserts of
`tests/pgharness.WriteProbe` (every 50 ms, over TCP on (a), the socket on (b)); lost writes = acknowledged ids
missing afterwards. The critical section is `logins_blocked` → `opened` in the run's journal; the control
cluster logs every statement's duration (`log_min_duration_statement=0`, application `pgupgrade-control`) during
part 1, which gives the statements it served inside that window (reads, documents and events).
Part 2, before the stacks start: `ControlStore(...).run(...).record("step", ...)` timed one call at a time
against the same control cluster over TCP (the first call, which connects and checks the schema, not counted),
then with `fsync=off` set by `ALTER SYSTEM` + reload, and `RunState.record` (open, append, fsync, close) in a
directory on the same disk. A journal event is committed before `record()` returns: that latency is what each
event adds to the step that records it.

**Caveat.** A 2-core machine: the Airflow stack (api-server, scheduler, dag-processor, triggerer; on (a) also two
celery workers and redis), the clusters, sshd and the probe share it, and other work on the machine shows up in
every figure (the load line above: 1-minute load average sampled before each run). The (a) - (b) difference is
the figure to read; absolute seconds move with the load, and the two sides ran minutes apart."""


def stop_stack(stack: AirflowStack, keep_logs: bool) -> None:
    stack.stop()
    if keep_logs:
        print(f"bench14: Airflow logs kept in {stack.home}", flush=True)
    else:
        shutil.rmtree(stack.home, ignore_errors=True)


# -- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size-mb", type=float, default=200.0, help="data in the app database (default 200)")
    ap.add_argument("--reps", type=int, default=2, help="link upgrades per side (default 2)")
    ap.add_argument("--events", type=int, default=500, help="record() calls per store in part 2 (default 500)")
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 repetition, 100 events; no doc")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--save-section", metavar="FILE", help=argparse.SUPPRESS)  # for bench/run.sh
    ap.add_argument("--restore-section", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.save_section:
        Path(args.save_section).write_text(section_of(DOC.read_text()) if DOC.exists() else "")
        return 0
    if args.restore_section:
        DOC.write_text(with_section(DOC.read_text(), Path(args.restore_section).read_text()))
        return 0
    if args.quick:
        args.size_mb, args.reps, args.events, args.no_doc = 5.0, 1, 100, True
    started = time.monotonic()
    for version in ("15.18", sc.NEW, "17"):
        installation(version)
    pool = Pool(root=bench_root())
    res = Results()
    loads: dict[str, list[float]] = {"start": [os.getloadavg()[0]], "dist": [], "local": []}
    host: SecondHost | None = None
    live: AirflowStack | None = None
    failed = False
    try:
        t0 = time.monotonic()
        print(f"bench14: template with {args.size_mb:g} MB in {pool.root}", flush=True)
        template, size = make_template(pool, args.size_mb / 1024, "template")
        hba = f"{template.datadir}/pg_hba.conf"  # clients of the second host's copies come over TCP
        HOST.run(["sh", "-c", 'echo "host all all 127.0.0.1/8 trust" >> "$1"', "sh", hba], user=OS_USER)
        data = f"app database {size / 2**20:.0f} MiB (template made in {time.monotonic() - t0:.0f} s)"
        log_settings = {"log_line_prefix": "'%m [%a] '", "log_timezone": "'UTC'"}
        control = pool.new(
            "17", "control", seed=False, settings={"listen_addresses": "'127.0.0.1'", "fsync": "on", **log_settings}
        )
        control = replace(control, host="127.0.0.1")
        control_env = control_database(control)

        print(f"bench14: part 2, {args.events} journal events per store", flush=True)
        state_dir = pool.root / "state"
        res.latency = journal_latency(control, pool.root / "latency-state", args.events)
        for k, v in res.latency.items():
            print(f"  {k}: median {statistics.median(v) * 1000:.2f} ms, p99 {p99(v) * 1000:.2f} ms", flush=True)

        sql_on(control, "ALTER SYSTEM SET log_min_duration_statement = 0", "SELECT pg_reload_conf()")
        ctl = ControlStore(control_conninfo(control))
        for label in SIDES:  # one stack at a time: two on 2 cores starve each other's api-server
            t = time.monotonic()
            print(f"bench14: part 1, {label}: starting its Airflow stack", flush=True)
            if label == "dist":
                dbhost = SecondHost(hostname="bench14db", ssh_conn_id="bench14db_ssh")
                host = dbhost.start()
                dmeta = pool.new("17", "dist_meta", seed=False, settings={"listen_addresses": "'127.0.0.1'"})
                assert dbhost.keydir is not None
                env = {**dbhost.connection_env(), **control_env, **STACK_ENV}
                stack: AirflowStack = DistributedAirflow(replace(dmeta, host="127.0.0.1"), env, shared=[dbhost.keydir])
                side = Side(
                    label,
                    stack,
                    partial(remote_clone, pool, dbhost, template),
                    lambda d, r: ctl.run(d, r).events(),
                    Path(control.datadir) / "log" / "pg_ctl.log",
                )
            else:
                lmeta = pool.new("17", "local_meta", seed=False)
                env = {"PGUPGRADE_STATE_DIR": str(state_dir), **STACK_ENV}
                stack = AirflowStack(lmeta, {**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})
                side = Side(
                    label,
                    stack,
                    partial(clone, pool, template),
                    lambda d, r: RunState.for_run(d, r, state_dir).events(),
                )
            live = stack
            stack.start()
            stack.wait_for_dags(list(DAGS))
            for d in DAGS:
                stack.unpause(d)
            print(f"bench14: {label} stack up in {time.monotonic() - t:.0f} s", flush=True)
            for i in range(args.reps):
                while len(res.reps) <= i:
                    res.reps.append({})
                loads[label].append(os.getloadavg()[0])
                t = time.monotonic()
                try:
                    m = link_run(side)
                    res.reps[i][label] = m
                    shown = {k: round(v, 2) for k, v in m.items() if isinstance(v, float)}
                    print(f"bench14: rep {i + 1} {label}: {shown} workers={m['workers']} "
                          f"({time.monotonic() - t:.0f} s)", flush=True)  # fmt: skip
                    print(f"  events from logins_blocked to opened: {m['event_names']}", flush=True)
                except Exception as exc:
                    failed = True
                    res.errors.append(f"rep {i + 1} {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    print(f"bench14: rep {i + 1} {label} FAILED:\n{traceback.format_exc()}", flush=True)
            live = None
            stop_stack(stack, keep_logs=failed)
            if host is not None:
                host.stop()
                host = None
    finally:
        if live is not None:
            stop_stack(live, keep_logs=True)
        if host is not None:
            host.stop()
        pool.close()
        pool.remove()
    wall = time.monotonic() - started
    seen = {k: ", ".join(f"{v:.1f}" for v in vals) or "-" for k, vals in loads.items()}
    load = f"at the start {seen['start']}, before the (a) runs {seen['dist']}, before the (b) runs {seen['local']}"
    info = {
        "machine": machine_line(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "wall": f"{wall / 60:.1f} min",
        "data": data,
        "size": f"{size / 2**20:.0f} MiB",
        "load": f"1-minute load average {load}; {os.cpu_count()} cores",
    }
    raw = Path(tempfile.gettempdir()) / f"bench14-{os.getpid()}.json"
    raw.write_text(json.dumps({"reps": res.reps, "latency": res.latency, "errors": res.errors, "info": info}))
    print(f"bench14: raw measurements in {raw}", flush=True)
    text = section(args, res, info)
    print(text)
    if not args.no_doc:
        DOC.write_text(with_section(DOC.read_text(), text))
        print(f"bench14: section written to {DOC}", flush=True)
    print(f"bench14: {wall / 60:.1f} min", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
