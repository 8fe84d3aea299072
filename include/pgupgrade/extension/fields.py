"""What the extension DAG files need when Airflow parses them: DAG ids, the admin Variables, the params of the
upgrade and rollback DAGs, and the version rules the params are checked against. Light: nothing here touches a
server or loads the database driver."""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgupgrade import recovery
from pgupgrade.errors import ConfigError, PlanError
from pgupgrade.params import COMMON, Field

if TYPE_CHECKING:
    from pgupgrade.profiles import ExtensionProfile

MIGRATION_DAG_ID = "pg_tviews_0_1_to_0_2_migration"
MINOR_DAG_ID = "pg_tviews_minor_update"
ROLLBACK_DAG_ID = "pg_tviews_extension_rollback"
SOURCE_DIR_VARIABLE = "pgupgrade_extension_source_dir"
INSTALL_COMMAND_VARIABLE = "pgupgrade_extension_install_command"


class SourceKind(enum.StrEnum):
    """Where the target's extension files come from (param ``extension_source``)."""

    INSTALLED = "installed"  # already in the installation's share directory
    COPY = "copy"  # copied from the directory in the Variable SOURCE_DIR_VARIABLE
    COMMAND = "command"  # installed by the argv in the Variable INSTALL_COMMAND_VARIABLE


class PerfAction(enum.StrEnum):
    """What a TVIEW scan slower than ``perf_threshold_pct`` does (param ``perf_action``)."""

    WARN = "warn"
    FAIL = "fail"


SOURCES = tuple(k.value for k in SourceKind)


def upgrade_fields(target_default: str) -> list[Field]:
    """The params of both upgrade DAGs; only the default target differs."""
    return [
        *COMMON,
        Field(
            name="databases",
            type="array",
            default=[],
            title="Databases",
            description="Databases to update; empty: every database that has the extension installed.",
            section="Extension",
        ),
        Field(
            name="target_version",
            type="string",
            default=target_default,
            title="Target version",
            description="Extension version to update to.",
            section="Extension",
            kind="version",
        ),
        Field(
            name="extension_source",
            type="string",
            default=SourceKind.INSTALLED.value,
            title="Extension files",
            description="installed: the target's files are already in the installation's share directory; copy: copied "
            f"from the directory in the Airflow Variable {SOURCE_DIR_VARIABLE}; command: installed by the argv "
            f"in the Variable {INSTALL_COMMAND_VARIABLE} (admin configuration, never from the trigger conf).",
            section="Extension",
            enum=SOURCES,
        ),
        Field(
            name="strict_compat",
            type="boolean",
            default=False,
            title="Strict compatibility",
            description="Stop in the plan when any view, function or procedure uses a function the target removes or "
            "changes (otherwise: warnings in the plan and the report).",
            section="Extension",
        ),
        Field(
            name="perf_threshold_pct",
            type="integer",
            default=100,
            title="Slowdown threshold (%)",
            description="How much slower a TVIEW scan may be after the update than before.",
            section="Validation",
            minimum=0,
            maximum=10000,
        ),
        Field(
            name="perf_action",
            type="string",
            default=PerfAction.WARN.value,
            title="On slowdown",
            description="warn or fail when the threshold is exceeded.",
            section="Validation",
            enum=tuple(a.value for a in PerfAction),
        ),
    ]


FIELDS = upgrade_fields("0.2.0")
MINOR_FIELDS = upgrade_fields("0.1.6")
# the rollback DAGs' params, with this runbook's upgrade DAGs and what accepting data loss means here
ROLLBACK_FIELDS: list[Field] = [
    replace(f, default=MIGRATION_DAG_ID, enum=(MIGRATION_DAG_ID, MINOR_DAG_ID), kind=None)
    if f.name == "upgrade_dag_id"
    else replace(
        f, description="Restore a database from the backup although its tables changed after the backup was taken."
    )
    if f.name == "accept_data_loss"
    else f
    for f in recovery.FIELDS
]


# -- versions -------------------------------------------------------------------------------------------


def vtuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise PlanError(f"cannot compare extension version {version!r} (expected numbers like 0.1.5)") from None


def series(version: str) -> str:
    """0.1.5 → 0.1 (for a 0.x extension the first two numbers name the API series)."""
    return ".".join(version.split(".")[:2])


def between(changes: dict[str, list[str]], current: str, target: str) -> list[str]:
    """Names listed for the versions after current up to and including target."""
    lo, hi = vtuple(current), vtuple(target)
    return sorted({n for v, names in changes.items() if lo < vtuple(v) <= hi for n in names})


def check_target(spec: dict[str, Any], target: str) -> None:
    """The DAG's series rule for target_version (a ConfigError names the field)."""
    if spec.get("kind") == "series" and series(target) != spec["to_series"]:
        raise ConfigError("target_version", f"this DAG updates to {spec['to_series']}.x, got {target}")


def version_verdict(profile: ExtensionProfile, spec: dict[str, Any], current: str, target: str) -> str | None:
    """None when current may be updated to target by this DAG; "already" when it is there; else the reason."""
    if vtuple(current) == vtuple(target):
        return "already"
    if vtuple(current) > vtuple(target):
        return f"installed {current} is newer than the target {target} (a downgrade is a restore: rollback DAG)"
    if spec.get("kind") == "series":
        if series(current) != spec["from_series"]:
            return f"this DAG updates {spec['from_series']}.x to {spec['to_series']}.x; installed is {current}"
        minimum = profile.min_upgrade_from.get(series(target))
        if minimum and vtuple(current) < vtuple(minimum):
            return (
                f"{profile.extname} {target} needs {minimum} or later installed first, found {current}: run "
                f"{MINOR_DAG_ID} to {minimum} first"
            )
    elif series(current) != series(target):
        return f"a minor update stays within {series(current)}.x; {current} → {target} is a migration"
    return None
