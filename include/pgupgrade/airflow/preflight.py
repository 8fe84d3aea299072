"""Airflow side of the preflight DAG: one RunContext per cluster (built like context.run_context does, with its
own state directory so mapped tasks never share one), the summary and the report."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from pgupgrade import preflight, windows
from pgupgrade.airflow import context as airflow_context
from pgupgrade.airflow import tasks
from pgupgrade.airflow.store import run_store
from pgupgrade.context import RunContext
from pgupgrade.params import Field

log = logging.getLogger(__name__)


def cluster_context(fields: list[Field], conn_id: str) -> RunContext:
    """The RunContext the major upgrade DAG would plan with, for one cluster of this preflight run."""
    ctx = get_current_context()
    p = airflow_context.validated(fields)
    return airflow_context.run_context(
        [],
        params=preflight.major_params(p, conn_id),
        state_of=(ctx["dag"].dag_id, f"{ctx['run_id']}__{conn_id}"),
    )


def check(fields: list[Field], conn_id: str) -> dict[str, Any]:
    """One mapped task: every read-only check for one cluster; findings are results, not task failures."""
    ctx = get_current_context()
    ctx["cluster"] = conn_id  # type: ignore[typeddict-unknown-key]  # for map_index_template
    p = airflow_context.validated(fields)
    window = windows.load(p["window"])
    now = dt.datetime.now(dt.UTC)
    try:
        rc = cluster_context(fields, conn_id)
    except Exception as exc:  # e.g. no such connection: report it
        return {
            "cluster": conn_id,
            "status": "not ready",
            "reasons": [f"connection: {exc}"],
            "warnings": [],
            "checked_at": now.isoformat(timespec="seconds"),
            "target_major": p["target_major"],
        }
    res = tasks.journaled(
        rc.state, "preflight", lambda: preflight.check_cluster(rc, window, now, check_minor=p["check_minor"])
    )
    rc.state.save("preflight", res)
    log.info("%s: %s %s", conn_id, res["status"], "; ".join(res["reasons"]))
    return dict(res)


def summary(fields: list[Field], results: Any) -> dict[str, Any]:
    """Lists ready / not ready with reasons, writes the JSON + Markdown report; fails the run when asked to and
    any cluster would not go ahead."""
    ctx = get_current_context()
    p = airflow_context.validated(fields)
    dag_id, run_id = ctx["dag"].dag_id, ctx["run_id"]
    got = [r for r in (results or []) if r]
    missing = sorted(set(p["clusters"]) - {r["cluster"] for r in got})
    for conn_id in missing:  # a mapped task that crashed
        got.append({"cluster": conn_id, "status": "not ready", "reasons": ["the check task failed"], "warnings": []})
        got[-1]["target_major"] = p["target_major"]
    rep = preflight.summarize(got, dag_id=dag_id, run_id=run_id)
    store = run_store()
    paths = preflight.write_report(store.run(dag_id, run_id), rep, root=store.root)
    log.info("preflight report: %s\n%s", paths["markdown"], preflight.markdown(rep))
    out = {k: rep[k] for k in ("ready", "up_to_date", "not_ready", "busy")}
    out["report"] = paths
    if p["fail_if_not_ready"] and (rep["not_ready"] or rep["busy"]):
        names = ", ".join(x["cluster"] for x in rep["not_ready"] + rep["busy"])
        raise AirflowFailException(f"would not go ahead in the next window: {names} (report: {paths['markdown']})")
    return out
