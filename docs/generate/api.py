"""Page backwards-compatibility/api-compatibility.md: the extension's API in every version, side by side, and what
changes between them; each section a function that returns its lines."""

from __future__ import annotations

from .compat import CATALOGS_SOURCE, profile_section, source_note
from .dags import Dags
from .diffs import describe_column, diff, diff_bullets
from .facts import Facts
from .markup import code, table
from .pages import HEADER, PAGE_BY_PATH, Page


def render_api(page: Page, dags: Dags, facts: Facts) -> str:
    facts.need()
    out = [HEADER.format(source=CATALOGS_SOURCE), "", f"# {page.title}", "", source_note(facts), ""]
    out += versions_section(facts)
    out += functions_section(facts)
    out += tables_section(facts)
    out += members_section(facts)
    out += config_tables_section(facts)
    out += settings_read_section(facts)
    out += changes_section(facts)
    out += update_scripts_section(facts)
    out += ["## The DAGs' extension profile", "", profile_section(facts), ""]
    out += [
        "## See also",
        "",
        f"- [{PAGE_BY_PATH['extension/breaking-changes.md'].title}](../extension/breaking-changes.md)",
        f"- [{PAGE_BY_PATH['backwards-compatibility/sql-compatibility.md'].title}](sql-compatibility.md)",
        "",
    ]
    return "\n".join(out)


def versions_section(facts: Facts) -> list[str]:
    vs = facts.versions
    out = [
        "## Versions and update paths",
        "",
        f"Available: {', '.join(code(v) for v in vs)}; `default_version` (what a bare `CREATE EXTENSION` and "
        f"the `CREATE EXTENSION` in a dump install): {code(facts.default_version)}.",
        "",
        table(
            ["From", "To", "Update scripts run by `ALTER EXTENSION … UPDATE`"],
            [[code(s), code(t), code(p)] for s, t, p in facts.update_paths],
        ),
        "",
    ]
    downgrades = [(s, t) for s, t, _ in facts.update_paths if vs.index(t) < vs.index(s)]
    if not downgrades:
        out += ["No path leads to an older version: going back means restoring a backup.", ""]
    return out


def functions_section(facts: Facts) -> list[str]:
    vs = facts.versions
    keys: list[str] = []
    for v in vs:
        keys += [k for k in facts.snaps[v]["functions"] if k not in keys]
    rows = []
    for k in sorted(keys):
        row = [code(k)]
        for v in vs:
            f = facts.snaps[v]["functions"].get(k)
            row.append(f"`({f['arguments']})` → `{f['result']}`" if f else "—")
        rows.append(row)
    return ["## Functions", "", table(["Function (argument types)", *vs], rows), ""]


def tables_section(facts: Facts) -> list[str]:
    vs = facts.versions
    out = ["## Tables", ""]
    for t in sorted({t for v in vs for t in facts.snaps[v]["columns"]}):
        out += [f"### `{t}`", "", table_columns(facts, t), ""]
    return out


def table_columns(facts: Facts, t: str) -> str:
    """The columns of one of the extension's tables: position and shape in each version."""
    vs = facts.versions
    names: list[str] = []
    for v in vs:
        names += [c["name"] for c in facts.snaps[v]["columns"].get(t, []) if c["name"] not in names]
    rows = []
    for n in names:
        row = [code(n)]
        for v in vs:
            cols = [c for c in facts.snaps[v]["columns"].get(t, []) if c["name"] == n]
            if cols:
                pos = [c["name"] for c in facts.snaps[v]["columns"][t]].index(n) + 1
                row.append(f"#{pos} " + describe_column(cols[0]).split(" ", 1)[1])
            else:
                row.append("—")
        rows.append(row)
    return table(["Column", *vs], rows)


def members_section(facts: Facts) -> list[str]:
    vs = facts.versions
    members = sorted({m for v in vs for m in facts.snaps[v]["members"]})
    return [
        "## Other extension members",
        "",
        table(["Object", *vs], [[m] + ["✓" if m in facts.snaps[v]["members"] else "—" for v in vs] for m in members]),
        "",
    ]


def config_tables_section(facts: Facts) -> list[str]:
    vs = facts.versions
    return [
        "## Configuration tables (their rows are in every pg_dump)",
        "",
        table(
            ["Table or sequence", *vs],
            [
                [code(t)] + ["✓" if t in facts.snaps[v]["config"] else "—" for v in vs]
                for t in sorted({t for v in vs for t in facts.snaps[v]["config"]})
            ],
        ),
        "",
    ]


def settings_read_section(facts: Facts) -> list[str]:
    vs = facts.versions
    out = ["## Settings read by the functions", ""]
    gucs = sorted({g for v in vs for g in facts.snaps[v]["gucs"]})
    if not gucs:
        return [*out, "None.", ""]
    return [
        *out,
        table(
            ["Setting", *vs],
            [[code(g)] + ["✓" if g in facts.snaps[v]["gucs"] else "—" for v in vs] for g in gucs],
        ),
        "",
        "The stand-in reads them with `current_setting(name, true)` (missing: the default); a SQL-only "
        "extension cannot register settings, so they are custom placeholders (`SET` works).",
        "",
    ]


def changes_section(facts: Facts) -> list[str]:
    """The differences between consecutive versions, and between the oldest and the newest."""
    vs = facts.versions
    out = ["## Changes between versions", ""]
    pairs = [(vs[i - 1], vs[i]) for i in range(1, len(vs))]
    if len(vs) > 2:
        pairs.append((vs[0], vs[-1]))
    for a, b in pairs:
        out += [f"### {a} → {b}", "", *diff_bullets(diff(facts.snaps[a], facts.snaps[b])), ""]
    return out


def update_scripts_section(facts: Facts) -> list[str]:
    """Each version reached from the oldest by its update scripts, compared with a fresh install of it."""
    vs = facts.versions
    rows = []
    for target, snap in facts.updated.items():
        bullets = diff_bullets(diff(facts.snaps[target], snap))
        same = bullets[0].startswith("- no difference")
        rows.append([f"{vs[0]} → {target}", "identical" if same else "; ".join(b[2:] for b in bullets)])
    return [
        "## Update scripts compared with a fresh install",
        "",
        f"Each version after {vs[0]} also reached by `CREATE EXTENSION … VERSION '{vs[0]}'` and "
        "`ALTER EXTENSION … UPDATE TO` it, then compared with the fresh install:",
        "",
        table(["Update", "Result compared with CREATE EXTENSION of the target"], rows),
        "",
    ]
