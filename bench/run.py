"""The benchmark of issue #8: `bash bench/run.sh [--size-gb N] [--reps N] [--large] [--quick] [--only a,b]`.

Runs every scenario --reps times (interleaved: one repetition of each, then the next), then rewrites
docs/benchmarks.md with the machine, the date, the commit and one table: figure | median (min to max) | target | met?
Ratios are computed per repetition (both sides measured back to back in the same run), then their median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "include")]

from bench import scenarios as sc  # noqa: E402
from bench.clusters import GB, make_template  # noqa: E402
from pgupgrade.cluster import Cluster  # noqa: E402

from airflow_stack import AirflowStack  # noqa: E402
from pgharness import Pool, installation  # noqa: E402

GROUPS = ("link", "seed", "dump", "scaling", "minor", "parse")
DOC = ROOT / "docs" / "benchmarks.md"
DAG_CONF_NOTE = (
    f"`transfer_mode=link`, `terminate_after_s={sc.GRACE_S}` (logins blocked, then sessions still open after the "
    "grace period are terminated: what a DBA sets once the applications were asked to stop), `jobs=2`, "
    "`method=auto` (link) or `dump_restore`, `backup_dir` in the cluster's directory (the backup cannot be "
    "skipped: it runs before the outage and counts in the total only), every other parameter at its default"
)

Rep = dict[str, float]  # one repetition's measurements, "<scenario>.<key>" → value


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    keys: tuple[str, ...]  # measurements it needs, "<scenario>.<key>"
    calc: Callable[..., float] = lambda x: x
    target: str = "—"
    met: Callable[[float], bool] | None = None

    def value(self, rep: Rep) -> float:
        return self.calc(*(rep[k] for k in self.keys))


def _div(a: float, b: float) -> float:
    return a / b


def _sub(a: float, b: float) -> float:
    return a - b


def figures(args: argparse.Namespace) -> list[Figure]:
    gb, rel = f"{args.size_gb:g} GB", args.relations
    dr = "dag_dump.step:dump_restore"
    return [
        Figure(
            "Lost acknowledged writes, every scenario with the probe",
            "rows",
            ("all.lost",),
            target="0",
            met=lambda v: v == 0,
        ),
        Figure(f"Major 15→16 link, DAG under the scheduler: client outage ({gb})", "s", ("dag_link.outage",)),
        Figure(
            f"Major 15→16 link, bare script: client outage ({gb})", "s", ("bare_link.outage",), target="≈ 2 (by hand)"
        ),
        Figure(
            "Major link: DAG outage - bare outage",
            "s",
            ("dag_link.outage", "bare_link.outage"),
            _sub,
            "≤ 5",
            lambda v: v <= 5,
        ),
        Figure("Major link, DAG: outage by its own report (logins blocked → opened)", "s", ("dag_link.report_outage",)),
        Figure("Major link, DAG: total run time (API start → end)", "s", ("dag_link.total",)),
        Figure("Major link, bare script: total time", "s", ("bare_link.total",)),
        Figure("Major link: total time DAG / bare", "x", ("dag_link.total", "bare_link.total"), _div),
        Figure("Seed's procedure run literally: client outage (application stopped → started)", "s", ("seed.outage",)),
        Figure("Outage DAG / seed's procedure", "x", ("dag_link.outage", "seed.outage"), _div, "< 1", lambda v: v < 1),
        Figure("Dump/restore branch of the DAG: client outage", "s", ("dag_dump.outage",)),
        Figure("Dump/restore branch of the DAG: its dump_restore step (journal)", "s", (dr,)),
        Figure("Hand-tuned `pg_dump -Fd -j 2` + `pg_restore -j 2`", "s", ("dump_dir.seconds",)),
        Figure("Hand-tuned `pgcopydb clone` (table/index jobs 2)", "s", ("pgcopydb.seconds",)),
        Figure("Seed's plain `pg_dump > file.sql` + `psql -f`", "s", ("plain_dump.seconds",)),
        Figure(
            "dump_restore step / best hand-tuned (faster of the two above)",
            "x",
            (dr, "best_hand.seconds"),
            _div,
            "≤ 1.05",
            lambda v: v <= 1.05,
        ),
        Figure("dump_restore step / seed's plain dump + psql", "x", (dr, "plain_dump.seconds"), _div),
        Figure(f"pg_upgrade step (link, -j 2), {gb}, few relations", "s", ("pgu_j2.seconds",)),
        Figure(f"pg_upgrade step (link, -j 1), {gb}, few relations", "s", ("pgu_j1.seconds",)),
        Figure("pg_upgrade step: -j 1 / -j 2", "x", ("pgu_j1.seconds", "pgu_j2.seconds"), _div),
        Figure(f"pg_upgrade step (link, -j 2), {gb} + {rel} empty tables", "s", ("pgu_rel.seconds",)),
        Figure(f"pg_upgrade step (link, -j 2), {gb} + 10000 empty tables", "s", ("pgu_rel10k.seconds",)),
        Figure("pg_upgrade step (link, -j 2), 3 GB", "s", ("pgu_3gb.seconds",)),
        Figure(f"pg_upgrade step: 3 GB / {gb}", "x", ("pgu_3gb.seconds", "pgu_j2.seconds"), _div),
        Figure("Minor 15.18→15.20 (pg_minor_upgrade, bindir): client outage", "s", ("dag_minor.outage",)),
        Figure(
            "DAG parse time of dags/: sum of per-file durations (the dag-processor's measure)",
            "s",
            ("parse.files_sum",),
            target="< 0.5",
            met=lambda v: v < 0.5,
        ),
        Figure("DAG parse: slowest file", "s", ("parse.files_max",)),
        Figure("DAG parse: cold process (interpreter + Airflow import + every file)", "s", ("parse.cold",)),
        Figure(
            "Peak RSS of a task process (`airflow worker -- <ti>`) during the link upgrade",
            "MB",
            ("dag_link.task_rss_mb",),
        ),
    ]


def derive(rep: Rep) -> None:
    """Per-repetition figures over several scenarios: lost writes in total, the faster hand-tuned tool."""
    lost = [v for k, v in rep.items() if k.endswith(".lost")]
    if lost:
        rep["all.lost"] = sum(lost)
    hand = [rep[k] for k in ("dump_dir.seconds", "pgcopydb.seconds") if k in rep]
    if hand:
        rep["best_hand.seconds"] = min(hand)


def measurements(
    args: argparse.Namespace, env: sc.Env, big: Cluster | None
) -> list[tuple[str, str, Callable[[], sc.Measures]]]:
    """(group, scenario name, function) in the order one repetition runs them."""
    m: list[tuple[str, str, Callable[[], sc.Measures]]] = [
        ("link", "dag_link", lambda: sc.dag_link(env)),
        ("link", "bare_link", lambda: sc.bare_link(env)),
        ("seed", "seed", lambda: sc.seed_literal(env)),
        ("dump", "dag_dump", lambda: sc.dag_dump_restore(env)),
        ("dump", "dump_dir", lambda: sc.dump_dir_j2(env)),
        ("dump", "pgcopydb", lambda: sc.pgcopydb_clone(env)),
        ("dump", "plain_dump", lambda: sc.seed_plain_dump(env)),
        ("scaling", "pgu_j2", lambda: sc.pg_upgrade_step(env, "j2", jobs=2)),
        ("scaling", "pgu_j1", lambda: sc.pg_upgrade_step(env, "j1", jobs=1)),
        ("scaling", "pgu_rel", lambda: sc.pg_upgrade_step(env, "rel", jobs=2, relations=args.relations)),
    ]
    if args.large:
        m += [
            ("scaling", "pgu_rel10k", lambda: sc.pg_upgrade_step(env, "rel10k", jobs=2, relations=10_000)),
            ("scaling", "pgu_3gb", lambda: sc.pg_upgrade_step(env, "3gb", jobs=2, template=big)),
        ]
    m += [("minor", "dag_minor", lambda: sc.dag_minor(env)), ("parse", "parse", lambda: sc.dag_parse(env))]
    return [x for x in m if x[0] in args.only]


def machine() -> str:
    mem_kb = int(
        next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1]
    )
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    disk = subprocess.run(["df", "-h", "--output=source,fstype,size", "/tmp"], capture_output=True, text=True).stdout
    dev = disk.splitlines()[-1].split() if disk.strip() else ["?"]
    rota = "?"
    name = Path(dev[0]).name
    for cand in (name, name.rstrip("0123456789")):
        f = Path(f"/sys/block/{cand}/queue/rotational")
        if f.exists():
            rota = "rotational" if f.read_text().strip() == "1" else "non-rotational"
    return (
        f"{os.cpu_count()} cores ({model}), {mem_kb / 2**20:.1f} GiB RAM, kernel {platform.release()}, "
        f"disk {' '.join(dev)} ({rota})"
    )


def commit() -> str:
    res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    return res.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def fmt(v: float, unit: str = "s") -> str:
    if unit in ("rows", "MB") or abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


HOW_TO_RUN = """## How to run

