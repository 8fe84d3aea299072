"""
# PostgreSQL minor-version upgrade (e.g. 15.18 → 15.20)

The runbook "PostgreSQL Minor Version Upgrade" as a DAG: same major, new binaries, the data directory stays.
Each task is a step of the runbook; the run's journal, plan, facts and report live in the state directory
(`PGUPGRADE_STATE_DIR`), so the rollback goes back to exactly the release recorded there.

## Prerequisites
- The target release reachable through one installer (`installer`):
  - `bindir` — installed beside the running one (`new_bindir`; its `postgres --version` must be the target),
    with every extension the cluster uses; service `pg_ctl` (systemd units and `pg_ctlcluster` fix the bin
    directory themselves);
  - `apt` — the cluster runs from Debian's `/usr/lib/postgresql/N/bin` and `apt-cache policy postgresql-N`
    lists the target (run `apt-get update` first) *and* still offers the running release (for the rollback);
  - `command` — an admin has set the Airflow Variable `pgupgrade_minor_install_command` to a JSON argv list
    naming `{version}` (and optionally `{major}`), run as root for the target and, by the rollback, for the
    previous release. The command never comes from the trigger conf.
- The Airflow postgres connection of the cluster (`postgres_conn_id`) with `extra` = `pg_bindir`, `pg_datadir`,
  `os_user`, `service`, optional `pg_confdir`, `ssh_conn_id`, and `standbys` (the connection ids of its
  streaming standbys: the plan proves each one, and with `bindir` each standby host needs `new_bindir` too and
  service `pg_ctl` — they are upgraded first, one at a time).
- `min_free_gb` (default 20 GB) free on the data and the backup filesystems after the backup; checked by the
  plan.
- The rollback DAG `pg_minor_upgrade_rollback` unpaused (checked first).

## Impact
Outage for connected clients from *terminate_clients* (new logins are refused from *block logins*) to
*open to clients*: the time to stop, install (apt: download and unpack), start
and validate — seconds for `bindir`. TVIEWs and data are not migrated. With `apt` (and usually `command`)
every cluster of that major on the host runs the new binaries after its next restart (`ack_other_clusters`).
The plan prints its estimate; the report the measured outage.

## Steps
1. **plan** — `check_rollback_dag`, `validate_params`, `acquire_lock` (per cluster), `plan` (same major and
   newer unless `allow_downgrade`; the installer can deliver the target — `postgres --version` of `new_bindir`,
   `apt-cache policy`, the admin's command — and the rollback the running release; disk space; other
   clusters on the same binaries via `pg_lsclusters -h` and running postmasters), `dry_run_gate`.
2. **pre_upgrade** — `backup` (globals + compressed `pg_dump -Fd` per database, verified with `pg_restore -l`),
   `pre_checks` (`include/sql/health-check.sql`, `version()` and `pg_tviews_version()` recorded),
   `prefetch` (apt: `apt-get install --download-only`, so the outage holds only the unpacking),
   `upgrade_standbys` (rolling, `bindir`: each listed standby stopped, started from `new_bindir`, proven on the
   target and streaming from the primary past its position at the restart, one at a time; the primary serves
   throughout), `wait_queue_empty`.
3. **stop** — `window_guard`, `block_logins` (new logins refused; connected clients keep working), sensors
   `wait_no_clients` (until they leave, at most `terminate_after_s`) and `wait_queue_drained`.
4. **cutover** — one task running the outage-critical steps in one process, each journaled under its own name
   (a task hand-off costs 1-3 s of scheduling; see docs/benchmarks.md): `terminate_clients` (whoever is left
   after the grace period; then waits for the queue to be empty), `snapshot_facts` (row counts, WAL position),
   `stop_server` (clean stop, confirmed down), `install` (`bindir`: switch recorded; `apt`: `apt-get install
   postgresql-N=<v> postgresql-client-N=<v>`; `command`: the admin's argv; a cluster the package scripts started
   is stopped again; `postgres --version` must be the target), `start_new` (pg_isready polling; extension
   loads), `validate_facts` (`version()` is the target; databases, roles, row counts, extension versions and
   TVIEW metadata count equal the snapshot), `health_check`, `smoke_test` (a change to each backing table
   reaches the queue, rolled back; no `last_error`; queue empty), `open_to_clients` (logins given back).
5. **after** — `refresh_tviews` (clients are back).
6. **report** — JSON + Markdown: step durations, measured outage, versions before/after, next steps
   (`bindir`: point the connection's `pg_bindir` at the new bin directory).

## Rollback
Any failed task → `handover_lock` → `trigger_rollback` starts `pg_minor_upgrade_rollback` with run id
`rollback__<run_id>`; `finish` then fails the run. The DAG-level failure callback triggers the same run id
through the REST API as a backstop. The rollback goes back to the release recorded by this run (bin
directory, package versions or command) — not to the connection's `pg_bindir` — and restores the backup only
when the data directory no longer starts (see its own documentation).

## Success criteria
PostgreSQL serves the target `version()`; facts equal before and after; TVIEWs exist, refresh and their
triggers fire; health check passes; no `last_error`; queue empty; logins given back.

## Schedule and alerts
Runs on the maintenance window of `include/config/windows.json` once unpaused (paused on creation). A scheduled
run only dispatches: it reads `include/config/clusters.json` when it runs and starts one run per cluster whose
entry names this DAG (`{"conn_id": "pg_main", "dags": {"pg_minor_upgrade": {"target_version": "15.20", ...}}}`),
run id `window__<conn_id>__<window start>`, conf = those defaults + `window_end`. A cluster already on the
target ends green at `dry_run_gate` ("nothing to do"), untouched. A run still going one window length after it
was queued raises a deadline alert (DeadlineAlert; needs `airflow triggerer`) through the `pgupgrade_notify`
channels.

## Trigger
UI: *Trigger DAG w/ config*. CLI:
`airflow dags trigger pg_minor_upgrade --conf '{"postgres_conn_id": "pg_main", "installer": "bindir",
"target_version": "15.20", "new_bindir": "/usr/local/pgsql-15.20/bin"}'`
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TaskGroup

from pgupgrade import clients
from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import dags as ad
from pgupgrade.airflow import failure, tasks
from pgupgrade.airflow import schedule as sched
from pgupgrade.airflow import windows as aw
from pgupgrade.context import RunContext
from pgupgrade.minor import after, cutover, fields, prepare, standbys
from pgupgrade.minor import plan as minor_plan
from pgupgrade.plans import AlreadyThere

F = fields.FIELDS


def _make_plan(ctx: RunContext) -> minor_plan.MinorPlan | AlreadyThere:
    command = (
        airflow_context.admin_json_variable(fields.INSTALL_COMMAND_VARIABLE)
        if ctx.params["installer"] == fields.Installer.COMMAND
        else None
    )
    return minor_plan.plan(ctx, install_command=command)


def step(task_id: str, fn: Any, doc: str, **kw: Any) -> Any:
    return tasks.step_task(task_id, fn, fields=F, doc=doc, **kw)


def sensor(task_id: str, fn: Any, timeout_param: str, doc: str) -> Any:
    return tasks.sensor_task(task_id, fn, fields=F, spec={}, timeout_param=timeout_param, doc=doc)


with ad.upgrade_dag(
    fields.DAG_ID,
    description="PostgreSQL minor release (same major): bindir | apt | command installer, automatic rollback",
    doc_md=__doc__,
    tags=["upgrade", "minor"],
    fields=F,
    rollback_dag_id=fields.ROLLBACK_DAG_ID,
) as dag:
    with TaskGroup("plan") as g_plan:
        plan, gate = tasks.plan_phase(
            fields=F,
            spec=None,
            rollback_dag_id=fields.ROLLBACK_DAG_ID,
            make_plan=_make_plan,
            plan_doc="Same major, newer; the installer can deliver the target and the rollback "
            "the running release; space; other clusters on the same binaries. No side effects.",
            cross_checks=fields.validate_params,
        )

    with TaskGroup("pre_upgrade") as g_pre:
        bkp = step(
            "backup",
            prepare.take_backup,
            "Globals + compressed pg_dump -Fd per database, verified with pg_restore -l, checksummed.",
        )
        pre = step(
            "pre_checks",
            prepare.pre_checks,
            "health-check.sql must pass; version() and pg_tviews_version() recorded.",
        )
        queue = sensor(
            "wait_queue_empty",
            prepare.queue_empty,
            "queue_wait_timeout_s",
            "The extension's queue is empty before the outage starts.",
        )
        fetch = step(
            "prefetch",
            prepare.prefetch,
            "apt: download the target packages now, so that the outage holds only their unpacking.",
        )
        rolling = step(
            "upgrade_standbys",
            standbys.upgrade_standbys,
            "Rolling: each listed standby restarted on the target release (bindir), one at a time, proven "
            "streaming again; the primary still serves.",
        )
        bkp >> pre >> fetch >> rolling >> queue

    with TaskGroup("stop") as g_stop:
        window = step(
            "window_guard",
            lambda ctx: aw.window_guard(ctx, ctx.plan(minor_plan.MinorPlan).outage_estimate_s),
            "Refuses to start the outage when the estimate does not fit the window.",
        )
        block = step(
            "block_logins", clients.block_logins, "pg_hba.conf rejects every login role but ours (reload; recorded)."
        )
        no_clients = sensor(
            "wait_no_clients",
            clients.clients_gone,
            "connection_wait_timeout_s",
            "No client sessions left, or terminate_after_s passed (the cutover then terminates them).",
        )
        drained = sensor(
            "wait_queue_drained",
            prepare.queue_empty,
            "queue_wait_timeout_s",
            "The queue is still empty now that no client can write.",
        )
        slot = tasks.outage_slot_task(fields=F, spec={})
        window >> slot >> block >> no_clients >> drained

    cutover_task = tasks.steps_task(
        "cutover",
        cutover.cutover_steps(),
        fields=F,
        doc="The outage-critical section in one process: terminate_clients, snapshot_facts, stop_server, "
        "install, start_new, validate_facts, health_check, smoke_test, open_to_clients.",
    )

    with TaskGroup("after") as g_after:
        step("refresh_tviews", after.refresh_tviews, "Refresh every TVIEW (force).")

    rep = step("report", after.write_report, "JSON + Markdown report.")
    g_plan >> g_pre >> g_stop >> cutover_task >> g_after >> rep
    gate >> g_pre
    failure.failure_tail(dag, fields.ROLLBACK_DAG_ID, F)
    sched.scheduled_dispatch(F, before=g_plan)
