"""The major upgrade DAGs' params (the trigger form) and their cross-checks; light enough for DAG parsing."""

from __future__ import annotations

import logging
from typing import Any

from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError
from pgupgrade.major.model import TransferMode
from pgupgrade.params import COMMON, Field

log = logging.getLogger(__name__)


FIELDS: list[Field] = [
    *COMMON,
    Field(
        "new_bindir",
        "string",
        "",
        "New bin directory",
        "bin directory of the new major's installation (empty: the newest installed of that major).",
        "New cluster",
        kind="abs_path",
    ),
    Field(
        "new_datadir",
        "string",
        "",
        "New data directory",
        "Data directory of the new cluster; must not exist or be empty (empty: the old path with the major "
        "number replaced, e.g. /var/lib/postgresql/16/main).",
        "New cluster",
        kind="abs_path",
    ),
    Field(
        "method",
        "string",
        "auto",
        "Method",
        "auto: pg_upgrade when its --check passes and space allows, dump/restore only for blockers that "
        "dump/restore avoids.",
        "Method",
        enum=("auto", "pg_upgrade", "dump_restore"),
    ),
    Field(
        "transfer_mode",
        "string",
        "link",
        "pg_upgrade transfer mode",
        "link (fast; once the new cluster started, the way back is a base backup plus the old cluster's WAL), "
        "copy, clone, swap (PostgreSQL 18+; like link).",
        "Method",
        enum=tuple(TransferMode),
    ),
    Field(
        "rehearsal",
        "boolean",
        False,
        "Rehearsal first",
        "Restore the backup into a scratch cluster and run the same upgrade there before touching production.",
        "Method",
    ),
    Field(
        "ack_standbys",
        "boolean",
        False,
        "Standbys acknowledged",
        "Go ahead although standbys stream from this cluster (they must be rebuilt).",
        "Acknowledgements",
    ),
    Field(
        "ack_replication_slots",
        "boolean",
        False,
        "Replication slots acknowledged",
        "Go ahead although replication slots will not exist after the upgrade.",
        "Acknowledgements",
    ),
    Field(
        "ack_subscriptions",
        "boolean",
        False,
        "Subscriptions acknowledged",
        "Go ahead although subscriptions are carried disabled.",
        "Acknowledgements",
    ),
    Field(
        "perf_threshold_pct",
        "integer",
        100,
        "Slowdown threshold (%)",
        "How much slower a TVIEW scan may be after the upgrade than before.",
        "Validation",
        minimum=0,
        maximum=10000,
    ),
    Field(
        "perf_action",
        "string",
        "warn",
        "On slowdown",
        "warn or fail when the threshold is exceeded.",
        "Validation",
        enum=("warn", "fail"),
    ),
]


# The generic DAG (any supported major to a newer one, e.g. 15 → 17 in one pg_upgrade) adds this field.
TARGET_MAJOR = Field(
    "target_major",
    "integer",
    18,
    "Target major",
    "The major version to upgrade to.",
    "New cluster",
    minimum=16,
    maximum=18,
)


SUPPORTED_MAJORS = range(15, 19)


def cross_checks(p: dict[str, Any]) -> None:
    """Checks that involve more than one field (each field was validated on its own already)."""
    if p["transfer_mode"] == "swap" and p["method"] == "dump_restore":
        raise ConfigError("transfer_mode", "swap is a pg_upgrade mode; method dump_restore does not use it")
    if (
        p["new_datadir"]
        and p["backup_dir"]
        and (p["backup_dir"] == p["new_datadir"] or p["backup_dir"].startswith(p["new_datadir"] + "/"))
    ):
        raise ConfigError("backup_dir", "must be outside new_datadir")


def target_major(ctx: RunContext) -> int:
    return int(ctx.spec.get("to_major") or ctx.params["target_major"])


CLEANUP_FIELDS: list[Field] = [
    COMMON[0],
    Field(
        "upgrade_dag_id",
        "string",
        "pg15_to_pg16_upgrade",
        "Upgrade DAG",
        "The DAG of the finished upgrade run.",
        "Run",
        kind="conn_id",
    ),
    Field(
        "upgrade_run_id",
        "string",
        "",
        "Upgrade run id",
        "The successful upgrade run whose old cluster to delete.",
        "Run",
    ),
    Field(
        "confirm_delete",
        "string",
        "",
        "Confirm: old data directory",
        "Type the old data directory's path exactly: nothing is deleted otherwise.",
        "Safety",
    ),
    Field(
        "min_age_hours",
        "integer",
        24,
        "Minimum age (h)",
        "Refuse until the new cluster has served clients this long (the guide's 'after verifying it works').",
        "Safety",
        minimum=0,
        maximum=24 * 365,
    ),
]
