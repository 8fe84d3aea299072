"""A guide page generated from a DAG: its runbook's sections, the tasks in order, the parameters, the estimate, the
rollback DAG, how to trigger it, the DAGs to run afterwards."""

from __future__ import annotations

import json
from typing import Any

from .dags import (
    Dags,
    conf_json,
    dag_file,
    defaults_conf,
    params_table,
    rollback_of,
    sections_of,
    tasks_section,
)
from .estimates import ESTIMATES, major_drivers_md, target_major_of
from .facts import Facts
from .markup import Doc, code, rel_link, shift_headings, table
from .pages import HEADER, PAGE_BY_PATH, Page, Unavailable
from .settings import settings_section


def trigger_section(dag: Any, runbook_example: str | None) -> str:
    rb = rollback_of(dag)
    paused = getattr(dag, "is_paused_upon_creation", None)
    out = []
    if paused:
        out.append(
            f"`{dag.dag_id}` is paused when it first appears: unpause it in the UI or with "
            f"`airflow dags unpause {dag.dag_id}`."
        )
    if rb:
        out.append(
            f"The rollback DAG `{rb}` must exist and be unpaused (it is created unpaused); the first task, "
            "`check_rollback_dag`, refuses to start otherwise."
        )
    sections = ", ".join(sections_of(dag))
    dry_run = "dry_run" in dag.params  # DAGs that change nothing (the preflight) have no dry run
    out += [
        "",
        f"**UI**: *DAGs* → `{dag.dag_id}` → *Trigger*. The form shows the parameters above, grouped by section "
        f"({sections}), each with its default."
        + (
            " Run once with `dry_run` on: the run stops after the plan (`dry_run_gate`, green, nothing changed) "
            "and prints it."
            if dry_run
            else ""
        ),
        "",
    ]
    if dry_run:
        first = {name: dag.params.get_param(name).value for name in ("postgres_conn_id",) if name in dag.params}
        out += [
            "**CLI**, a dry run first:",
            "",
            "```sh",
            f"airflow dags trigger {dag.dag_id} --conf '" + json.dumps({**first, "dry_run": True}) + "'",
            "```",
            "",
        ]
    out += [
        "Every parameter with its default (give only the ones you change; unknown keys are refused):",
        "",
        "```sh",
        f"airflow dags trigger {dag.dag_id} --conf '{conf_json(defaults_conf(dag))}'",
        "```",
    ]
    if runbook_example:
        out += ["", "Example from the runbook:", "", runbook_example]
    return "\n".join(out)


def rollback_section(dag: Any, dags: Dags, doc_rollback: str | None) -> str:
    out = [doc_rollback or "", ""]
    rb_id = rollback_of(dag)
    if not rb_id:
        return "\n".join(out).strip()
    rb = dags.get(rb_id)
    rdoc = Doc.parse(rb.doc_md)
    trigger = rdoc.pop("trigger by hand", "trigger")
    out += [f"### The rollback DAG `{rb_id}`", "", f"Defined in `{dag_file(rb)}`. {rb.description or ''}".strip(), ""]
    if rdoc.intro:
        out += [rdoc.intro, ""]
    for name, body in rdoc.sections.items():
        out += [f"#### {name}", "", shift_headings(body, 2), ""]
    out += ["#### Rollback tasks", "", shift_headings(tasks_section(rb), 2), ""]
    out += ["#### Rollback parameters", "", params_table(rb), ""]
    conf = defaults_conf(rb)
    if "upgrade_dag_id" in conf:
        conf["upgrade_dag_id"] = dag.dag_id
    if "upgrade_run_id" in conf:
        conf["upgrade_run_id"] = "<run id of the upgrade>"
    out += [
        "#### Triggering the rollback by hand",
        "",
        f"Automatic runs get the run id `rollback__<upgrade run id>`. By hand (UI: *DAGs* → `{rb_id}` → "
        "*Trigger*, or):",
        "",
        "```sh",
        f"airflow dags trigger {rb_id} --conf '{conf_json(conf)}'",
        "```",
    ]
    if trigger:
        out += ["", "From the rollback's runbook:", "", trigger]
    return "\n".join(out).strip()