```sh
bash bench/run.sh                 # 1 GB, 3 repetitions (< 30 min on 2 cores); rewrites this file
bash bench/run.sh --large         # adds 3 GB and 10 000-relation points of the pg_upgrade step
bash bench/run.sh --quick         # tiny data, 1 repetition: a smoke check of the harness (numbers meaningless)
bash bench/run.sh --only link,dump --reps 5   # groups: link, seed, dump, scaling, minor, parse
```

Needs what `include/scripts/install.sh` installs (run it first), plus Debian's `pgcopydb`, which the script
installs with apt-get when missing. Run it on an idle machine: other load shows up in every figure.
"""

METHOD = """## Design of the outage-critical section (the trade-off)

Measured in session 1 with one task per step: a task hand-off under the real scheduler costs 1-3 s (scheduling
loop, task process start-up, DAG file parse), and the major upgrade had ten of them between blocking logins and
letting clients in. So the steps from `terminate_clients` to `open_to_clients` (major: also `snapshot_facts`,
`stop_old`, the transfer, `configure_new`, `start_new_private`, `update_extensions`, `validate_facts`,
`health_check`; minor: the same shape with `install`) now run in **one task process**; every step is still
journaled, timed, reported and fault-injectable under its own name, and the rollback decides from that journal.
What moved out of the outage: `init_new` (initdb, before it), a `CHECKPOINT` while clients still work (the
shutdown checkpoint is then short), and `refresh_tviews`, `analyze` (`vacuumdb --analyze-in-stages` is built to
run with clients connected) and `performance` (after it). Sensors (`wait_no_clients`, `wait_queue_empty`) stay
tasks: they wait while connected clients still work. The price: the critical steps cannot be cleared one by one in
the Airflow UI (a cleared cutover task refuses to repeat a transfer — the rollback DAG is the way on), and the
UI's Gantt chart shows them as one bar (the report lists each step's seconds).

