"""The DAGs as the scheduler parses them, and what every guide shows of a DAG: its tasks in order, its parameters,
a trigger's --conf."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import tempfile
from typing import Any

from .markup import code, table
from .pages import ROOT, Unavailable

DAGS_DIR = ROOT / "dags"


@dataclasses.dataclass
class Dags:
    dags: dict[str, Any]
    import_errors: dict[str, str]

    def get(self, dag_id: str) -> Any:
        if dag_id in self.dags:
            return self.dags[dag_id]
        why = f"DAG {dag_id} is not defined in dags/"
        if self.import_errors:
            files = ", ".join(sorted(os.path.relpath(f, ROOT) for f in self.import_errors))
            why += f" (import errors in {files})"
        raise Unavailable(why)


def load_dags() -> Dags:
    """Parses dags/ the way the scheduler does; Airflow's home is a throwaway directory (no metadata DB)."""
    home = tempfile.mkdtemp(prefix="pgupgrade-docs-airflow-")
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        }
    )
    try:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(DAGS_DIR))
        return Dags(dict(bag.dags), {k: str(v) for k, v in bag.import_errors.items()})
    finally:
        shutil.rmtree(home, ignore_errors=True)


def dag_file(dag: Any) -> str:
    return os.path.relpath(dag.fileloc, ROOT)


def rollback_of(dag: Any) -> str | None:
    """The DAG the upgrade DAG's trigger_rollback task starts."""
    ids = [t.trigger_dag_id for t in dag.tasks if getattr(t, "trigger_dag_id", None)]
    return ids[0] if ids else None


def param_items(dag: Any) -> list[tuple[str, Any]]:
    return [(name, dag.params.get_param(name)) for name in dag.params]


def seconds(value: Any) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def task_kind(t: Any) -> str:
    name = type(t).__name__
    if getattr(t, "trigger_dag_id", None):
        return "trigger DAG run"
    if "Sensor" in name:
        return f"sensor (poke every {seconds(t.poke_interval):g} s)"
    if "Branch" in name:
        return "branch"
    if "ShortCircuit" in name:
        return "short-circuit"
    return "task"


RULES = {
    "all_success": "upstream succeeded",
    "none_failed_min_one_success": "no upstream failed, one succeeded (joins the branch)",
    "one_failed": "any upstream task failed",
    "all_done": "every upstream task finished, whatever the outcome",
    "none_failed": "no upstream failed",
}


def task_doc(t: Any) -> str:
    if t.doc_md:
        return str(t.doc_md)
    if getattr(t, "trigger_dag_id", None):
        conf = json.dumps(t.conf, sort_keys=False) if getattr(t, "conf", None) else "{}"
        waits = "waits for it to finish" if getattr(t, "wait_for_completion", False) else "does not wait for it"
        return f"Starts `{t.trigger_dag_id}` with run id `{t.trigger_run_id}` and conf `{conf}`; {waits}."
    return "—"


def tasks_section(dag: Any) -> str:
    """Tasks in topological order; consecutive tasks of one TaskGroup form one table."""
    blocks: list[tuple[str | None, list[Any]]] = []
    for t in dag.topological_sort():
        group = t.task_group.group_id if t.task_group is not None else None
        if not blocks or blocks[-1][0] != group:
            blocks.append((group, []))
        blocks[-1][1].append(t)
    out, n = [], 0
    for group, tasks in blocks:
        out.append(f"**{group}** (task group)" if group else "**top level**")
        out.append("")
        rows = []
        for t in tasks:
            n += 1
            short = t.task_id[len(group) + 1 :] if group else t.task_id
            rule = str(getattr(t.trigger_rule, "value", t.trigger_rule))
            rows.append([str(n), code(short), task_kind(t), RULES.get(rule, rule), task_doc(t)])
        out.append(table(["#", "Task", "Kind", "Runs when", "What it does"], rows))
        out.append("")
    retries = {int(t.retries or 0) for t in dag.tasks}
    if retries == {0}:
        out.append("No task is retried (`retries=0` everywhere): a destructive step never runs twice by itself.")
    else:
        out.append(f"Retries configured: {sorted(retries)}.")
    return "\n".join(out).strip()


def params_table(dag: Any, only: list[str] | None = None) -> str:
    rows = []
    for name, p in param_items(dag):
        if only is not None and name not in only:
            continue
        s = p.schema
        allowed = ""
        if s.get("enum"):
            allowed = ", ".join(code(v) for v in s["enum"])
        elif "minimum" in s or "maximum" in s:
            allowed = f"{s.get('minimum', '')} … {s.get('maximum', '')}".strip()
        label = f"{code(name)} ({s['title']})" if s.get("title") else code(name)
        rows.append([label, s.get("type", ""), code(p.value), allowed, s.get("section", ""), p.description or ""])
    return table(["Parameter (form label)", "Type", "Default", "Allowed", "Section", "Description"], rows)


def defaults_conf(dag: Any) -> dict[str, Any]:
    return {name: p.value for name, p in param_items(dag)}


def conf_json(conf: dict[str, Any]) -> str:
    text = json.dumps(conf, indent=2, ensure_ascii=False)
    if "'" in text:
        raise ValueError("a default contains a single quote: cannot show it inside --conf '...'")
    return text


def sections_of(dag: Any) -> list[str]:
    seen: list[str] = []
    for _, p in param_items(dag):
        sec = p.schema.get("section")
        if sec and sec not in seen:
            seen.append(sec)
    return seen


def upgrade_majors(dag: Any) -> tuple[int, int] | None:
    """(old, new) major of a DAG named pg<old>_to_pg<new>_upgrade; None for the others."""
    m = re.fullmatch(r"pg(\d+)_to_pg(\d+)_upgrade", dag.dag_id)
    return (int(m.group(1)), int(m.group(2))) if m else None
