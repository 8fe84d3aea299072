"""Alert messages: what a DBA needs at a glance — cluster, DAG, step, error, run link, report summary and the
failing log excerpt. Built from the run's state; no secrets (the runner already redacted command output)."""

from __future__ import annotations

from typing import Any

from pgupgrade.state import RunJournal

EVENTS = (
    "outage_start",
    "success",
    "failure",
    "rollback",
    "deadline_missed",
    "rollback_trigger_failed",
    "archiving_failed",
    "failed_after_open",
)
TITLES = {
    "outage_start": "outage starts",
    "success": "succeeded",
    "failure": "FAILED",
    "rollback": "rolled back",
    "deadline_missed": "overran the maintenance window",
    "rollback_trigger_failed": "the automatic ROLLBACK DID NOT START: start it by hand",
    "archiving_failed": "is open but ARCHIVING/BACKUP of the new cluster needs attention (no rollback)",
    "failed_after_open": "FAILED AFTER OPENING: the new version keeps serving, no rollback started",
}


def message(
    event: str,
    state: RunJournal,
    *,
    cluster: str | None,
    run_link: str | None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The alert; ``detail`` carries what one event adds (the window of a missed deadline, how to start a
    rollback by hand)."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENTS)}")
    events = state.events()
    failed = [e for e in events if e["event"] == "step" and e["status"] == "failed"]
    plan = state.load("plan") or {}
    opened, blocked = state.first("opened"), state.first("logins_blocked")
    summary = {
        "from": (plan.get("old") or {}).get("version"),
        "to": (plan.get("new") or {}).get("version"),
        "method": plan.get("method"),
        "estimated_outage_s": plan.get("outage_estimate_s"),
        "outage_started": blocked["at"] if blocked else None,
        "opened": opened["at"] if opened else None,
    }
    msg = {
        "event": event,
        "dag_id": state.dag_id,
        "run_id": state.run_id,
        "cluster": cluster,
        "run_link": run_link,
        "summary": summary,
        "failed_step": failed[-1]["step"] if failed else None,
        "error": (failed[-1].get("error") or "")[-2000:] if failed else None,
        "report": state.load("report"),
        "detail": detail or {},
    }
    msg["subject"] = f"[pgupgrade] {state.dag_id} on {cluster or '?'} {TITLES[event]}"
    return msg


def as_text(msg: dict[str, Any]) -> str:
    lines = [msg["subject"], "", f"run: {msg['run_id']}", f"link: {msg['run_link'] or '-'}"]
    lines += [f"{k}: {v}" for k, v in msg["summary"].items() if v is not None]
    if msg["failed_step"]:
        lines += ["", f"failed step: {msg['failed_step']}", "", str(msg["error"])]
    if msg.get("detail"):
        lines += [""] + [f"{k}: {v}" for k, v in msg["detail"].items()]
    return "\n".join(lines)
