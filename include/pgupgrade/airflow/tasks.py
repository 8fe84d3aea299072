"""Task builders: a library step as a task (journaled, timed, fault-injectable), several steps in one task (the
outage-critical section), sensors, the plan phase every upgrade DAG starts with, admin hooks."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pgupgrade import guard, outage, plans
from pgupgrade.airflow.context import admin_json_variable, run_context, validated
from pgupgrade.airflow.failure import check_rollback_dag, dagrun_alive
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PgUpgradeError
from pgupgrade.params import Field
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)


class InjectedFailure(PgUpgradeError):
    """Raised by a step named in PGUPGRADE_INJECT_FAILURE: fault drills and tests on the worker's own config."""


def _injected_failures(run_id: str) -> set[str]:
    """Steps to fail on purpose: PGUPGRADE_INJECT_FAILURE (the worker's environment), and — only on a deployment
    that enables fault drills (PGUPGRADE_FAULT_DRILLS=1: distributed test stacks, staging) — the Airflow Variable
    pgupgrade_inject_failure, a JSON object from run id to the steps to fail in that run."""
    steps = {s.strip() for s in os.environ.get("PGUPGRADE_INJECT_FAILURE", "").split(",") if s.strip()}
    if os.environ.get("PGUPGRADE_FAULT_DRILLS") == "1":
        drills = admin_json_variable("pgupgrade_inject_failure") or {}
        steps |= set(drills.get(run_id, []))
    return steps


def journaled(state: RunJournal, step: str, fn: Callable[[], Any]) -> Any:
    """Runs fn, recording the step's outcome and duration in the run's journal."""
    started = time.monotonic()
    try:
        if step in _injected_failures(state.run_id):
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


# Step tasks are plain PythonOperators (their callables take no arguments): a TaskFlow-decorated task costs about
# three times as much to build, and most of the ~230 operators the DAG files build at every parse are step tasks.
def step_task(
    task_id: str,
    fn: Callable[[RunContext], Any],
    *,
    fields: list[Field],
    spec: dict[str, Any] | None = None,
    doc: str,
    **task_kwargs: Any,
) -> Any:
    """A task that runs one library step with a fresh RunContext; destructive steps are never retried."""

    def _run() -> Any:
        rc = run_context(fields, spec)
        return _jsonable(journaled(rc.state, task_id, lambda: fn(rc)))

    _run.__name__ = task_id
    retries = task_kwargs.pop("retries", 0)
    return PythonOperator(task_id=task_id, python_callable=_run, doc_md=doc, retries=retries, **task_kwargs).output


def steps_task(
    task_id: str,
    steps: list[tuple[str, Callable[[RunContext], Any]]],
    *,
    fields: list[Field],
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
    return PythonOperator(task_id=task_id, python_callable=_run, doc_md=doc, retries=0, **task_kwargs).output


def _one_arg(item: Any) -> list[Any]:
    return [item]


def mapped_step_task(
    task_id: str,
    fn: Callable[[RunContext, str], Any],
    over: Any,
    *,
    fields: list[Field],
    spec: dict[str, Any] | None = None,
    doc: str,
) -> Any:
    """One task instance per item of ``over`` (an upstream task's list: dynamic task mapping), each running
    ``fn(ctx, item)`` journaled as ``<task_id>[<item>]``; an empty list makes no instance (skipped)."""

    def _run(item: str) -> Any:
        rc = run_context(fields, spec)
        return _jsonable(journaled(rc.state, f"{task_id}[{item}]", lambda: fn(rc, item)))

    _run.__name__ = task_id
    operator = PythonOperator.partial(task_id=task_id, python_callable=_run, doc_md=doc, retries=0)
    return operator.expand(op_args=over.map(_one_arg))


def sensor_task(
    task_id: str,
    fn: Callable[[RunContext], bool],
    *,
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


def outage_slot_task(*, fields: list[Field], spec: dict[str, Any]) -> Any:
    """Waits (clients still served) for one of the admin's bounded outage slots, before clients are gated."""
    return sensor_task(
        "wait_outage_slot",
        lambda rc: outage.take_slot(rc, max_concurrent_outages()),
        fields=fields,
        spec=spec,
        timeout_param="outage_slot_wait_s",
        doc="Takes an outage slot (Variable pgupgrade_max_concurrent_outages bounds how many clusters are inside "
        "an outage at once; unset: no bound) before clients are gated; given back when the run opens to clients.",
    )


def max_concurrent_outages() -> int | None:
    value = admin_json_variable("pgupgrade_max_concurrent_outages")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError("Variable pgupgrade_max_concurrent_outages", f"must be a positive integer, got {value!r}")
    return value


# -- shared by the runbook DAGs (added with the minor-upgrade DAGs) -----------------------------------------


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


def hook_task(name: str, *, fields: list[Field], spec: dict[str, Any] | None, doc: str, **task_kwargs: Any) -> Any:
    """Runs an admin-configured command on the worker (e.g. stop or start the applications); skipped if none."""

    def _run(rc: RunContext) -> str:
        argv = admin_hook(name)
        if argv is None:
            return f"no {name} hook configured ({HOOKS_VARIABLE})"
        from pgupgrade.commands import LocalHost

        res = LocalHost(redactor=rc.host.redactor).run(argv, timeout=3600)
        return f"{name}: exit {res.exit_code} in {res.duration_s:.1f}s"

    return step_task(name, _run, fields=fields, spec=spec, doc=doc, **task_kwargs)


def plan_phase(
    *,
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
        lambda rc: guard.take_cluster(rc, dagrun_alive),
        fields=fields,
        spec=spec,
        doc="Proves the connection reaches the primary in pg_datadir on the runner's host, then takes the "
        "per-cluster lock: two runs on one cluster never overlap.",
    )

    def _plan(rc: RunContext) -> dict[str, Any]:
        made = make_plan(rc)  # a runbook's typed plan (a dataclass), or plans.AlreadyThere
        rc.state.save("plan", plans.to_json(made) if dataclasses.is_dataclass(made) else made)
        return dict(rc.state.load("plan"))

    plan = step_task("plan", _plan, fields=fields, spec=spec, doc=plan_doc)
    check_rb >> validate >> lock >> plan
    return plan, dry_run_gate(plan)
