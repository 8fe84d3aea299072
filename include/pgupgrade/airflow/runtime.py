"""Airflow-facing glue: build a RunContext from the task context, wrap library steps as tasks, hand the
cluster lock to the rollback run, trigger it, and fail the run at the end when anything failed."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pgupgrade import plans, profiles
from pgupgrade.airflow.connections import cluster_from_conn_id, host_for
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PgUpgradeError
from pgupgrade.params import Field, validate
from pgupgrade.state import RunJournal
from pgupgrade.state import store as run_store

log = logging.getLogger(__name__)
API_CONN_ID = "pgupgrade_airflow_api"


def airflow_params(fields: list[Field]) -> dict[str, Param]:
    """The trigger form: JSON-schema types, enums, titles, descriptions, sections, valid defaults."""
    out = {}
    for f in fields:
        # an optional text field (default "") must be submittable empty from the trigger form: allow null
        schema: dict[str, Any] = {"type": ["null", "string"] if f.type == "string" and f.default == "" else f.type}
        if f.enum:
            schema["enum"] = list(f.enum)
        if f.minimum is not None:
            schema["minimum"] = f.minimum
        if f.maximum is not None:
            schema["maximum"] = f.maximum
        if f.type == "array":
            schema["items"] = {"type": "string"}
        out[f.name] = Param(f.default, title=f.title, description=f.description, section=f.section, **schema)
    return out


def _conf_and_params(fields: list[Field]) -> tuple[dict[str, Any], dict[str, Any]]:
    ctx = get_current_context()
    conf = dict(getattr(ctx.get("dag_run"), "conf", None) or {})
    params = {f.name: ctx["params"].get(f.name, f.default) for f in fields}
    return conf, params


def validated(fields: list[Field], extra_check: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Validates the trigger conf (unknown keys included) and the resolved params."""
    conf, params = _conf_and_params(fields)
    validate(fields, conf)  # unknown keys and bad values as the user typed them
    clean = validate(fields, params)
    if extra_check:
        extra_check(clean)
    return clean


def run_context(
    fields: list[Field],
    spec: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    state_of: tuple[str, str] | None = None,
) -> RunContext:
    ctx = get_current_context()
    clean = params if params is not None else validated(fields)
    cluster = cluster_from_conn_id(clean["postgres_conn_id"])
    dag_id, run_id = state_of or (ctx["dag"].dag_id, ctx["run_id"])
    return RunContext(
        dag_id=dag_id,
        run_id=run_id,
        params=clean,
        cluster=cluster,
        host=host_for(cluster),
        state=run_store().run(dag_id, run_id),
        profile=profiles.get(clean.get("extension_profile", "pg_tviews")),
        spec=spec or {},
    )


class InjectedFailure(PgUpgradeError):
    """Raised by a step named in PGUPGRADE_INJECT_FAILURE: fault drills and tests on the worker's own config."""


def _injected_failures() -> set[str]:
    return {s.strip() for s in os.environ.get("PGUPGRADE_INJECT_FAILURE", "").split(",") if s.strip()}


def journaled(state: RunJournal, step: str, fn: Callable[[], Any]) -> Any:
    """Runs fn, recording the step's outcome and duration in the run's journal."""
    started = time.monotonic()
    try:
        if step in _injected_failures():
            raise InjectedFailure(f"failure injected into step {step} (PGUPGRADE_INJECT_FAILURE)")
        result = fn()
    except AirflowSkipException:
        state.record("step", step=step, status="skipped", seconds=round(time.monotonic() - started, 3))
        raise
    except Exception as exc:
        state.record(
            "step",
            step=step,
            status="failed",
            seconds=round(time.monotonic() - started, 3),
            error=f"{type(exc).__name__}: {exc}"[:4000],
        )
        if isinstance(exc, ConfigError | PgUpgradeError):
            raise AirflowFailException(str(exc)) from exc
        raise
    state.record("step", step=step, status="success", seconds=round(time.monotonic() - started, 3))
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def step_task(
    task_id: str,
    fn: Callable[[RunContext], Any],
    fields: list[Field],
    *,
    spec: dict[str, Any] | None = None,
    doc: str,
    **task_kwargs: Any,
) -> Any:
    """A task that runs one library step with a fresh RunContext; destructive steps are never retried."""

    def _run() -> Any:
        rc = run_context(fields, spec)
        return _jsonable(journaled(rc.state, task_id, lambda: fn(rc)))

    _run.__name__ = task_id
    return task(task_id=task_id, doc_md=doc, retries=task_kwargs.pop("retries", 0), **task_kwargs)(_run)()


