"""Decisions a person takes during a run: the question, whether it must be asked at all (the conf may answer it
beforehand, for automation), the safe answer taken when nobody answers in time, and the journal record of who
decided what. Asked in Airflow's UI by ``pgupgrade.airflow.hitl``; nothing here imports Airflow.

A decision is journaled as the ``step`` event of the task that took it, with a ``decision`` entry: the report
lists them, and it is not a side effect (``RunJournal.side_effects``): asking changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pgupgrade.errors import UnsafeState
from pgupgrade.params import Field
from pgupgrade.state import RunJournal

DECISION_TIMEOUT = Field(
    name="decision_timeout_s",
    type="integer",
    default=3600,
    title="Decision timeout (s)",
    description="How long a question to a person (Airflow UI: Required actions) waits for an answer; then the "
    "safe choice is taken (nothing deleted, nothing lost, no outage started).",
    section="Safety",
    minimum=10,
    maximum=7 * 24 * 3600,
)

# the answers, as the UI shows them
APPROVE, REJECT = "Approve", "Reject"  # ApprovalOperator's fixed options
DISCARD = "Discard the writes and roll back"
KEEP = "Keep the new version serving (abort the rollback)"

# who answered
PERSON, TIMEOUT, CONF, NOT_NEEDED, NOBODY_TO_ASK = "person", "timeout", "conf", "not needed", "nobody to ask"


@dataclass(frozen=True)
class Decision:
    """One decision: the question, the option taken, by whom (a user name; None unless a person answered) and
    how it was taken (``PERSON``, ``TIMEOUT``: the safe default, ``CONF``: answered beforehand by the conf)."""

    question: str
    chosen: str
    source: str
    by: str | None = None
    by_id: str | None = None
    at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        who = {PERSON: f"by {self.by}", TIMEOUT: "by nobody: no answer in time, the safe default"}.get(
            self.source, f"({self.source})"
        )
        return f"{self.question} → **{self.chosen}** {who} at {self.at}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def from_response(question: str, response: Mapping[str, Any]) -> Decision:
    """The decision from a Human-in-the-loop response (``chosen_options``, ``responded_by_user`` — None when the
    timeout applied the defaults —, ``responded_at``, ``timedout``)."""
    chosen = list(response.get("chosen_options") or [])
    if len(chosen) != 1:
        raise ValueError(f"expected one chosen option, got {chosen!r}")
    user: Mapping[str, Any] = response.get("responded_by_user") or {}
    timed_out = bool(response.get("timedout")) or not user
    at = response.get("responded_at")
    return Decision(
        question=question,
        chosen=chosen[0],
        source=TIMEOUT if timed_out else PERSON,
        by=None if timed_out else str(user.get("name") or user.get("id")),
        by_id=None if timed_out else str(user.get("id")),
        at=at.isoformat(timespec="seconds") if isinstance(at, dt.datetime) else str(at or _now()),
    )


def beforehand(question: str, chosen: str, source: str) -> Decision:
    """A decision nobody was asked for: answered by the conf, not needed, or nobody could be asked."""
    return Decision(question=question, chosen=chosen, source=source, at=_now())


def record(state: RunJournal, step: str, decision: Decision, *, error: str | None = None) -> None:
    """The decision in the run's journal, as its task's step event."""
    extra = {"error": error[:4000]} if error else {}
    state.record("step", step=step, status="failed" if error else "success", seconds=0, decision=decision.as_dict(),
                 **extra)  # fmt: skip


def taken(state: RunJournal, step: str | None = None) -> list[dict[str, Any]]:
    """The decisions journaled in this run (of one step, when given), oldest first."""
    return [
        e["decision"]
        for e in state.events()
        if e["event"] == "step" and e.get("decision") and (step is None or e["step"] == step)
    ]


# -- the three questions ------------------------------------------------------------------------------------


def pending_blockers(plan: Mapping[str, Any] | None, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plan's acknowledgeable blockers that the conf did not acknowledge (``ack_*`` params)."""
    if not plan or plan.get("already_upgraded"):
        return []
    return [b for b in plan.get("blockers_acknowledged") or [] if b.get("ack_param") and not params.get(b["ack_param"])]


def blockers_decision(plan: Mapping[str, Any] | None, params: Mapping[str, Any]) -> tuple[str, str] | Decision:
    """The question to ask after the plan, or the decision taken without asking: no acknowledgeable blocker, or
    every one acknowledged by its ``ack_*`` param."""
    pending = pending_blockers(plan, params)
    if pending:
        return blockers_question(pending)
    found = bool(plan and plan.get("blockers_acknowledged"))
    return beforehand("Go ahead despite the plan's findings?", APPROVE, CONF if found else NOT_NEEDED)


def blockers_question(pending: list[dict[str, Any]]) -> tuple[str, str]:
    """(subject, body) of the question asked before anything is changed."""
    lines = "\n".join(f"- {b['detail']} (`{b['ack_param']}`)" for b in pending)
    return (
        "Go ahead with the upgrade despite these findings?",
        "The plan found what the upgrade cannot carry over:\n\n"
        f"{lines}\n\nApprove to go ahead (as if the `ack_*` params were set). Reject, or no answer in time: the "
        "run ends here, before any change to the cluster.",
    )


def delete_question(old_datadir: str, age_hours: float) -> tuple[str, str]:
    return (
        f"Delete the old cluster {old_datadir}?",
        f"The new cluster has served for {age_hours:.1f} h. Approve: `delete_old_cluster.sh`, then the old data "
        "directory is removed — afterwards the only way back is the backup. Reject, or no answer in time: "
        "nothing is deleted.",
    )


def data_loss_question(consent: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, body) of the rollback's question when clients wrote to the opened new cluster."""
    return (
        "Clients wrote to the new cluster after it opened: roll back and lose their writes?",
        f"{consent['what']}.\n\nThe rollback would take the path `{consent['path']}` ({consent['why']}).\n\n"
        f"- **{DISCARD}**: the old version serves again; what clients wrote since the new cluster opened is lost "
        "(and what they write while this waits).\n"
        f"- **{KEEP}**: nothing is lost, the new version serves on, the rollback run ends failed (nothing "
        "changed).\n\nNo answer in time: keep.",
    )


def opened_changes_to_weigh(decision: Mapping[str, Any]) -> list[str] | None:
    """The rollback's restore weighs what clients wrote to the opened new cluster unless that loss was accepted
    (a person, or ``accept_data_loss``): then it is no longer a risk (other risks, such as a logical backup older
    than the stop, still need ``accept_data_loss``)."""
    return [] if decision.get("accepted_data_loss") else decision.get("opened_changes")


def keep_new_serving(state: RunJournal) -> None:
    """The rollback's end when the writes after opening are kept: the run fails, having changed nothing."""
    d = (taken(state) or [{}])[-1]  # the rollback run takes one decision: choose_path
    who = f"{d.get('by')} chose to keep it" if d.get("source") == PERSON else "nobody answered in time (safe default)"
    raise UnsafeState(
        f"rollback not done: clients wrote to the new cluster after it opened and {who}; the new version serves "
        "on, nothing was lost or changed (trigger the rollback again, or with accept_data_loss=true, to go back)"
    )
