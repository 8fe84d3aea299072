"""The major upgrade DAGs' params (the trigger form) and their cross-checks; light enough for DAG parsing."""

from __future__ import annotations

import logging
from typing import Any

from pgupgrade.context import RunContext
from pgupgrade.decisions import DECISION_TIMEOUT
from pgupgrade.errors import ConfigError
from pgupgrade.major.model import TransferMode
from pgupgrade.params import COMMON, TOPOLOGY, Field

log = logging.getLogger(__name__)


FIELDS: list[Field] = [
    *COMMON,
    *TOPOLOGY,
    Field(
        name="new_bindir",
        type="string",
        default="",
        title="New bin directory",
        description="bin directory of the new major's installation (empty: the newest installed of that major).",
        section="New cluster",
        kind="abs_path",
    ),
    Field(
        name="new_datadir",
        type="string",
        default="",
        title="New data directory",
        description="Data directory of the new cluster; must not exist or be empty (empty: the old path with the major "
        "number replaced, e.g. /var/lib/postgresql/16/main).",
        section="New cluster",
        kind="abs_path",
    ),
    Field(
        name="method",
        type="string",
        default="auto",
        title="Method",
        description="auto: pg_upgrade when its --check passes and space allows, dump/restore only for blockers that "
        "dump/restore avoids.",
        section="Method",
        enum=("auto", "pg_upgrade", "dump_restore"),
    ),
    Field(
        name="transfer_mode",
        type="string",
        default="link",
        title="pg_upgrade transfer mode",
        description="link (fast; once the new cluster started, the way back is a base backup plus the old cluster's "
        "WAL), "
        "copy, clone, swap (PostgreSQL 18+; like link).",
        section="Method",
        enum=tuple(TransferMode),
    ),
    Field(
        name="rehearsal",
        type="boolean",
        default=False,
        title="Rehearsal first",
        description="Restore the backup into a scratch cluster and run the same upgrade there before touching "
        "production.",
        section="Method",
    ),
    Field(
        name="ack_standbys",
        type="boolean",
        default=False,
        title="Standbys acknowledged",
        description="Go ahead although standbys stream from this cluster (they must be rebuilt).",
        section="Acknowledgements",
    ),
    Field(
        name="ack_replication_slots",
        type="boolean",
        default=False,
        title="Replication slots acknowledged",
        description="Go ahead although replication slots will not exist after the upgrade.",
        section="Acknowledgements",
    ),
    Field(
        name="ack_subscriptions",
        type="boolean",
        default=False,
        title="Subscriptions acknowledged",
        description="Go ahead although subscriptions are carried disabled.",
        section="Acknowledgements",
    ),
    Field(
        name="perf_threshold_pct",
        type="integer",
        default=100,
        title="Slowdown threshold (%)",
        description="How much slower a TVIEW scan may be after the upgrade than before.",
        section="Validation",
        minimum=0,
        maximum=10000,
    ),
    Field(
        name="perf_action",
        type="string",
        default="warn",
        title="On slowdown",
        description="warn or fail when the threshold is exceeded.",
        section="Validation",
        enum=("warn", "fail"),
    ),
    DECISION_TIMEOUT,
]


# The generic DAG (any supported major to a newer one, e.g. 15 → 17 in one pg_upgrade) adds this field.
TARGET_MAJOR = Field(
    name="target_major",
    type="integer",
    default=18,
    title="Target major",
    description="The major version to upgrade to.",
    section="New cluster",
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
        name="upgrade_dag_id",
        type="string",
        default="pg15_to_pg16_upgrade",
        title="Upgrade DAG",
        description="The DAG of the finished upgrade run.",
        section="Run",
        kind="conn_id",
    ),
    Field(
        name="upgrade_run_id",
        type="string",
        default="",
        title="Upgrade run id",
        description="The successful upgrade run whose old cluster to delete.",
        section="Run",
    ),
    Field(
        name="confirm_delete",
        type="string",
        default="",
        title="Confirm: old data directory",
        description="Type the old data directory's path exactly: nothing is deleted otherwise.",
        section="Safety",
    ),
    Field(
        name="min_age_hours",
        type="integer",
        default=24,
        title="Minimum age (h)",
        description="Refuse until the new cluster has served clients this long (the guide's 'after verifying it "
        "works').",
        section="Safety",
        minimum=0,
        maximum=24 * 365,
    ),
    DECISION_TIMEOUT,
]