def steps_task(
    task_id: str,
    steps: list[tuple[str, Callable[[RunContext], Any]]],
    fields: list[Field],
    *,
    spec: dict[str, Any] | None = None,
    doc: str,
    **task_kwargs: Any,
) -> Any:
    """One task running several library steps in order in one process (the outage-critical section: no task
    hand-off in between); each step is journaled under its own name, as if it were a task of its own."""

    def _run() -> Any:
        rc = run_context(fields, spec)
        out: dict[str, Any] = {}
        for name, fn in steps:
            log.info("── step %s", name)
            out[name] = _jsonable(journaled(rc.state, name, lambda fn=fn: fn(rc)))  # type: ignore[misc]
        return out

    _run.__name__ = task_id
    return task(task_id=task_id, doc_md=doc, retries=0, **task_kwargs)(_run)()


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


def rollback_conf(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "upgrade_dag_id": "{{ dag.dag_id }}",
        "upgrade_run_id": "{{ run_id }}",
        "postgres_conn_id": params["postgres_conn_id"],
    }


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
        state = run_store().run(dag_id, run_id)
        if not state.events():
            log.info("run %s changed nothing: no rollback needed", run_id)
            return
        conf = {
            "upgrade_dag_id": dag_id,
            "upgrade_run_id": run_id,
            "postgres_conn_id": (dag_run.conf or {}).get("postgres_conn_id")
            or context["params"].get("postgres_conn_id"),
        }
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


def sensor_task(
    task_id: str,
    fn: Callable[[RunContext], bool],
    fields: list[Field],
    spec: dict[str, Any],
    timeout_param: str,
    doc: str,
) -> Any:
    """A poke-mode sensor (0.5 s interval: it runs inside the outage) with its deadline from a param."""

    @task.sensor(task_id=task_id, poke_interval=0.5, timeout=7 * 24 * 3600, mode="poke", doc_md=doc, retries=0)
    def _poke() -> bool:
        rc = run_context(fields, spec)
        first = rc.state.first(f"sensor_started:{task_id}")
        if first is None:
            rc.state.record(f"sensor_started:{task_id}")
            first = rc.state.first(f"sensor_started:{task_id}")
        assert first is not None
        import datetime as dt

        waited = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(first["at"])).total_seconds()
        done = bool(journaled(rc.state, f"{task_id}.poke", lambda: fn(rc)))
        if done:
            rc.state.record("step", step=task_id, status="success", seconds=round(waited, 3))
            return True
        if waited > rc.params[timeout_param]:
            rc.state.record(
                "step",
                step=task_id,
                status="failed",
                seconds=round(waited, 3),
                error=f"still waiting after {timeout_param}={rc.params[timeout_param]}s",
            )
            raise AirflowFailException(f"{task_id}: gave up after {rc.params[timeout_param]}s ({timeout_param})")
        return False

    return _poke()


