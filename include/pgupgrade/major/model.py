"""What a major upgrade run decides before it acts: the method, the transfer mode, and the typed plan (stored as
the run's ``plan.json``; the same JSON the untyped plan had, plus ``schema_version``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pgupgrade.errors import UnsafeState
from pgupgrade.scratch import InitdbOptions


class Method(enum.StrEnum):
    PG_UPGRADE = "pg_upgrade"
    DUMP_RESTORE = "dump_restore"


class TransferMode(enum.StrEnum):
    """pg_upgrade's ways to move the data files (``--link``, ``--copy``, ``--clone``, ``--swap``)."""

    LINK = "link"
    COPY = "copy"
    CLONE = "clone"
    SWAP = "swap"


@dataclass(frozen=True)
class OldCluster:
    version: str
    bindir: str
    datadir: str
    confdir: str | None
    port: int
    socket_dirs: str


@dataclass(frozen=True)
class NewCluster:
    version: str
    bindir: str
    datadir: str
    sharedir: str


@dataclass(frozen=True)
class MajorPlan:
    old: OldCluster
    new: NewCluster
    databases: list[str]
    data_bytes: int
    relations: int
    initdb: InitdbOptions
    shared_preload_libraries: str
    method: Method
    transfer_mode: TransferMode | None  # pg_upgrade only
    method_reason: str
    check_output_tail: str
    blockers_acknowledged: list[dict[str, Any]]
    warnings: list[str]
    backup_dir: str
    work_dir: str
    outage_estimate_s: float
    space: dict[str, int]
    already_upgraded: bool = False
    # the configuration's carry-over as planned (pgupgrade.config.CarriedConfig.for_plan): dropped, rewritten,
    # skipped, files, dirs; empty in plans recorded before it existed
    config: dict[str, list[str]] = field(default_factory=dict)
    # collation versions old vs new (pgupgrade.collations.compare): summary, changed, equal, reindex; empty in
    # plans recorded before it existed
    collations: dict[str, Any] = field(default_factory=dict)
    # the primary and its listed standbys as proven by the plan (pgupgrade.topology.Topology); empty without them
    topology: dict[str, Any] = field(default_factory=dict)
    # how each listed standby reaches the new major (pgupgrade.major.standbys.Route), and the old primary's
    # physical slots the new primary recreates for them; empty without standbys
    standby_routes: list[dict[str, Any]] = field(default_factory=list)
    standby_slots: list[str] = field(default_factory=list)

    @property
    def mode(self) -> TransferMode:
        """pg_upgrade's transfer mode; refused when the plan chose dump/restore."""
        if self.transfer_mode is None:
            raise UnsafeState("the plan chose dump/restore: it has no pg_upgrade transfer mode")
        return self.transfer_mode