**Parse time.** Two causes made the eight files take about 2 s together: every forked parse imported the library
again, and Airflow deep-copies a DAG's params into each of its operators (~220 for the 4-DAG major file). Now
every Airflow process imports the library once at start-up (`plugins/airflow_local_settings.py` →
`pgupgrade.preload`; the dag-processor forks its parsers from a process that already holds it), the Params share
their never-mutated schema between those copies (`pgupgrade.airflow.context.shared_on_copy`), the step tasks are
plain PythonOperators (a TaskFlow-decorated task costs about three times as much to build), and what the builders
imported lazily (TriggerDagRunOperator) comes with the library. What is left is Airflow building the operators and
validating each DAG's Param defaults.

## Method

- Every scenario starts from an identical copy of one template cluster (PostgreSQL 15.18, seeded like the tests:
  roles, databases `app` and `reporting`, the pg_tviews stand-in with two TVIEWs, plus table `bench_data` filled with
  `generate_series` inserts to the size above), in its own directory, port and socket; it is removed afterwards.
- **Client outage** is measured by the write probe (`tests/pgharness.WriteProbe`): a separate process inserting a
  numbered row every 50 ms as the application role, reconnecting after every error, each attempt with a fresh id;
  outage = the longest gap between two acknowledged inserts. Afterwards every acknowledged id must be in the
  upgraded database (lost writes). `tests/integration/test_write_probe.py` proves it detects a deleted row.
