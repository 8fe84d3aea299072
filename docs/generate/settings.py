"""Section "Configuration carried over" of a major upgrade's guide, and the settings each major dropped (also a
placeholder of the templates): ``postgres --describe-config`` of the installations here."""

from __future__ import annotations

import itertools
from typing import Any

from .dags import upgrade_majors
from .facts import Facts
from .markup import code, table


def settings_pair(facts: Facts, old: int, new: int) -> tuple[list[str], list[str]] | None:
    if old not in facts.settings or new not in facts.settings:
        return None
    a, b = set(facts.settings[old][1]), set(facts.settings[new][1])
    return sorted(a - b), sorted(b - a)


def removed_settings_md(facts: Facts) -> str:
    majors = sorted(facts.settings)
    if len(majors) < 2:
        return f"(not available here: {facts.settings_error or 'fewer than two majors installed'})"
    rows = []
    for old, new in itertools.pairwise(majors):
        pair = settings_pair(facts, old, new)
        assert pair is not None
        removed, added = pair
        label = f"{facts.settings[old][0]} → {facts.settings[new][0]}"
        rows.append([label, ", ".join(code(n) for n in removed) or "none", str(len(added))])
    return table(["Installations", "Settings the newer one does not know", "New settings"], rows)


def settings_section(dag: Any, facts: Facts) -> str:
    majors = upgrade_majors(dag)
    intro = (
        f"{code('configure_new')} carries the old configuration over setting by setting: path settings rewritten "
        "to the new cluster's own files, settings the new major does not know dropped (listed in the report), "
        "`postgresql.auto.conf` merged, `pg_hba.conf` and `pg_ident.conf` copied, port and socket directories kept. "
        "Never copy `postgresql.conf` wholesale between majors."
    )
    if not majors:
        return (
            f"{intro}\n\nCore settings each major dropped (`postgres --describe-config` of the installations "
            f"here):\n\n{removed_settings_md(facts)}"
        )
    old, new = majors
    pair = settings_pair(facts, old, new)
    if pair is None:
        return intro + f"\n\n(The settings of {old} and {new} could not be compared here: not both installed.)"
    removed, added = pair
    lines = ", ".join(code(n) for n in removed) or "none"
    return (
        f"{intro}\n\nCore settings of PostgreSQL {facts.settings[old][0]} that {facts.settings[new][0]} does not "
        f"know (dropped by `configure_new` when set): {lines}. New in {new}: {len(added)} settings "
        f"(`postgres --describe-config` of the installations here)."
    )
