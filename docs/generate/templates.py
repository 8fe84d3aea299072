"""The prose pages (index, testing, troubleshooting): templates in docs/templates/ whose ``{{…}}`` placeholders are
resolved against the DAGs, the library and the facts, so that a renamed task or param fails the generator."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from types import SimpleNamespace
from typing import Any

from .dags import Dags, params_table, rollback_of, task_doc
from .estimates import major_drivers_md, major_examples_md
from .facts import Facts
from .markup import code, fmt_duration, rel_link, table
from .pages import GUIDES, HEADER, PAGES, ROOT, TEMPLATES, Page, Unavailable
from .settings import removed_settings_md

PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)(?::([^}]*?))?\s*\}\}")


def _task(dags: Dags, ref: str) -> Any:
    dag_id, task_id = ref.split(":", 1)
    dag = dags.get(dag_id)
    for t in dag.tasks:
        if t.task_id == task_id or t.task_id.endswith("." + task_id):
            return t
    from . import library

    major, minor, method = library.major_cutover, library.minor_cutover, library.Method
    cutovers = {  # task of one process → (library module, its steps): a step of it is named like a task
        "upgrade.pg_upgrade": (
            major,
            major.cutover_steps(method.PG_UPGRADE) + major.cutover_steps(method.DUMP_RESTORE),
        ),
        "cutover": (minor, minor.cutover_steps()),
    }
    for cutover_task, (module, steps) in cutovers.items():
        if task_id in dict(steps) and any(t.task_id == cutover_task for t in dag.tasks):
            doc = inspect.getdoc(getattr(module, task_id, None)) or f"`{task_id}` step of the cutover task."
            return SimpleNamespace(task_id=task_id, doc_md=doc.split("\n\n")[0].replace("\n", " "))
    raise ValueError(f"template names task {task_id!r}, which {dag_id} does not have")


def _param(dags: Dags, ref: str) -> Any:
    dag_id, name = ref.split(":", 1)
    dag = dags.get(dag_id)
    if name not in dag.params:
        raise ValueError(f"template names param {name!r}, which {dag_id} does not have")
    return dag.params.get_param(name)


def _docstring(ref: str) -> str:
    module, _, attr = ref.rpartition(".")
    return inspect.getdoc(getattr(importlib.import_module(module), attr)) or ""


def pages_table(dags: Dags, page_from: str) -> str:
    rows = []
    for p in PAGES:
        if p.path == "README.md":
            continue
        link = f"[{p.title}]({rel_link(page_from, p.path)})"
        if p.dag:
            dag = dags.dags.get(p.dag)
            rb = rollback_of(dag) if dag is not None else None
            source = f"DAG {code(p.dag)}" + (f", rollback {code(rb)}" if rb else "")
            if dag is None:
                source += " (not defined yet)"
        elif p.kind in ("api", "breaking", "sql"):
            source = "catalogs of a scratch PostgreSQL with every pg_tviews version"
        else:
            source = "prose, references checked against the DAGs"
        rows.append([link, source])
    return table(["Guide", "Generated from"], rows)


def render_template(page: Page, dags: Dags, facts: Facts) -> str:
    path = TEMPLATES / page.path
    if not path.is_file():
        raise Unavailable(f"template {os.path.relpath(path, ROOT)} is missing")
    text = re.sub(r"\A<!--.*?-->\s*", "", path.read_text(), flags=re.S)

    def sub(m: re.Match[str]) -> str:
        kind, arg = m.group(1), (m.group(2) or "").strip()
        if kind == "task":
            return code(_task(dags, arg).task_id.split(".")[-1])
        if kind == "task_doc":
            return task_doc(_task(dags, arg))
        if kind == "param":
            _param(dags, arg)
            return code(arg.split(":", 1)[1])
        if kind == "param_default":
            return code(_param(dags, arg).value)
        if kind == "param_desc":
            return str(_param(dags, arg).description)
        if kind == "params_table":
            dag_id, names = arg.split(":", 1)
            wanted = [n.strip() for n in names.split(",")]
            for n in wanted:
                _param(dags, f"{dag_id}:{n}")
            return params_table(dags.get(dag_id), wanted)
        if kind == "dag":
            return code(dags.get(arg).dag_id)
        if kind == "docstring":
            return _docstring(arg)
        if kind == "method_drivers":
            return major_drivers_md()
        if kind == "estimate_examples":
            return major_examples_md()
        if kind == "minor_estimates":
            from . import library

            return ", ".join(f"`{k}` {fmt_duration(v)}" for k, v in library.minor_plan.OUTAGE_ESTIMATE_S.items())
        if kind == "removed_settings":
            return removed_settings_md(facts)
        if kind == "drop_cascade":
            return drop_cascade_md(facts)
        if kind == "pages_table":
            return pages_table(dags, page.path)
        if kind == "guides":
            return ", ".join(code(p) for p in GUIDES)
        raise ValueError(f"{path.name}: unknown placeholder {m.group(0)}")

    body = PLACEHOLDER.sub(sub, text)
    source = f"source: the template {os.path.relpath(path, ROOT)}, references resolved against dags/"
    return HEADER.format(source=source) + "\n\n" + body.strip() + "\n"


def drop_cascade_md(facts: Facts) -> str:
    facts.need()
    d = facts.drop_cascade
    if not d:
        raise Unavailable("the DROP EXTENSION probe did not run")
    gone = [code(n) for n, present in d["relations"].items() if not present]
    kept = [code(n) for n, present in d["relations"].items() if present]
    return "\n".join(
        [
            "```text",
            *d["notices"],
            "```",
            "",
            f"- Change triggers `pg_tviews_*`: {d['triggers_before']} before, {d['triggers_after']} after.",
            f"- Gone: {', '.join(gone) or 'nothing'}; still there: {', '.join(kept) or 'nothing'} — the TVIEW "
            "table stays as a plain table that nothing maintains, and its registration (the metadata row) is lost.",
            "- `CREATE EXTENSION` afterwards starts with an empty metadata table: every TVIEW would have to be "
            "created again.",
        ]
    )