- **DAG** scenarios trigger the DAG through the REST API of a real Airflow deployment (api-server, scheduler with
  LocalExecutor, dag-processor; `tests/airflow_stack.py`); the connection is created through the REST API.
  Conf: {conf}. Total = the DAG run's start → end dates; step seconds come from the run's journal.
- **Bare script**: `initdb` (matching) and the configuration copied before the window, then `pg_ctl stop -m fast`,
  `pg_upgrade --link -j 2`, `pg_ctl start -w` — the essential steps, nothing checked.
- **Seed's procedure**: the seed's "Step-by-Step: pg_upgrade Method" 15 → 16, every command argv-translated, its
  fixed sleeps kept (`sleep 30` after stopping the application, `sleep 5` after stopping PostgreSQL, `sleep 10`
  after starting it; the final `sleep 15` for the application's readiness comes after the outage and is not run).
  The application is the probe: `systemctl stop myapp` pauses it, `systemctl start myapp` resumes it.
  `cargo pgrx install` is skipped (the SQL-only stand-in is installed for 16 already); its `health-check.sql` is
  the project's `include/sql/post-upgrade-validation.sql`.
- **Hand-tuned dump/restore** (target cluster initdb'd and started before the timing, as a DBA would):
  globals with `pg_dumpall -g` | `psql`, then per database `pg_dump -Fd -j 2` + `pg_restore -C -j 2`, or
  `pgcopydb clone --table-jobs 2 --index-jobs 2`, or the seed's `pg_dump -f file.sql` + `psql -f`. The DAG's
  `dump_restore` step starts the new cluster privately (initdb ran before the outage, in `init_new`) and dumps the
  old cluster while it still runs with logins blocked, uncompressed (`-Z 0`: the dump is restored at once, so
  compression only costs CPU) and without checksumming it. Debian's pgcopydb 0.10 fails on this
  schema (seen by hand on 2026-11-25: `ERROR: cannot copy to sequence "pg_tviews_queue_id_seq"`, the extension's
  own sequence; its interleaved log is then not valid UTF-8): the best hand-tuned figure is then `pg_dump -Fd`.
- **pg_upgrade step**: the DAG's own command (`pgupgrade.major.transfer.pg_upgrade_argv`, link mode) on a stopped copy;
  relation points add that many empty tables (`max_locks_per_transaction=1024` so pg_dump can lock them all).
- **Parse time**: in a fresh process that imported Airflow (and froze the garbage collector, as the
  dag-processor's manager does), each file of `dags/` parsed (`DagBag`) in a child forked for it: per-file
  durations (sum = the figure with the target), and the whole
  process's wall time (cold: interpreter start and Airflow import included). **Peak RSS**: the largest VmHWM of the
  Python processes below the scheduler, sampled every 0.3 s during the link upgrade — in practice a task process
  (`airflow worker -- <task instance id>`).
"""


def write_doc(args: argparse.Namespace, reps: list[Rep], errors: dict[str, str], info: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Issue #8: client-observed outage, orchestration overhead, dump/restore throughput, scaling.",
        "",
        HOW_TO_RUN,
        "## Latest results",
        "",
        f"- Machine: {machine()}",
        f"- Date: {dt.datetime.now(dt.UTC).isoformat(timespec='minutes')}; commit {commit()}",
        f"- Command: `bash bench/run.sh {' '.join(args.argv)}`".rstrip() + f"; bench wall time {info['wall']}",
        f"- Data: {info['data']}; {args.reps} repetition(s); median (min to max) of the repetitions",
    ]
    if args.quick:
        lines.append("- **--quick: tiny data, one repetition — a smoke check; the figures mean nothing.**")
    lines += ["", "| figure | measured | target | met? |", "|---|---|---|---|"]
    for f in figures(args):
        vals = []
        for r in reps:
            try:
                vals.append(f.value(r))
            except (KeyError, ZeroDivisionError):
                pass
        if not vals:
            why = [errors[k.split(".")[0]] for k in f.keys if k.split(".")[0] in errors]
            if why:
                short = why[0] if len(why[0]) < 140 else why[0][:140] + "… (see Errors)"
                lines.append(f"| {f.label} | not measured: {short} | {f.target} | {'no' if f.met else '—'} |")
            continue  # not selected in this run
        med = statistics.median(vals)
        spread = f" ({fmt(min(vals), f.unit)} to {fmt(max(vals), f.unit)})" if len(vals) > 1 else ""
        met = "—" if f.met is None else "yes" if all(f.met(v) for v in vals) else "median only" if f.met(med) else "no"
        lines.append(f"| {f.label} | {fmt(med, f.unit)} {f.unit}{spread} | {f.target} | {met} |")
    if errors:
        lines += ["", "Errors:", ""] + [f"- `{s}`: {e}" for s, e in errors.items()]
    lines += ["", METHOD.format(conf=DAG_CONF_NOTE)]
    text = "\n".join(lines).rstrip() + "\n"
    DOC.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--large", action="store_true", help="add the 3 GB and 10 000-relation points")
    ap.add_argument("--quick", action="store_true", help="tiny data, one repetition (smoke check)")
    ap.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)}")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(args.only) - set(GROUPS)
    if unknown:
        ap.error(f"unknown group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
    if args.quick:
        args.size_gb, args.reps = 0.02, 1
    args.relations = 200 if args.quick else 1000
    started = time.monotonic()
    for version in ("15.18", "15.20", sc.NEW):
        installation(version)  # fails early when an installation is missing
    pool = Pool()
    stack = None
    errors: dict[str, str] = {}
    unsupported: set[str] = set()
    reps: list[Rep] = []
    try:
        print(f"bench: template with {args.size_gb:g} GB in {pool.root}", flush=True)
        t0 = time.monotonic()
        template, size = make_template(pool, args.size_gb, "template")
        data = f"app database {size / GB:.2f} GiB (generated in {time.monotonic() - t0:.0f} s)"
        big = None
        if args.large and "scaling" in args.only:
            big, big_size = make_template(pool, 3.0, "template3")
            data += f"; 3 GB template {big_size / GB:.2f} GiB"
        env = sc.Env(pool, template, pool.root / "state")
        if {"link", "dump", "minor"} & set(args.only):
            meta = pool.new("17", "airflow_meta", seed=False)
            print("bench: starting Airflow (api-server, scheduler, dag-processor)", flush=True)
            stack = AirflowStack(meta, {"PGUPGRADE_STATE_DIR": str(env.state_dir)}).start()
            stack.wait_for_dags([sc.MAJOR_DAG, sc.MINOR_DAG, "pg_major_upgrade_rollback", "pg_minor_upgrade_rollback"])
            for d in (sc.MAJOR_DAG, sc.MINOR_DAG, "pg_major_upgrade_rollback", "pg_minor_upgrade_rollback"):
                stack.unpause(d)
            env.stack = stack
        for i in range(args.reps):
            rep: Rep = {}
            for _group, name, fn in measurements(args, env, big):
                t = time.monotonic()
                try:
                    for k, v in fn().items():
                        rep[f"{name}.{k}"] = v
                    shown = ", ".join(
                        f"{k}={fmt(v, '')}" for k, v in rep.items() if k.startswith(name + ".") and ":" not in k
                    )
                    print(f"bench: rep {i + 1} {name}: {shown} ({time.monotonic() - t:.0f} s)", flush=True)
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                    if isinstance(exc, sc.Unsupported):
                        unsupported.add(name)
                    print(f"bench: rep {i + 1} {name} FAILED:\n{traceback.format_exc()}", flush=True)
            derive(rep)
            reps.append(rep)
    finally:
        if stack is not None:
            stack.stop()
            if not errors:
                shutil.rmtree(stack.home, ignore_errors=True)
            else:
                print(f"bench: Airflow logs kept in {stack.home}", flush=True)
        pool.close()
        pool.remove()
    wall = time.monotonic() - started
    text = write_doc(args, reps, errors, {"wall": f"{wall / 60:.1f} min", "data": data})
    print(text)
    print(f"bench: {DOC} rewritten; {wall / 60:.1f} min", flush=True)
    return 1 if set(errors) - unsupported else 0


if __name__ == "__main__":
    sys.exit(main())