def failure_tail(dag: Any, rollback_dag_id: str, fields: list[Field]) -> None:
    """handover_lock (one_failed) → trigger_rollback → finish (all_done; fails the run when anything failed)."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

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
        if not rc.state.side_effects():
            log.info("no rollback: the run failed before it changed anything (only read-only steps ran)")
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


# -- shared by the runbook DAGs (added with the minor-upgrade DAGs) -----------------------------------------


def admin_json_variable(name: str) -> Any:
    """An admin-set Airflow Variable holding JSON, or None when unset: configuration that no trigger conf can
    change (e.g. the argv of an install command)."""
    from airflow.sdk import Variable

    try:
        raw = Variable.get(name, default=None)
    except Exception as exc:  # the SDK raises its own error types when the API cannot answer
        raise ConfigError(f"Variable {name}", f"cannot be read: {exc}") from None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Variable {name}", f"is not valid JSON: {exc}") from None


def dry_run_gate(plan: Any) -> Any:
    """Short-circuits after the plan for dry runs and for clusters already where the run would take them
    (``plan["already_upgraded"]``): the run ends green and the cluster untouched."""

    @task.short_circuit(
        task_id="dry_run_gate",
        ignore_downstream_trigger_rules=False,
        doc_md="Stops here for dry runs and clusters already on the target (green, untouched).",
    )
    def _gate(plan_: dict[str, Any], **context: Any) -> bool:
        if plan_.get("already_upgraded"):
            log.info("nothing to do: %s", plan_.get("reason"))
            return False
        if context["params"]["dry_run"]:
            log.info("dry run, the plan:\n%s", json.dumps(plan_, indent=2, default=str))
            return False
        return True

    return _gate(plan)


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
        if failed and set(failed) <= read_only:  # refused before changing anything: the cluster is as it was
            rc.lock.release(rc.dag_id, rc.run_id)
            raise AirflowFailException(f"rollback refused in {', '.join(failed)}; nothing was changed")
        if failed:
            rc.lock.needs_attention(rc.dag_id, rc.run_id, f"rollback run failed in {', '.join(failed)}")
            raise AirflowFailException(f"rollback failed in {', '.join(failed)}; the cluster lock is kept")
        rc.lock.release(rc.dag_id, rc.run_id)
        return "lock released"

    return finish()


HOOKS_VARIABLE = "pgupgrade_hooks"


def admin_hook(name: str) -> list[str] | None:
    """An argv from admin configuration (Airflow Variable pgupgrade_hooks, JSON {name: [argv...]}), never from
    trigger conf. None when not configured."""
    hooks = admin_json_variable(HOOKS_VARIABLE) or {}
    argv = hooks.get(name)
    if argv is None:
        return None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"{HOOKS_VARIABLE}.{name}", "must be a non-empty JSON list of strings (an argv)")
    return argv


def hook_task(name: str, fields: list[Field], spec: dict[str, Any] | None, doc: str, **task_kwargs: Any) -> Any:
    """Runs an admin-configured command on the worker (e.g. stop or start the applications); skipped if none."""

    def _run(rc: RunContext) -> str:
        argv = admin_hook(name)
        if argv is None:
            return f"no {name} hook configured ({HOOKS_VARIABLE})"
        from pgupgrade.commands import LocalHost

        res = LocalHost(redactor=rc.host.redactor).run(argv, timeout=3600)
        return f"{name}: exit {res.exit_code} in {res.duration_s:.1f}s"

    return step_task(name, _run, fields, spec=spec, doc=doc, **task_kwargs)


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


def plan_phase(
    fields: list[Field],
    spec: dict[str, Any] | None,
    rollback_dag_id: str,
    make_plan: Callable[[RunContext], Any],
    plan_doc: str,
    cross_checks: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[Any, Any]:
    """The first phase every upgrade DAG shares, with no side effects: check_rollback_dag → validate_params →
    acquire_lock → plan (saved as the run's plan.json) → dry_run_gate. Returns (plan, gate)."""
    check_rb = task(task_id="check_rollback_dag", doc_md="Fails unless the rollback DAG exists and is unpaused.")(
        lambda: check_rollback_dag(rollback_dag_id)
    )()
    validate = task(task_id="validate_params", doc_md="Rejects bad conf, naming the field; no side effects.")(
        lambda: validated(fields, cross_checks) and "params valid"
    )()
    lock = step_task(
        "acquire_lock",
        lambda rc: rc.lock.acquire(rc.dag_id, rc.run_id, dagrun_alive),
        fields,
        spec=spec,
        doc="Per-cluster lock: two runs on one cluster never overlap.",
    )

    def _plan(rc: RunContext) -> dict[str, Any]:
        made = make_plan(rc)  # a runbook's typed plan (a dataclass), or plans.AlreadyThere
        rc.state.save("plan", plans.to_json(made) if dataclasses.is_dataclass(made) else made)
        return dict(rc.state.load("plan"))

    plan = step_task("plan", _plan, fields, spec=spec, doc=plan_doc)
    check_rb >> validate >> lock >> plan
    return plan, dry_run_gate(plan)


APP_HEALTH_VARIABLE = "pgupgrade_app_health"


def app_health_config() -> dict[str, Any] | None:
    """The admin-configured application health check (Airflow Variable pgupgrade_app_health, JSON
    ``{"url": "http://...", "timeout_s": 60, "interval_s": 1, "expect_status": 200}``), never from trigger conf.
    None when not configured."""
    cfg = admin_json_variable(APP_HEALTH_VARIABLE)
    if cfg is None:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(APP_HEALTH_VARIABLE, "must be a JSON object with at least a url")
    url = cfg.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{APP_HEALTH_VARIABLE}.url", f"must be an http:// or https:// URL, got {url!r}")
    out: dict[str, Any] = {"url": url}
    for key, default in (("timeout_s", 60.0), ("interval_s", 1.0)):
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{APP_HEALTH_VARIABLE}.{key}", f"must be a positive number, got {value!r}")
        out[key] = float(value)
    status = cfg.get("expect_status", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ConfigError(f"{APP_HEALTH_VARIABLE}.expect_status", f"must be an HTTP status code, got {status!r}")
    out["expect_status"] = status
    unknown = sorted(set(cfg) - {"url", "timeout_s", "interval_s", "expect_status"})
    if unknown:
        raise ConfigError(APP_HEALTH_VARIABLE, f"unknown keys: {', '.join(unknown)}")
    return out


def poll_app_health(url: str, timeout_s: float, interval_s: float, expect_status: int) -> str:
    """GETs url every interval_s until it answers expect_status; raises CheckFailed when it still does not
    after timeout_s (the last status or connection error in the message)."""
    import requests

    from pgupgrade.errors import CheckFailed

    started = time.monotonic()
    deadline = started + timeout_s
    attempts = 0
    last = "no answer"
    while True:
        attempts += 1
        try:
            resp = requests.get(url, timeout=max(1.0, min(10.0, deadline - time.monotonic())), allow_redirects=False)
            if resp.status_code == expect_status:
                took = time.monotonic() - started
                return f"application healthy: {url} answered {resp.status_code} ({attempts} attempt(s), {took:.1f}s)"
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
        log.info("app health: %s answered %s (attempt %d), want %d", url, last, attempts, expect_status)
        if time.monotonic() + interval_s > deadline:
            raise CheckFailed(
                f"application unhealthy: {url} still answered {last} (want {expect_status}) after "
                f"{attempts} attempt(s) in {time.monotonic() - started:.1f}s ({APP_HEALTH_VARIABLE}.timeout_s="
                f"{timeout_s:g})"
            )
        time.sleep(interval_s)


def app_health_task(fields: list[Field], spec: dict[str, Any] | None, doc: str | None = None) -> Any:
    """Task ``app_health``: polls the admin-configured application health URL after the applications were started.
    Not configured: succeeds with a message saying so. Still unhealthy at the timeout: fails, so the run fails
    and its rollback is triggered."""

    def _run(rc: RunContext) -> str:
        cfg = app_health_config()
        if cfg is None:
            msg = f"no application health check configured (Variable {APP_HEALTH_VARIABLE}): skipped"
            log.info(msg)
            return msg
        msg = poll_app_health(cfg["url"], cfg["timeout_s"], cfg["interval_s"], cfg["expect_status"])
        log.info(msg)
        return msg

    return step_task(
        "app_health",
        _run,
        fields,
        spec=spec,
        doc=doc
        or f"Polls the admin-configured application health URL (Variable {APP_HEALTH_VARIABLE}); fails the run "
        "(→ rollback) when it is still unhealthy at its timeout_s; skipped with a message when not configured.",
    )