def after_section(page: Page, dags: Dags) -> str:
    out = []
    for dag_id in page.after:
        d = dags.get(dag_id)
        doc = Doc.parse(d.doc_md)
        out += [f"### `{dag_id}`: {doc.title or d.description}", "", f"Defined in `{dag_file(d)}`.", ""]
        # the intro is left out on purpose: the sections say what the DAG does
        for name, body in doc.sections.items():
            if name.lower() in ("trigger", "trigger by hand"):
                continue
            out += [f"#### {name}", "", shift_headings(body, 2), ""]
        out += ["#### Tasks", "", shift_headings(tasks_section(d), 2), ""]  # every task id of every DAG on a page
        out += ["#### Parameters", "", params_table(d), ""]
        out += ["#### Trigger", "", "```sh", f"airflow dags trigger {dag_id} --conf '{conf_json(defaults_conf(d))}'"]
        out += ["```", ""]
    return "\n".join(out).strip()


def dag_facts_table(dag: Any) -> str:
    """The table under the title: the DAG, its file, its rollback DAG and how it runs."""
    rb = rollback_of(dag)
    rows = [
        ["DAG", f"{code(dag.dag_id)} — {dag.description or ''}"],
        ["Defined in", code(dag_file(dag))],
        ["Rollback DAG", f"{code(rb)} (see [Rollback](#rollback))" if rb else "none"],
        ["Tags", ", ".join(sorted(dag.tags))],
        ["Paused on creation", "yes" if dag.is_paused_upon_creation else "no"],
        ["Max active runs", str(dag.max_active_runs)],
    ]
    return table(["What", "Value"], rows)


def method_section(page: Page, dag: Any) -> str:
    """A major upgrade's choice between pg_upgrade and dump/restore, with what drives the outage of each."""
    return "\n".join(
        [
            "`method=auto` (default) lets the plan choose: pg_upgrade when its `--check` passes against a "
            "throwaway cluster initialised like the old one and the space suffices; dump/restore only for "
            "blockers that dump/restore avoids. What drives the outage of each choice (the plan's formula, "
            "see [Estimated Time](#estimated-time)):",
            "",
            major_drivers_md(target_major_of(dag)),
            "",
            f"How to choose: [the index]({rel_link(page.path, 'README.md')}#choosing-pg_upgrade-or-dumprestore).",
        ]
    )


def see_also_section(page: Page) -> str:
    return "\n".join(f"- [{PAGE_BY_PATH[p].title}]({rel_link(page.path, p)})" for p in page.see_also)


def render_dag_page(page: Page, dags: Dags, facts: Facts) -> str:
    assert page.dag and page.estimate
    dag = dags.get(page.dag)
    doc = Doc.parse(dag.doc_md)
    rb = rollback_of(dag)
    if rb:
        dags.get(rb)  # a page without its rollback DAG would be a guide without a way back
    for dag_id in page.after:
        dags.get(dag_id)
    prereq = doc.pop("prerequisites")
    impact = doc.pop("impact")
    steps = doc.pop("steps")
    rollback = doc.pop("rollback")
    success = doc.pop("success criteria")
    trigger = doc.pop("trigger")
    for name, text in (("Prerequisites", prereq), ("Steps", steps), ("Rollback", rollback)):
        if text is None:
            raise Unavailable(f"the doc_md of {page.dag} has no '## {name}' section")
    out = [
        HEADER.format(source=f"source: the DAG {dag.dag_id} in {dag_file(dag)}"),
        "",
        f"# {page.title}",
        "",
        dag_facts_table(dag),
        "",
    ]
    if doc.intro:
        out += [doc.intro, ""]
    out += ["## Prerequisites", "", prereq or "", ""]
    if impact:
        out += ["## Impact", "", impact, ""]
    if page.estimate == "major":
        out += ["## Method: pg_upgrade or dump/restore", "", method_section(page, dag), ""]
    out += ["## Steps", "", steps or "", ""]
    out += ["### Tasks in order", "", tasks_section(dag), ""]
    if page.estimate == "major":
        out += ["### Configuration carried over", "", settings_section(dag, facts), ""]
    for name, body in doc.sections.items():  # sections this generator does not know: kept, not lost
        out += [f"## {name}", "", body, ""]
    out += ["## Parameters", "", params_table(dag), ""]
    out += ["## Estimated Time", "", ESTIMATES[page.estimate](dag), ""]
    out += ["## Rollback", "", rollback_section(dag, dags, rollback), ""]
    out += ["## Success Criteria", "", success or "See the validation tasks above.", ""]
    out += ["## Trigger", "", trigger_section(dag, trigger), ""]
    if page.after:
        out += ["## After the upgrade", "", after_section(page, dags), ""]
    if page.see_also:
        out += ["## See also", "", see_also_section(page), ""]
    return "\n".join(out)
