"""Page backwards-compatibility/sql-compatibility.md: SQL written for pg_tviews 0.1 run on every version, objects
of yours during ALTER EXTENSION … UPDATE, dumps restored across versions; each section a function that returns
its lines."""

from __future__ import annotations

from typing import Any

from .compat import restore_cell, result_cell
from .dags import Dags
from .facts import EXT, Facts
from .markup import code, table
from .pages import HEADER, Page
from .probes import EXTNAME, PROBE_SETUP


def render_sql(page: Page, dags: Dags, facts: Facts) -> str:
    facts.need()
    out = [
        HEADER.format(source="source: probes run against a scratch PostgreSQL with every version of the stand-in"),
        "",
        f"# {page.title}",
        "",
        f"Each statement below was run against a database with {EXTNAME} created at each version, after this "
        "setup, each in its own transaction, rolled back (✓ = works, with the value of a single-value result; "
        f"✗ = the error). {facts.server}.",
        "",
        "```sql",
        "\n".join(s + ";" for s in PROBE_SETUP),
        "```",
        "",
    ]
    out += calls_section(facts)
    out += scenarios_section(facts)
    out += restores_section(facts)
    out += [
        "## See also",
        "",
        "- [API compatibility](api-compatibility.md)",
        "- [Breaking changes](../extension/breaking-changes.md)",
        "",
    ]
    return "\n".join(out)


def calls_section(facts: Facts) -> list[str]:
    """Every probed call on every version, and the forms that work on all of them."""
    vs = facts.versions
    rows = [[code(stmt)] + [result_cell(res.get(v)) for v in vs] for stmt, res in facts.calls.items()]
    everywhere = [stmt for stmt, res in facts.calls.items() if all(res.get(v, ("",))[0] == "ok" for v in vs)]
    return [
        "## Calls and queries",
        "",
        table(["Statement", *vs], rows),
        "",
        "### Written once, works on every version",
        "",
        "Code that must run before and after the update (applications deployed independently of the database) "
        "can use these forms:",
        "",
        *[f"- {code(s)}" for s in everywhere],
        "",
    ]


def scenarios_section(facts: Facts) -> list[str]:
    """Objects of yours created at the oldest version: what the plan's scan finds, whether the update passes."""
    old, new = facts.versions[0], facts.versions[-1]
    out = [
        "## Objects of yours during ALTER EXTENSION … UPDATE",
        "",
        f"Each object created in a database at {old}, then the DAG plan's compatibility scan "
        f"(`pgupgrade.extension.catalog.compat_scan`: `bound` = a `pg_depend` entry, refused by the plan; `text` = "
        f"the name in a late-bound body, a warning, refused with `strict_compat`), then "
        f"`ALTER EXTENSION {EXTNAME} UPDATE TO '{new}'`, then a call of the object; all in one transaction, "
        "rolled back.",
        "",
    ]
    headers = ["Your object", "Plan's compatibility scan", "Views on the extension's columns"]
    rows = [scenario_row(s) for s in facts.scenarios]
    out += [table([*headers, "ALTER EXTENSION … UPDATE", "Then calling it"], rows), ""]
    unseen = [s["what"] for s in facts.scenarios if s.get("scan") == [] and s["update"][0] == "error"]
    if unseen:
        out += [
            f"Not found by the plan's scan but stopping the update: {'; '.join(unseen)}. The run then fails in "
            "`update_extension`, whose transaction is rolled back (nothing changed), and the rollback DAG only puts "
            "the triggers back. Look for such objects before the run with the query of the column "
            "*Views on the extension's columns* (run in every scenario above):",
            "",
            "```sql",
            view_columns_query(),
            "```",
            "",
        ]
    return out


def scenario_row(s: dict[str, Any]) -> list[str]:
    scan = "; ".join(s.get("scan", [])) or ("nothing found" if "scan" in s else "scan not available")
    after = result_cell(s.get("afterwards")) if s.get("afterwards_sql") and s["update"][0] == "ok" else "—"
    views = "; ".join(s.get("view_columns", [])) or "none"
    return [s["what"], scan, views, result_cell(s["update"]), after]


def view_columns_query() -> str:
    """include/sql/extension-view-columns.sql as a reader runs it: without its comment, the extension named."""
    from . import library

    lines = library.load("extension-view-columns").splitlines()
    statement = "\n".join(line for line in lines if not line.startswith("--")).strip()
    for name, value in EXT.items():
        statement = statement.replace(f"%({name})s", f"'{value}'")
    return statement


def restores_section(facts: Facts) -> list[str]:
    return [
        "## Dumps and restores across versions",
        "",
        f"`pg_dump -Fc` of a database at each version, restored with `pg_restore --exit-on-error -d …` "
        f"(`default_version` is {facts.default_version}):",
        "",
        table(
            ["Dump taken at", "Restored into", "Result"],
            [
                [
                    r["dump_version"],
                    f"database with version {r['precreated']} created first" if r["precreated"] else "empty database",
                    restore_cell(r),
                ]
                for r in facts.restores
            ],
        ),
        "",
        "The extension rollback DAG relies on this: it puts the old version's files back and checks the control "
        "file's `default_version` before `pg_restore --clean --if-exists --single-transaction -d <database>`.",
        "",
    ]
