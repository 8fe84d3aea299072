"""Page extension/breaking-changes.md: what breaks for code written against pg_tviews 0.1 when the database is
updated to 0.2, from the catalogs' difference and the probes; each section a function that returns its lines."""

from __future__ import annotations

from typing import Any

from .compat import CATALOGS_SOURCE, profile_section, restore_cell, result_cell, source_note
from .dags import Dags
from .diffs import breaking, diff, diff_bullets
from .facts import Facts
from .markup import code, table
from .pages import HEADER, Page
from .probes import EXTNAME


def render_breaking(page: Page, dags: Dags, facts: Facts) -> str:
    facts.need()
    old, new = series_versions(facts)
    bullets = diff_bullets(diff(facts.snaps[old], facts.snaps[new]))
    breaking_bullets = breaking(bullets)
    others = [b for b in bullets if b not in breaking_bullets]
    out = [HEADER.format(source=CATALOGS_SOURCE), "", f"# {page.title}", "", intro(facts, old, new, bullets), ""]
    out += ["## Breaking changes", "", *(breaking_bullets or ["- none"]), ""]
    out += failing_calls_section(facts, old, new)
    out += blocked_update_section(facts, new)
    out += late_failures_section(facts)
    out += dumps_section(facts, new)
    out += ["## Other changes (not breaking)", "", *(others or ["- none"]), ""]
    out += dags_section(facts, old, new)
    return "\n".join(out)


def series_versions(facts: Facts) -> tuple[str, str]:
    """The first 0.1.x and the first 0.2.x version (the oldest and the newest when a series is missing)."""
    vs = facts.versions
    old = next((v for v in vs if v.startswith("0.1.")), vs[0])
    new = next((v for v in vs if v.startswith("0.2.")), vs[-1])
    return old, new


def intro(facts: Facts, old: str, new: str, bullets: list[str]) -> str:
    """What the page compares, and the other 0.1.x versions for which the same breaking changes hold."""
    same_for = [
        v
        for v in facts.versions
        if v.startswith("0.1.")
        and v != old
        and breaking(diff_bullets(diff(facts.snaps[v], facts.snaps[new]))) == breaking(bullets)
    ]
    return (
        f"What changes for code and objects written against {EXTNAME} {old} when the database is updated to {new}"
        + (f" (the same list holds for {', '.join(same_for)})" if same_for else "")
        + ". Every item below is a difference between the two versions' catalogs or the result of a probe run "
        "against them; nothing is typed by hand. " + source_note(facts)
    )


def failing_calls_section(facts: Facts, old: str, new: str) -> list[str]:
    calls = [
        (stmt, res)
        for stmt, res in facts.calls.items()
        if res.get(old, ("", ""))[0] == "ok" and res.get(new, ("", ""))[0] == "error"
    ]
    if not calls:
        return []
    return [
        f"### Statements that work on {old} and fail on {new}",
        "",
        table(
            ["Statement", old, new],
            [[code(s), result_cell(r.get(old)), result_cell(r.get(new))] for s, r in calls],
        ),
        "",
    ]


def blocked_update_section(facts: Facts, new: str) -> list[str]:
    blocked = [s for s in facts.scenarios if s["update"][0] == "error"]
    if not blocked:
        return []
    return [
        f"### Objects of yours that make `ALTER EXTENSION {EXTNAME} UPDATE TO '{new}'` fail",
        "",
        "The update script drops and re-creates functions and drops columns; objects bound to them at "
        "creation time stop it (the whole update is rolled back):",
        "",
        table(
            ["Your object", "ALTER EXTENSION … UPDATE"],
            [[s["what"], result_cell(s["update"])] for s in blocked],
        ),
        "",
    ]


def late_failures_section(facts: Facts) -> list[str]:
    late = [s for s in facts.scenarios if s["update"][0] == "ok" and s.get("afterwards", ("ok", ""))[0] == "error"]
    if not late:
        return []
    return [
        "### Objects that survive the update and fail when they run",
        "",
        table(["Your object", "Afterwards"], [[s["what"], result_cell(s["afterwards"])] for s in late]),
        "",
    ]


def dumps_section(facts: Facts, new: str) -> list[str]:
    rest = [r for r in facts.restores if r["dump_version"] == new]
    if not rest:
        return []
    return [
        f"### Dumps taken at {new}",
        "",
        f"The `CREATE EXTENSION` that pg_dump writes has no version, so a restore installs `default_version` "
        f"({facts.default_version}) unless the extension exists already:",
        "",
        table(["Restored into", "pg_restore --exit-on-error"], [[restored_into(r), restore_cell(r)] for r in rest]),
        "",
    ]


def restored_into(r: dict[str, Any]) -> str:
    if r["precreated"]:
        return f"a database with `CREATE EXTENSION … VERSION '{r['precreated']}'` done first"
    return "an empty database"


def dags_section(facts: Facts, old: str, new: str) -> list[str]:
    """What the migration DAG's plan and its rollback do about the breaking changes, and the profile check."""
    downgrade = [p for p in facts.update_paths if p[0] == new and p[1] == old]
    way_back = (
        f"There is no update path from {new} back to {old}"
        if not downgrade
        else f"A downgrade path {new} → {old} exists"
    )
    return [
        "## What the DAGs do about it",
        "",
        "- The migration DAG's plan scans for views and functions that use a removed or changed function (the "
        "profile's lists, cross-checked below) and refuses when one is bound to it; late-bound uses are warnings, "
        "refusals with `strict_compat` — see [the migration guide](0.1-to-0.2-migration.md) and the "
        "[probes](../backwards-compatibility/sql-compatibility.md#objects-of-yours-during-alter-extension--update).",
        "- " + way_back + ": the rollback DAG restores the run's backup for every database whose update committed.",
        "",
        "## The DAGs' extension profile",
        "",
        profile_section(facts),
        "",
    ]
