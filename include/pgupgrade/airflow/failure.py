"""Failure → rollback wiring: the rollback DAG checked before a run starts, the cluster lock handed to the rollback
run, the rollback triggered (a task, and the REST API from the DAG's failure callback), the run failed at the end
when anything failed, the failure report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from pgupgrade import outage
from pgupgrade.airflow.context import run_context
from pgupgrade.airflow.store import run_store
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PgUpgradeError
from pgupgrade.params import Field
from pgupgrade.recovery import rollback_needed
from pgupgrade.state import RunJournal
from pgupgrade.state.control import ControlUnreachable

log = logging.getLogger(__name__)


API_CONN_ID = "pgupgrade_airflow_api"


def dagrun_alive(dag_id: str, run_id: str) -> bool:
    """Whether a run is still queued or running, asked through the Task SDK (unknown counts as alive)."""
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception as exc:  # no API reachable: never break a lock we cannot judge
        log.warning("cannot ask Airflow for the state of %s/%s (%s): treating it as alive", dag_id, run_id, exc)
        return True
    return str(state).lower().rsplit(".", 1)[-1] in ("queued", "running")


def rollback_run_id(run_id: str) -> str:
    return f"rollback__{run_id}"


def failed_tasks() -> list[str]:
    ctx = get_current_context()
    ti = ctx["ti"]
    states = ti.get_task_states(dag_id=ctx["dag"].dag_id, run_ids=[ctx["run_id"]])
    per_run: dict[str, Any] = next(iter(states.values()), {}) if states else {}
    return sorted(t for t, s in per_run.items() if str(s).lower().rsplit(".", 1)[-1] == "failed" and t != ti.task_id)


def check_rollback_dag(rollback_dag_id: str) -> str:
    """Fails unless the rollback DAG exists and is unpaused (a paused one would leave its run queued)."""
    paused = _dag_paused_via_api(rollback_dag_id)
    if paused is None:
        paused = _dag_paused_via_orm(rollback_dag_id)
    if paused is None:
        raise AirflowFailException(
            f"cannot tell whether rollback DAG {rollback_dag_id} is active: add the Airflow connection "
            f"{API_CONN_ID} (http, host = api-server base URL, login/password) so tasks can ask the REST API"
        )
    if paused:
        raise AirflowFailException(f"rollback DAG {rollback_dag_id} is paused: unpause it before upgrading")
    return f"rollback DAG {rollback_dag_id} is active"


def _api() -> tuple[str, dict[str, str]] | None:
    from airflow.sdk import Connection

    try:
        conn = Connection.get(API_CONN_ID)
    except Exception:
        return None
    import requests

    base = (conn.host or "").rstrip("/")
    if conn.port:
        base = f"{base}:{conn.port}"
    if not base.startswith("http"):
        base = f"http://{base}"
    token = requests.post(f"{base}/auth/token", json={"username": conn.login, "password": conn.password}, timeout=10)
    token.raise_for_status()
    return base, {"Authorization": f"Bearer {token.json()['access_token']}"}


def _dag_paused_via_api(dag_id: str) -> bool | None:
    api = _api()
    if api is None:
        return None
    import requests

    base, headers = api
    resp = requests.get(f"{base}/api/v2/dags/{dag_id}", headers=headers, timeout=10)
    if resp.status_code == 404:
        raise AirflowFailException(f"rollback DAG {dag_id} does not exist")
    resp.raise_for_status()
    return bool(resp.json()["is_paused"])


def _dag_paused_via_orm(dag_id: str) -> bool | None:
    try:
        from airflow.models.dag import DagModel

        model = DagModel.get_dagmodel(dag_id)
    except Exception as exc:  # under a real executor tasks may not use the ORM
        log.info("ORM not available to this task (%s)", exc)
        return None
    if model is None:
        raise AirflowFailException(f"rollback DAG {dag_id} does not exist")
    return bool(model.is_paused)


def trigger_via_api(dag_id: str, run_id: str, conf: dict[str, Any]) -> str:
    """The backstop path of the DAG-level failure callback (409 = already triggered)."""
    api = _api()
    if api is None:
        return f"no {API_CONN_ID} connection: cannot trigger {dag_id} from the callback"
    import requests

    base, headers = api
    resp = requests.post(
        f"{base}/api/v2/dags/{dag_id}/dagRuns",
        headers=headers,
        timeout=10,
        json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
    )
    if resp.status_code == 409:
        return f"{dag_id} run {run_id} already exists"
    resp.raise_for_status()
    return f"triggered {dag_id} run {run_id}"


def rollback_callback(rollback_dag_id: str) -> Callable[[dict[str, Any]], None]:
    """DAG-level on_failure_callback: triggers the same rollback run id through the REST API, for runs that
    fail without a failed task (dagrun_timeout, a killed run). Harmless when the task path already did. When this
    trigger fails too (API down, no API connection) or the rollback DAG is paused, and the run's own ``finish``
    did not already see the rollback start or say it did not, it sends the loud ``rollback_trigger_failed``
    alert with the conf to start the rollback by hand."""

    def _callback(context: dict[str, Any]) -> None:
        dag_run = context.get("dag_run")
        if dag_run is None:
            return
        if str(getattr(dag_run, "run_type", "")).lower().endswith("scheduled"):
            return  # a scheduled run only dispatches per-cluster runs: it never touches a cluster
        dag_id, run_id = dag_run.dag_id, dag_run.run_id
        conf = {
            "upgrade_dag_id": dag_id,
            "upgrade_run_id": run_id,
            "postgres_conn_id": (dag_run.conf or {}).get("postgres_conn_id")
            or context["params"].get("postgres_conn_id"),
        }
        state = run_store().run(dag_id, run_id)
        try:
            changed = bool(state.side_effects())  # failed steps are journaled too: only a change needs a way back
        except ControlUnreachable as exc:  # the journal cannot be read: a person must start the rollback later
            from pgupgrade.airflow import notifiers

            why = f"{exc}; when it is back, start the rollback run by hand (its conf below)"
            log.error(why)
            notifiers.rollback_not_started(
                dag_id, run_id, conf["postgres_conn_id"], rollback_dag_id, rollback_run_id(run_id), why, context
            )
            return
        if not changed:
            log.info("run %s changed nothing: no rollback needed", run_id)
            return
        wanted, why = rollback_needed(state, str(context["params"].get("after_open_failure", "alert")))
        if not wanted:  # the run's own handover_lock alerted (after opening) when it ran
            log.warning("no rollback for run %s: %s", run_id, why)
            return
        problem: str | None = None
        try:
            outcome = trigger_via_api(rollback_dag_id, rollback_run_id(run_id), conf)
            log.info(outcome)
            if outcome.startswith("no "):
                problem = outcome
            elif _dag_paused_via_api(rollback_dag_id):
                problem = f"the rollback DAG {rollback_dag_id} is paused: its run stays queued"
        except Exception as exc:  # API down, 4xx/5xx: say so loudly below
            problem = f"triggering {rollback_dag_id} through the REST API failed: {type(exc).__name__}: {exc}"
            log.error(problem)
        settled = state.happened("rollback_started") or state.happened("rollback_not_started")
        if problem and state.side_effects() and not settled:
            from pgupgrade.airflow import notifiers

            state.record("rollback_not_started", reason=problem, by="callback")
            notifiers.rollback_not_started(
                dag_id, run_id, conf["postgres_conn_id"], rollback_dag_id, rollback_run_id(run_id), problem, context
            )

    return _callback


def failure_tail(dag: Any, rollback_dag_id: str, fields: list[Field]) -> None:
    """handover_lock (one_failed) → trigger_rollback → finish (all_done; fails the run when anything failed)."""

    upstream = list(dag.tasks)

    @task.short_circuit(
        task_id="handover_lock",
        trigger_rule="one_failed",
        ignore_downstream_trigger_rules=False,
        doc_md="Hands the cluster lock to the rollback run (only if this run holds it).",
    )
    def handover_lock() -> bool:
        ctx = get_current_context()
        dag_id, run_id = ctx["dag"].dag_id, ctx["run_id"]
        try:
            rc = run_context(fields)
        except (ConfigError, PgUpgradeError, AirflowFailException) as exc:
            log.info("no rollback: the run failed before it could act (%s)", exc)
            return False
        holder = rc.lock.holder()
        if not holder or (holder["dag_id"], holder["run_id"]) != (dag_id, run_id):
            log.info("no rollback: this run never held the cluster lock (holder: %s)", holder)
            return False
        wanted, why = rollback_needed(rc.state, rc.params.get("after_open_failure", "alert"))
        if not wanted:
            log.warning("no rollback: %s", why)
            if rc.state.happened("opened"):
                from pgupgrade.airflow import notifiers

                rc.state.record("failed_after_open", failed=failed_tasks())
                notifiers.failed_after_open(dag_id, run_id, rc.params["postgres_conn_id"], why, ctx)
            return False
        rc.lock.hand_over(dag_id, run_id, rollback_dag_id, rollback_run_id(run_id))
        rc.state.record("rollback_triggered", dag_id=rollback_dag_id, run_id=rollback_run_id(run_id))
        return True

    trigger = TriggerDagRunOperator(
        task_id="trigger_rollback",
        trigger_dag_id=rollback_dag_id,
        trigger_run_id="rollback__{{ run_id }}",
        conf={
            "upgrade_dag_id": "{{ dag.dag_id }}",
            "upgrade_run_id": "{{ run_id }}",
            "postgres_conn_id": "{{ params.postgres_conn_id }}",
        },
        skip_when_already_exists=True,
        wait_for_completion=False,
        retries=0,
    )

    @task(
        task_id="finish",
        trigger_rule="all_done",
        retries=0,
        doc_md="Releases the lock on success; fails the run when any task failed.",
    )
    def finish() -> str:
        ctx = get_current_context()
        dag_id, run_id = ctx["dag"].dag_id, ctx["run_id"]
        failed = failed_tasks()
        state = run_store().run(dag_id, run_id)
        try:
            rc = run_context(fields)
        except Exception:
            rc = None
        if rc is not None and not state.happened("rollback_triggered"):
            rc.lock.release(dag_id, run_id)
            outage.release_slot(rc)
        if failed and rc is not None and state.events():
            write_failure_report(rc, failed)
        if failed and state.happened("rollback_triggered"):
            _check_rollback_started(ctx, failed, state, rc)
        if failed:
            raise AirflowFailException(f"tasks failed: {', '.join(failed)}")
        return "run finished"

    def _check_rollback_started(ctx: Any, failed: list[str], state: RunJournal, rc: RunContext | None) -> None:
        """The loud alert when the rollback run was not created (trigger_rollback failed) or cannot start (the
        rollback DAG is paused: the run stays queued); journaled so the DAG callback does not repeat it."""
        rb_run = rollback_run_id(ctx["run_id"])
        problem: str | None = None
        if "trigger_rollback" in failed:
            problem = f"the trigger_rollback task failed: run {rb_run} of {rollback_dag_id} was not created"
        else:
            try:
                paused = _dag_paused_via_api(rollback_dag_id)
                if paused is None:
                    paused = _dag_paused_via_orm(rollback_dag_id)
            except Exception as exc:
                paused = None
                problem = f"cannot confirm the rollback DAG {rollback_dag_id} is active: {exc}"
            if paused:
                problem = f"the rollback DAG {rollback_dag_id} is paused: its run {rb_run} stays queued"
            elif paused is None and problem is None:
                log.warning("cannot tell whether %s is paused (no %s connection)", rollback_dag_id, API_CONN_ID)
        if problem is None:
            state.record("rollback_started", dag_id=rollback_dag_id, run_id=rb_run)
            return
        from pgupgrade.airflow import notifiers

        cluster = rc.params["postgres_conn_id"] if rc is not None else ctx["params"].get("postgres_conn_id")
        state.record("rollback_not_started", reason=problem, by="finish")
        notifiers.rollback_not_started(ctx["dag"].dag_id, ctx["run_id"], cluster, rollback_dag_id, rb_run, problem, ctx)

    gate = handover_lock()
    upstream >> gate
    gate >> trigger
    end = finish()
    [*upstream, trigger] >> end


def take_over_lock(rc: RunContext) -> str:
    """A rollback run's lock step: takes the cluster lock over from the upgrade run it cleans up after
    (params ``upgrade_dag_id``/``upgrade_run_id``)."""
    line = rc.lock.acquire(
        rc.dag_id, rc.run_id, dagrun_alive, heir_of=(rc.params["upgrade_dag_id"], rc.params["upgrade_run_id"])
    )
    return str(line)


def rollback_finish(fields: list[Field], read_only: frozenset[str] = frozenset()) -> Any:
    """A rollback DAG's last task (all_done): releases the cluster lock, or — when any task of the rollback
    failed — keeps it marked *needs attention* so that no run touches the cluster until a person has looked."""

    @task(task_id="finish", trigger_rule="all_done", retries=0, doc_md="Releases the lock, or marks it.")
    def finish() -> str:
        rc = run_context(fields)
        failed = failed_tasks()
        if not failed or set(failed) <= read_only:  # the cluster serves again (or was never changed)
            outage.release_slot(rc, rc.params["upgrade_dag_id"], rc.params["upgrade_run_id"])
        if failed and set(failed) <= read_only:  # refused before changing anything: the cluster is as it was
            rc.lock.release(rc.dag_id, rc.run_id)
            raise AirflowFailException(f"rollback refused in {', '.join(failed)}; nothing was changed")
        if failed:
            rc.lock.needs_attention(rc.dag_id, rc.run_id, f"rollback run failed in {', '.join(failed)}")
            raise AirflowFailException(f"rollback failed in {', '.join(failed)}; the cluster lock is kept")
        rc.lock.release(rc.dag_id, rc.run_id)
        return "lock released"

    return finish()


def write_failure_report(rc: RunContext, failed: list[str]) -> None:
    """The report of a failed run: failed steps with their errors, pg_upgrade's logs, the server log tail."""
    from pgupgrade import report
    from pgupgrade.cluster import service_for
    from pgupgrade.scratch import log_tail

    errors = [e for e in rc.state.events() if e["event"] == "step" and e["status"] == "failed"]
    failure = {
        "failed_tasks": failed,
        "errors": [{"step": e["step"], "error": e.get("error")} for e in errors],
        "pg_upgrade_logs": rc.state.load("pg_upgrade_logs"),
    }
    try:
        failure["server_log_tail"] = log_tail(rc.host, service_for(rc.cluster, rc.host))
    except PgUpgradeError as exc:
        failure["server_log_tail"] = f"unavailable: {exc}"
    rep = report.build(rc.state, status="failed", extra={"failure": failure})
    report.write(rc.state, rep, root=rc.store.root)
