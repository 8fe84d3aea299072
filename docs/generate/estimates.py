"""Estimated Time of each guide, and the drivers of a major upgrade's outage (section Method): the library's
formulas evaluated, never retyped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .dags import seconds, upgrade_majors
from .markup import code, fmt_duration, fmt_num, table


@dataclasses.dataclass
class Linear:
    label: str
    base_s: float
    per_1000_relations_s: float
    per_gib_s: float
    linear: bool
    fn: Callable[[int, int], float]

    @property
    def drivers(self) -> str:
        parts = []
        if self.per_1000_relations_s > 0:
            parts.append("the number of relations")
        if self.per_gib_s > 0:
            parts.append("the data size")
        return " and ".join(parts) or "nothing (fixed)"


SWAP_MIN_MAJOR = 18  # major.plan refuses transfer_mode=swap when the new installation is older


def target_major_of(dag: Any) -> int | None:
    majors = upgrade_majors(dag)
    return majors[1] if majors else None


def major_estimate_models(to_major: int | None = None) -> list[Linear]:
    from . import library

    estimate = library.major_plan.estimate_outage  # the plan's formula: outage_estimate_s
    combos: list[tuple[str, str, str | None]] = [
        (f"pg_upgrade --{m}" if m != "copy" else "pg_upgrade (copy)", "pg_upgrade", m)
        for m in library.TRANSFER_MODES
        if not (m == "swap" and to_major is not None and to_major < SWAP_MIN_MAJOR)
    ]
    combos.append(("dump/restore", "dump_restore", None))
    models = []
    for label, method, mode in combos:

        def fn(relations: int, data_bytes: int, method: str = method, mode: str | None = mode) -> float:
            return float(estimate(method, mode, relations, data_bytes))

        base = fn(0, 0)
        per_rel = fn(1000, 0) - base
        per_gib = fn(0, 2**30) - base
        linear = abs(fn(7000, 13 * 2**30) - (base + 7 * per_rel + 13 * per_gib)) < 1e-6
        models.append(Linear(label, base, per_rel, per_gib, linear, fn))
    return models


EXAMPLES = [(2_000, 10), (2_000, 1024), (200_000, 10), (200_000, 1024)]  # (relations, GiB)


def major_drivers_md(to_major: int | None = None) -> str:
    lines = []
    for m in major_estimate_models(to_major):
        terms = [f"{fmt_num(m.base_s)} s"]
        if m.per_1000_relations_s:
            terms.append(f"{fmt_num(m.per_1000_relations_s)} s per 1,000 relations")
        if m.per_gib_s:
            terms.append(f"{fmt_num(m.per_gib_s)} s per GiB ({fmt_duration(m.per_gib_s * 1024)} per TiB)")
        note = "" if m.linear else " (not linear: see the examples)"
        lines.append(f"- **{m.label}**: {' + '.join(terms)} — grows with **{m.drivers}**{note}.")
    return "\n".join(lines)


def major_examples_md(to_major: int | None = None) -> str:
    models = major_estimate_models(to_major)
    rows = []
    for rel, gib in EXAMPLES:
        size = f"{gib} GiB" if gib < 1024 else f"{gib // 1024} TiB"
        rows.append([f"{rel:,} relations, {size}"] + [fmt_duration(m.fn(rel, gib * 2**30)) for m in models])
    return table(["Cluster"] + [m.label for m in models], rows)


def estimate_major(dag: Any) -> str:
    from . import library

    per_gib = {k: f"{v:g} GiB/s" for k, v in library.major_plan.DEFAULT_GB_PER_S.items()}
    to_major = target_major_of(dag)
    swap = (
        [f"- `swap` is left out: it needs a target of PostgreSQL {SWAP_MIN_MAJOR} or newer (the plan refuses it).", ""]
        if to_major is not None and to_major < SWAP_MIN_MAJOR
        else []
    )
    return "\n".join(
        [
            "The `plan` task computes `outage_estimate_s` (`estimate_outage` in `include/pgupgrade/major/plan.py`) "
            "from the method and transfer mode it chose, the number of relations (rows of `pg_class` in every "
            "database, system catalogs included) and the data size (sum of `pg_database_size`) it measured on the "
            "cluster. "
            f"Assumed throughput: {', '.join(f'{k} {v}' for k, v in per_gib.items())}. The formula, evaluated:",
            "",
            major_drivers_md(to_major),
            "",
            *swap,
            "Examples (the same formula):",
            "",
            major_examples_md(to_major),
            "",
            "What the estimate is used for and what it leaves out:",
            "",
            "- `window_guard` refuses to start the outage when `window_end` is closer than the estimate; the report "
            "records the measured outage (from `block_logins` to `open_to_clients`) and every step's duration.",
            "- Inside the outage but not in the formula: `snapshot_facts` and `validate_facts` count the rows of "
            "every table (time grows with the data size; `verify_content` reads all data twice), `analyze` "
            "(`vacuumdb --analyze-in-stages`), `refresh_tviews` (re-runs every TVIEW's query) and `performance`. "
            "Measure them with a rehearsal or a run on a copy ([testing](testing-upgrade.md)).",
            "- Before the outage: `backup` (`pg_dump -Fd -j jobs` per database; grows with the data size), the "
            "plan's `pg_upgrade --check` against a throwaway cluster (grows with the schema), and with "
            "`rehearsal=true` a restore of the backup plus the same upgrade on a scratch copy.",
        ]
    )


def estimate_minor(dag: Any) -> str:
    from . import library

    rows = [[code(k), fmt_duration(v)] for k, v in library.minor_plan.OUTAGE_ESTIMATE_S.items()]
    return "\n".join(
        [
            "The `plan` task sets `outage_estimate_s` from the installer alone (`OUTAGE_ESTIMATE_S` in "
            "`include/pgupgrade/minor/plan.py`): stop, install, start, validate. The data directory is reused, "
            "so the formula has no data-size term:",
            "",
            table(["installer", "outage estimate"], rows),
            "",
            "- `window_guard` refuses to start the outage when `window_end` is closer than the estimate; the report "
            "records the measured outage and every step's duration.",
            "- Inside the outage but not in the estimate: `snapshot_facts` and `validate_facts` count the rows of "
            "every table (grows with the data size), `refresh_tviews` re-runs every TVIEW's query; with `apt` the "
            "download time of the packages.",
            "- Before the outage: `backup` (compressed `pg_dump -Fd` per database; grows with the data size), "
            "`pre_checks`, `wait_queue_empty`.",
        ]
    )


def estimate_extension(dag: Any) -> str:
    from . import library

    ext = library.extension_catalog
    repeat = getattr(ext, "SCAN_REPEAT", None)
    lock_timeout = getattr(ext, "LOCK_TIMEOUT", None)
    scans = f" and times {repeat} scans of each" if repeat else ""
    lock = f"; `lock_timeout` {lock_timeout}: a busy table makes it fail instead of waiting" if lock_timeout else ""
    return "\n".join(
        [
            "The plan makes no outage estimate: the server keeps running and serves reads and writes throughout. "
            "What the run's length depends on:",
            "",
            "- `backup`: `pg_dump -Fc` of every database in scope — grows with the **data size**.",
            f"- `document_state`: counts the rows of every TVIEW{scans} — grows with the **TVIEW sizes**.",
            "- Triggers off (from `disable_triggers` to `enable_triggers`; TVIEWs not maintained): waiting for the "
            "queue (`queue_wait_timeout_s`), `final_backup_check` (re-reads the dump files), `update_extension` "
            f"(one short transaction per database{lock}), `verify_extension`.",
            "- `refresh_tviews` and `check_stats`: re-run every TVIEW's defining query — grow with the **backing "
            "tables' sizes**; then `performance` and `final_checklist`.",
            "- The report lists every step's measured duration; a run against a restored copy of the database "
            "gives the numbers for production ([testing](../postgresql/testing-upgrade.md)).",
        ]
    )


def estimate_preflight(dag: Any) -> str:
    """The preflight DAG changes nothing: no outage; its length is bounded by the timeouts it declares."""
    limits = (
        [f"the whole run: {fmt_duration(seconds(dag.dagrun_timeout))} (`dagrun_timeout`)"] if dag.dagrun_timeout else []
    )
    for t in dag.tasks:
        if t.execution_timeout:
            limits.append(f"`{t.task_id}`: {fmt_duration(seconds(t.execution_timeout))} per try (`execution_timeout`)")
    return "\n".join(
        [
            "No outage: the DAG only reads (catalogs, settings, `pg_upgrade --check` against a throwaway cluster) "
            "and the clusters keep serving. What the run's length depends on: the number of clusters and, per "
            "cluster, the plan's `pg_upgrade --check` (grows with the **schema**, not the data size).",
            "",
            *(["Upper bounds the DAG sets:", "", *[f"- {x}" for x in limits]] if limits else ["No timeouts set."]),
        ]
    )


ESTIMATES: dict[str, Callable[[Any], str]] = {
    "major": estimate_major,
    "minor": estimate_minor,
    "extension": estimate_extension,
    "preflight": estimate_preflight,
}
