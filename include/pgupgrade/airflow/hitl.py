"""Decisions a person takes, as Human-in-the-loop tasks of Airflow's standard provider (Airflow UI: *Required
actions*, or ``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails``).

Each task first asks the library (``pgupgrade.decisions``) whether a person is needed: when the conf answered
beforehand (``confirm_delete``, ``ack_*``, ``accept_data_loss``) or nothing needs a decision, it ends at once
without waiting. Otherwise it parks in ``awaiting_input`` (Airflow 3.3: the scheduler resumes it on the answer,
or applies the safe default after ``decision_timeout_s``). The decision — who, what, when — goes to the run's
journal and report.

``airflow dags test`` / ``dag.test()`` runs tasks in-process with no scheduler: nothing would ever end the wait
(no timeout sweep). There nobody is asked (``can_ask`` is False) and the runs behave as before these questions:
refused unless the conf answered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLBranchOperator, HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from pgupgrade import decisions
from pgupgrade.airflow.context import run_context
from pgupgrade.context import RunContext
from pgupgrade.decisions import Decision
from pgupgrade.params import Field

log = logging.getLogger(__name__)

# what a question builder answers: (subject, body) to ask a person, or a Decision taken without asking
Question = tuple[str, str] | Decision


def can_ask() -> bool:
    """False inside ``dag.test()`` (the task runs in the test's process, talking to an in-process supervisor):
    no scheduler there would resume or time out a parked task."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms

    return not isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), InProcessSupervisorComms)


def with_asking(make_plan: Callable[[RunContext], Any]) -> Callable[[RunContext], Any]:
    """A plan function told whether a person can be asked after it (``spec["ask_person"]``): it then records
    unacknowledged blockers instead of refusing them."""
    return lambda rc: make_plan(dataclasses.replace(rc, spec={**rc.spec, "ask_person": can_ask()}))


def _ask(op: HITLOperator, rc: RunContext, subject: str, body: str, context: Any) -> Any:
    op.subject, op.body = subject, body
    op.response_timeout = dt.timedelta(seconds=int(rc.params[decisions.DECISION_TIMEOUT.name]))
    log.info("asking a person (timeout %s): %s", op.response_timeout, subject)
    return HITLOperator.execute(op, context)


def _answered(op: HITLOperator, context: Any, event: dict[str, Any]) -> Decision:
    payload = HITLOperator.execute_complete(op, context=context, event=event)
    return decisions.from_response(op.subject, {**payload, "timedout": event.get("timedout")})


class DecisionApproval(ApprovalOperator):
    """Approve / Reject, asked only when ``question`` does not answer by itself. Approve: downstream runs.
    Reject (or the timeout's default, Reject): with ``reject_error`` the task fails with it (the run ends before
    any change), else the direct downstream tasks are skipped."""

    def __init__(
        self,
        *,
        fields: list[Field],
        question: Callable[[RunContext, bool], Question],
        spec: dict[str, Any] | None = None,
        reject_error: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(subject="(set when asked)", defaults=decisions.REJECT, **kwargs)
        self.fields, self.question, self.spec, self.reject_error = fields, question, spec, reject_error

    def _rc(self) -> RunContext:
        return run_context(self.fields, self.spec)

    def execute(self, context: Any) -> Any:
        rc = self._rc()
        q = self.question(rc, can_ask())
        if isinstance(q, Decision):
            return self._decided(rc, context, q)
        return _ask(self, rc, *q, context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        return self._decided(self._rc(), context, _answered(self, context, event))

    def _decided(self, rc: RunContext, context: Any, d: Decision) -> dict[str, Any]:
        log.info("decision: %s", d.line())
        if d.chosen == decisions.APPROVE:
            decisions.record(rc.state, self.task_id, d)
            return d.as_dict()
        if self.reject_error:
            error = f"{self.reject_error}: {d.line()}"
            decisions.record(rc.state, self.task_id, d, error=error)
            raise AirflowFailException(error)
        decisions.record(rc.state, self.task_id, d)
        skip = [t for t in context["task"].get_direct_relatives(upstream=False) if not t.is_teardown]
        if skip:
            self.skip(ti=context["ti"], tasks=skip)
        return d.as_dict()


class DataLossDecision(HITLBranchOperator):
    """The rollback's question when clients wrote to the opened new cluster (``decision["needs_consent"]``):
    discard their writes and take the rollback's path, or keep the new version serving (``keep_task``; also the
    timeout's default)."""

    def __init__(
        self, *, fields: list[Field], path_task: Callable[[dict[str, Any]], str], keep_task: str, **kwargs: Any
    ) -> None:
        super().__init__(
            subject="(set when asked)",
            options=[decisions.DISCARD, decisions.KEEP],
            defaults=decisions.KEEP,
            **kwargs,
        )
        self.fields, self.path_task, self.keep_task = fields, path_task, keep_task

    def execute(self, context: Any) -> Any:
        rc = run_context(self.fields)
        decision = rc.state.load("decision") or {}
        consent = decision.get("needs_consent")
        if consent:
            return _ask(self, rc, *decisions.data_loss_question(consent), context)
        if decision.get("accepted_data_loss"):  # accept_data_loss answered beforehand
            d = decisions.beforehand("Roll back and lose the writes made after opening?", decisions.DISCARD,
                                     decisions.CONF)  # fmt: skip
            decisions.record(rc.state, self.task_id, d)
        return self.do_branch(context, self.path_task(decision))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        rc = run_context(self.fields)
        d = _answered(self, context, event)
        log.info("decision: %s", d.line())
        decisions.record(rc.state, self.task_id, d)
        decision = dict(rc.state.load("decision"))
        branch = self.keep_task
        if d.chosen == decisions.DISCARD:
            consent = decision.pop("needs_consent")
            decision["accepted_data_loss"] = {
                "wal_bytes": consent["wal"]["bytes"] if consent.get("wal") else None,
                "wal": consent.get("wal"),
                "changes": consent.get("changes"),
                "what": consent["what"],
                "by": d.by,
                "at": d.at,
            }
            rc.state.save("decision", decision)
            branch = self.path_task(decision)
        return self.do_branch(context, branch)
