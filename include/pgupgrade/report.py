"""JSON + Markdown run reports, built from the run's journal and state files."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from pgupgrade.state import RunJournal, safe_name, write_json


def reports_dir(root: Path) -> Path:
    """``PGUPGRADE_REPORTS_DIR``, else ``reports/`` under the run store's root."""
    return Path(os.environ.get("PGUPGRADE_REPORTS_DIR", root / "reports"))


def _at(event: dict[str, Any] | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(event["at"]) if event else None


def build(state: RunJournal, *, status: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    events = state.events()
    steps = [
        {
            "step": e["step"],
            "status": e["status"],
            "seconds": e.get("seconds"),
            "at": e["at"],
            **({"error": e["error"]} if e.get("error") else {}),
        }
        for e in events
        if e["event"] == "step"
    ]
    start = _at(state.first("logins_blocked"))
    end = _at(state.first("opened"))
    outage = None
    if start:
        outage = {
            "from": start.isoformat(),
            "to": end.isoformat() if end else None,
            "seconds": round((end - start).total_seconds(), 3) if end else None,
        }
        cut = _at(state.first("cutover_started"))
        if cut and end:
            outage["clients_cut_off_seconds"] = round((end - cut).total_seconds(), 3)
    down = _at(state.first("old_stopped"))
    up = _at(state.first("new_public_start")) or _at(state.first("opened"))
    plan = state.load("plan")
    rep = {
        "dag_id": state.dag_id,
        "run_id": state.run_id,
        "status": status,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": plan,
        "steps": steps,
        "outage": outage,
        "server_down_seconds": round((up - down).total_seconds(), 3) if down and up else None,
        "backup_dir": (state.load("backup") or {}).get("backup_dir"),
        "archiving": state.load("archiving"),  # pgupgrade.archiving.after_open: tool, backup, PITR
        "journal": [e for e in events if e["event"] != "step"],
        # decisions a person took (or the conf / a timeout took for them): pgupgrade.decisions
        "decisions": [
            {"step": e["step"], **e["decision"]} for e in events if e["event"] == "step" and e.get("decision")
        ],
        **(extra or {}),
    }
    return rep


def write(state: RunJournal, rep: dict[str, Any], *, root: Path) -> tuple[Path, Path]:
    """The report as JSON and Markdown under ``reports_dir(root)``, and its text in the run store."""
    base = reports_dir(root) / safe_name(state.dag_id) / safe_name(state.run_id)
    json_path = base.with_suffix(".json")
    write_json(json_path, rep)
    md_path = base.with_suffix(".md")
    text = markdown(rep)
    md_path.write_text(text)
    # the text too: under a distributed executor the files stay on one worker, the run store is everyone's
    state.save("report", {"json": str(json_path), "markdown": str(md_path), "text": text})
    return json_path, md_path


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"# {rep['dag_id']} — {rep['status']}",
        "",
        f"Run `{rep['run_id']}`, report generated {rep['generated']}.",
        "",
    ]
    plan = rep.get("plan") or {}
    if plan.get("old"):
        lines += [
            f"- From PostgreSQL {plan['old']['version']} ({plan['old']['datadir']}) to {plan['new']['version']} "
            f"({plan['new']['datadir']})",
            f"- Method: **{plan['method']}** {plan.get('transfer_mode') or ''} — {plan.get('method_reason', '')}",
            f"- Estimated outage: {plan.get('outage_estimate_s', 0):.1f} s",
        ]
    if rep.get("outage"):
        o = rep["outage"]
        if o["seconds"] is None:
            lines.append(f"- Outage began {o['from']} and had not ended when the report was written")
        else:
            lines.append(f"- Measured outage (logins blocked → clients let in): {o['seconds']} s")
            if o.get("clients_cut_off_seconds") is not None:
                cut_s = o["clients_cut_off_seconds"]
                lines.append(f"- Connected clients cut off (cutover start → clients let in): {cut_s} s")
    if rep.get("server_down_seconds") is not None:
        lines.append(f"- Server down (old stopped → new started for clients): {rep['server_down_seconds']} s")
    if rep.get("backup_dir"):
        lines.append(f"- Backup: `{rep['backup_dir']}`")
    for w in plan.get("warnings", []):
        lines.append(f"- Warning: {w}")
    if (plan.get("config") or {}).get("files"):
        lines.append("- Configuration carried over: " + ", ".join(f"`{f}`" for f in plan["config"]["files"]))
    if rep.get("archiving"):
        a = rep["archiving"]
        attention = " — NEEDS ATTENTION" if a.get("needs_attention") else ""
        lines.append(f"- Archiving ({a['tool']}){attention}: {a.get('summary')}")
    lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    for s in rep["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} |")
    if rep.get("decisions"):
        lines += ["", "## Decisions", ""]
        for d in rep["decisions"]:
            who = f"by **{d['by']}**" if d.get("source") == "person" else f"({d.get('source')})"
            lines.append(f"- `{d['step']}`: {d['question']} → **{d['chosen']}** {who} at {d.get('at')}")
    for key in ("rollback_path", "rollback_reason", "next_steps"):
        if rep.get(key):
            lines += ["", f"**{key.replace('_', ' ')}**: {rep[key]}"]
    if rep.get("accepted_data_loss"):
        lines += ["", f"**accepted data loss**: {json.dumps(rep['accepted_data_loss'], default=str)[:2000]}"]
    if rep.get("failure"):
        lines += ["", "## Failure", "", "```", json.dumps(rep["failure"], indent=2, default=str)[:8000], "```"]
    return "\n".join(lines) + "\n"
