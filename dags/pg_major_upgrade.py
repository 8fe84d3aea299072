"""
# PostgreSQL major-version upgrade (pg15-to-pg16, pg16-to-pg17, pg17-to-pg18)

One DAG per guide, all from one factory, plus `pg_major_upgrade`, which goes from any supported major straight
to `target_major` (pg_upgrade and dump/restore both support skipping majors). Each task is a step of the
runbook; the run's journal, plan, facts and report live in the state directory (`PGUPGRADE_STATE_DIR`), so a
rollback decides from facts on disk.

## Prerequisites
- The new major installed beside the old one (`new_bindir`, or found automatically), with every extension the
  old cluster uses (control file and library).
- The Airflow postgres connection of the cluster (`postgres_conn_id`) with `extra` = `pg_bindir`, `pg_datadir`,
  `os_user`, `service`, optional `pg_confdir`, `ssh_conn_id`, `standbys` (connection ids of its streaming
  standbys: upgraded with it, see below).
- Standbys (link mode): the new major on every standby host at the same `new_bindir`; `rsync` on every host; the
  primary's OS user logs in to each standby host over SSH with its own key (the standby connection's
  `ssh_from_primary`, host keys in its `known_hosts`); each standby's data directory mirrors the primary's layout
  around the new one (e.g. `…/data` beside `…/data16`). All checked by the plan.
- Free space for the backup and (copy / dump-restore) a second copy of the data; checked by the plan.
- Link and swap mode: `wal_level` replica or logical, a free WAL sender and replication slot, and a replication
  connection allowed for the connection's user (the base backup below); checked by the plan.
- The rollback DAG `pg_major_upgrade_rollback` unpaused (checked first).

## Impact
Outage for connected clients from *terminate_clients* (new logins are refused from *block logins*) to
*open to clients*: link/clone/swap time grows with the number of relations,
copy and dump/restore time with the data size. The plan prints its estimate; the report the measured outage.

## Steps
1. **plan** — `check_rollback_dag`, `validate_params`, `acquire_lock` (per cluster), `plan` (support matrix,
   blockers, extensions in the new installation, disk space, `pg_upgrade --check` against a throwaway cluster
   that matches the old one, method and outage estimate), `dry_run_gate`, `approve_blockers` (ends at once
   unless the plan found blockers that an `ack_*` param can acknowledge and the conf did not: then a person
   approves in the Airflow UI — *Required actions* — or the run ends failed, before any change, on reject or
   after `decision_timeout_s`; who decided is in the journal and the report).
2. **prepare** — `backup` (globals + `pg_dump -Fd -j N` per database, verified, checksummed; in link and swap
   mode also a base backup, `pg_basebackup -X stream`, checked with `pg_verifybackup`, which creates the
   replication slot `pgupgrade_rollback_wal` so the old cluster keeps its WAL from then on: once the new
   cluster has started, the rollback rebuilds the old one from that backup plus that WAL, every write up to the
   stop included), `rehearsal`.
3. **stop** — `window_guard`, `init_new` (initdb of the new cluster matching the old one, before the outage),
   `stop_applications` (admin hook), `notify_outage_start`, `block_logins` (`pg_hba.conf` rejects every login
   role but the tool's own, by a reload: no catalog change; connected clients keep working), sensors
   `wait_no_clients` (until they leave, at most `terminate_after_s`) and `wait_queue_empty`.
4. **upgrade** — `choose_method` branches to `pg_upgrade` (link | copy | clone | swap) or `dump_restore`. Either
   branch is **one task running the outage-critical steps in one process**, each journaled under its own name:
   `terminate_clients` (the old cluster restarted where only the run reaches it — private socket, no client
   TCP: every session left after the grace period ends, whatever role it uses, the tool's own superuser
   included, and none comes back until the opening; then waits for the queue to be empty), `snapshot_facts`,
   `stop_old`, `stop_standbys` (each once it replayed the primary's shutdown checkpoint — the WAL it could not
   stream while the primary ran privately is shipped from the primary's `pg_wal` — then "Latest checkpoint
   location" equal on every node, else the rollback starts every node back), then `pg_upgrade` and
   `sync_standbys` (link mode: PostgreSQL's documented `rsync --archive --delete --hard-links --size-only
   --no-inc-recursive` from the primary's host to every standby host at once, each standby's own files kept, its
   configuration carried into its new directory with `standby.signal`) | `dump_restore` (from the old cluster
   while it still runs privately, uncompressed) then `stop_old`, `stop_standbys`; `configure_new` (configuration
   carried over correctly), `start_new_private` (private socket, no TCP), `reserve_standby_wal` (the old
   primary's physical slots recreated, WAL held for the standbys), `update_extensions` (pg_upgrade's
   `update_extensions.sql`, metadata, triggers firing), `validate_facts`, `health_check`, `open_to_clients` (old
   port and sockets; logins given back). Why one task: each task hand-off costs 1-3 s of scheduling and process
   start-up, and ten of them inside the outage would triple it (see docs/benchmarks.md). The trade-off: these
   steps cannot be cleared one by one in the UI — after a failure the rollback DAG decides from the journal.
5. **after** (clients are back) — `standby_names` → `standby` (a mapped task per listed standby: started on the
   new major and proven streaming from the new primary; one not rsynced — copy/clone/swap, dump/restore,
   tablespaces, an external `pg_wal`, another layout — is re-cloned by `pg_basebackup` first, outside the
   outage) → `release_standby_wal`; `start_applications` (admin hook), `app_health` (polls the admin-configured URL
   in Variable `pgupgrade_app_health` until it answers `expect_status`; still unhealthy after `timeout_s` → the
   run fails; not configured → skipped with a message), `refresh_tviews`, `analyze`
   (`vacuumdb --analyze-in-stages`, built to run with clients connected), `performance`; beside them
   `collations` (REINDEX CONCURRENTLY of the indexes the plan names on collations whose version changed, then
   their versions refreshed; nothing when every version is equal) and
   `archiving` (pgBackRest: `check` and a new full backup, its `stanza-upgrade` having run at opening; other tools:
   the admin's `archiving` hook; a failure alerts, never rolls back; see docs/deploying.md).
6. **report** — JSON + Markdown.

## Rollback
A failure after `open_to_clients` alerts loudly (`failed_after_open`) and leaves the validated new version
serving (`after_open_failure=alert`, the default; `rollback` asks for the rollback instead); the rollback DAG
stays available by hand. Before the opening, any failed task → `handover_lock` → `trigger_rollback` starts
`pg_major_upgrade_rollback` with run id `rollback__<run_id>`; `finish` then fails the run. The DAG-level
failure callback triggers the same run id through the REST API as a backstop. The rollback DAG decides its
path from the journal and the old data
directory (see its own documentation).

## Alerts
Outage start, success and failure go to the channels in the Airflow Variable `pgupgrade_notify`
(`webhook_conn_id`: JSON POST; `email_to` + `smtp_conn_id`: the SMTP provider's `SmtpNotifier`), with cluster,
DAG, step, error, run link and the report summary. The rollback DAG alerts when it has brought the old version back.

## Success criteria
Facts (databases, roles, row counts per table, optional content checksums) equal before and after; health
check passes; extension metadata count unchanged and triggers firing; the new cluster answers on the old port.

## Schedule and alerts
Runs on the maintenance window of `include/config/windows.json` once unpaused (paused on creation). A scheduled
run only dispatches: it reads `include/config/clusters.json` when it runs and starts one run per cluster whose
entry names this DAG (`{"conn_id": "pg_main", "dags": {"pg15_to_pg16_upgrade": {"transfer_mode": "link"}}}`),
run id `window__<conn_id>__<window start>`, conf = those defaults + `window_end`. A cluster already on the
target major ends green at `dry_run_gate` ("nothing to do"), untouched. A run still going one window length after
it was queued raises a deadline alert (DeadlineAlert; needs `airflow triggerer`) through the `pgupgrade_notify`
channels.

## Trigger
UI: *Trigger DAG w/ config*. CLI:
`airflow dags trigger pg15_to_pg16_upgrade --conf '{"postgres_conn_id": "pg_main", "transfer_mode": "link"}'`
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, TaskGroup, TriggerRule, task

from pgupgrade import archiving, clients, decisions, entities
from pgupgrade.airflow import app_health, failure, hitl, notifiers, tasks
from pgupgrade.airflow import dags as ad
from pgupgrade.airflow import schedule as sched
from pgupgrade.airflow import windows as aw
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError
from pgupgrade.major import after, cutover, fields, prepare, standbys
from pgupgrade.major import plan as major_plan
from pgupgrade.major.model import MajorPlan, Method
from pgupgrade.major.transfer import new_cluster

ROLLBACK_DAG_ID = "pg_major_upgrade_rollback"


def archive_after_open(ctx: RunContext) -> dict[str, Any]:
    """Archiving after opening (pgupgrade.archiving.after_open); alerts instead of failing the task."""
    hook, hook_error = None, None
    try:
        hook = tasks.admin_hook(archiving.HOOK)
    except ConfigError as exc:  # a misconfigured hook must not fail the task: the cluster is open
        hook_error = str(exc)
    res = archiving.after_open(ctx, new_cluster(ctx, ctx.plan(MajorPlan), private=False), hook, hook_error)
    if res["needs_attention"]:
        notifiers.send(
            "archiving_failed", ctx.dag_id, ctx.run_id, ctx.cluster.name, None, detail={"archiving": res["summary"]}
        )
    return res


def build(from_major: int | None, to_major: int | None) -> DAG:
    """One DAG per guide; with no majors given, the generic DAG (any supported major → target_major)."""
    spec = {"from_major": from_major, "to_major": to_major}
    dag_id = f"pg{from_major}_to_pg{to_major}_upgrade" if from_major else "pg_major_upgrade"
    F = fields.FIELDS if from_major else [*fields.FIELDS, fields.TARGET_MAJOR]
    what = f"PostgreSQL {from_major} → {to_major}" if from_major else "PostgreSQL N → target_major (skipping majors)"

    def step(task_id: str, fn: Any, doc: str, **kw: Any) -> Any:
        return tasks.step_task(task_id, fn, fields=F, spec=spec, doc=doc, **kw)

    with ad.upgrade_dag(
        dag_id,
        description=f"{what}: pg_upgrade or dump/restore, automatic rollback",
        doc_md=__doc__,
        tags=["upgrade", "major"],
        fields=F,
        rollback_dag_id=ROLLBACK_DAG_ID,
    ) as dag:
        with TaskGroup("plan") as g_plan:
            plan, gate = tasks.plan_phase(
                fields=F,
                spec=spec,
                rollback_dag_id=ROLLBACK_DAG_ID,
                make_plan=hitl.with_asking(major_plan.plan),
                plan_doc="Support matrix, blockers, extensions, space, method, estimate. No side effects.",
                cross_checks=fields.cross_checks,
            )
            gate >> hitl.DecisionApproval(
                task_id="approve_blockers",
                fields=F,
                spec=spec,
                question=lambda rc, asking: decisions.blockers_decision(rc.state.load("plan"), rc.params),
                reject_error="the upgrade was not approved; nothing was changed",
                doc_md="A person approves going ahead despite the plan's acknowledgeable blockers (standbys, slots, "
                "subscriptions) the ack_* params did not acknowledge; ends at once when there are none.",
            )

        with TaskGroup("prepare") as g_prepare:
            bkp = step(
                "backup",
                prepare.take_backup,
                "Globals + pg_dump -Fd -j N per database, verified with pg_restore -l, checksummed; link/swap: "
                "also a base backup whose replication slot keeps the old cluster's WAL (the way back).",
            )
            rehearse = step(
                "rehearsal",
                prepare.rehearsal,
                "Optional: the same upgrade on a scratch copy restored from the backup.",
            )
            bkp >> rehearse

        with TaskGroup("stop") as g_stop:
            window = step(
                "window_guard",
                lambda ctx: aw.window_guard(ctx, ctx.plan(MajorPlan).outage_estimate_s),
                "Refuses to start the outage when the estimate does not fit the window.",
            )
            init = step(
                "init_new",
                prepare.init_new,
                "initdb of the new cluster matching the old one (locale, encoding, checksums, WAL segment "
                "size), before the outage.",
            )
            stop_apps = tasks.hook_task(
                "stop_applications", fields=F, spec=spec, doc="Admin-configured hook (Variable pgupgrade_hooks)."
            )
            alert = step(
                "notify_outage_start",
                lambda ctx: notifiers.send("outage_start", ctx.dag_id, ctx.run_id, ctx.cluster.name, None),
                "Alerts the configured channels (Variable pgupgrade_notify) that the outage starts.",
            )
            block = step(
                "block_logins",
                clients.block_logins,
                "pg_hba.conf rejects every login role but ours (reload; recorded).",
            )
            no_clients = tasks.sensor_task(
                "wait_no_clients",
                clients.clients_gone,
                fields=F,
                spec=spec,
                timeout_param="connection_wait_timeout_s",
                doc="No client sessions left, or terminate_after_s passed (the cutover then terminates them).",
            )
            queue = tasks.sensor_task(
                "wait_queue_empty",
                lambda ctx: entities.queue_empty(ctx, ctx.plan(MajorPlan).databases),
                fields=F,
                spec=spec,
                timeout_param="queue_wait_timeout_s",
                doc="The extension's queue is empty.",
            )
            slot = tasks.outage_slot_task(fields=F, spec=spec)
            window >> init >> slot >> stop_apps >> alert >> block >> no_clients >> queue

        with TaskGroup("upgrade") as g_upgrade:

            @task.branch(task_id="choose_method")
            def choose_method(plan_: dict[str, Any]) -> str:
                """Follows the method the plan chose before the outage."""
                return f"upgrade.{plan_['method']}"

            branch = choose_method(plan)
            pgu = tasks.steps_task(
                "pg_upgrade",
                cutover.cutover_steps(Method.PG_UPGRADE),
                fields=F,
                spec=spec,
                doc="The outage-critical section in one process: terminate_clients, snapshot_facts, stop_old, "
                "stop_standbys (checkpoints equal), pg_upgrade (in the planned transfer mode), sync_standbys (rsync "
                "from the primary's host, link mode), configure_new, start_new_private, reserve_standby_wal, "
                "update_extensions, validate_facts, health_check, open_to_clients.",
            )
            dr = tasks.steps_task(
                "dump_restore",
                cutover.cutover_steps(Method.DUMP_RESTORE),
                fields=F,
                spec=spec,
                doc="The outage-critical section in one process: terminate_clients, snapshot_facts, "
                "dump_restore (pg_dump -Fd -j N -Z 0 from the old cluster, still running with logins blocked and "
                "no client left / pg_restore -j N per database), stop_old, stop_standbys, configure_new, "
                "start_new_private, reserve_standby_wal, update_extensions, validate_facts, health_check, "
                "open_to_clients.",
            )
            branch >> [pgu, dr]

        with TaskGroup("after") as g_after:
            start_apps = tasks.hook_task(
                "start_applications",
                fields=F,
                spec=spec,
                doc="Admin-configured hook (Variable pgupgrade_hooks).",
                trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            )
            check_apps = app_health.app_health_task(fields=F, spec=spec)
            rf = step("refresh_tviews", after.refresh_tviews, "Refresh every TVIEW (force).")
            an = step("analyze", after.analyze, "vacuumdb --analyze-in-stages.")
            pf = step("performance", after.performance, "TVIEW scan times vs before.")
            arch = step(
                "archiving",
                archive_after_open,
                "pgBackRest: check and a new full backup (no point-in-time recovery for the new major before it); "
                "other tools: the admin's 'archiving' hook (Variable pgupgrade_hooks) on the database host. A "
                "failure alerts and never rolls the open cluster back.",
            )
            co = step(
                "collations",
                after.rebuild_collation_indexes,
                "REINDEX CONCURRENTLY the indexes on collations whose version changed in the new installation (the "
                "plan names them), then refresh the recorded versions; nothing when every version is equal.",
            )
            names = step(
                "standby_names",
                standbys.to_start,
                "The listed standbys still to start on the new major: one `standby` task each.",
                trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,  # after whichever method ran
            )
            one = tasks.mapped_step_task(
                "standby",
                standbys.start_standby,
                names,
                fields=F,
                spec=spec,
                doc="One standby on the new major (re-cloned by pg_basebackup first when not rsynced), proven "
                "streaming from the new primary (dynamic task mapping: a task instance per standby).",
            )
            one >> step(
                "release_standby_wal",
                standbys.release_wal,
                "Once every standby streams: the slot that held WAL for them dropped; nothing without standbys.",
                trigger_rule=TriggerRule.NONE_FAILED,  # also when there was no standby to start
            )
            start_apps >> check_apps >> rf >> an >> pf
            check_apps >> co
            check_apps >> arch

        rep = step("report", lambda ctx: after.write_report(ctx, "success"), "JSON + Markdown report.")
        g_plan >> g_prepare >> g_stop >> g_upgrade >> g_after >> rep
        gate >> g_prepare
        failure.failure_tail(dag, ROLLBACK_DAG_ID, F)
        sched.scheduled_dispatch(F, before=g_plan)
    return dag


for _from, _to in ((15, 16), (16, 17), (17, 18)):
    globals()[f"pg{_from}_to_pg{_to}_upgrade"] = build(_from, _to)
pg_major_upgrade = build(None, None)
