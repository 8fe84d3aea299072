"""What the minor runbook's DAG files need when Airflow parses them: the DAG ids, the admin Variable's name, the
installers, the params (FIELDS, ROLLBACK_FIELDS) and their cross-checks. Kept light: nothing here connects to a
server or imports a database driver."""

from __future__ import annotations

import enum
import re
from dataclasses import replace
from typing import Any

from pgupgrade import recovery
from pgupgrade.errors import ConfigError
from pgupgrade.params import COMMON, TOPOLOGY, Field, validate

DAG_ID = "pg_minor_upgrade"
ROLLBACK_DAG_ID = "pg_minor_upgrade_rollback"
INSTALL_COMMAND_VARIABLE = "pgupgrade_minor_install_command"


class Installer(enum.StrEnum):
    """How the target release's binaries get in place (param ``installer``; see minor.installers)."""

    BINDIR = "bindir"  # restart from another installation of the same major
    APT = "apt"  # Debian packages of the exact versions, in place
    COMMAND = "command"  # the admin's command, in place


FIELDS: list[Field] = [
    *COMMON,
    *TOPOLOGY,
    Field(
        name="installer",
        type="string",
        default=Installer.BINDIR.value,
        title="Installer",
        description="bindir: restart the cluster from another installation of the same major (new_bindir). apt: "
        "apt-get install postgresql-N=<version> postgresql-client-N=<version> (replaces /usr/lib/postgresql/N "
        "for every cluster of that major on the host). command: the admin's command from the Airflow Variable "
        f"{INSTALL_COMMAND_VARIABLE} (JSON argv list with {{version}}), never from the trigger conf.",
        section="Installer",
        enum=tuple(i.value for i in Installer),
    ),
    Field(
        name="target_version",
        type="string",
        default="",
        title="Target version",
        description="The minor release to run, e.g. 15.20: the same major as the running server, newer unless "
        "allow_downgrade. Installer bindir: may be left empty, the plan takes new_bindir's postgres --version; "
        "when given, it must be new_bindir's version. Required by apt and command.",
        section="Installer",
        kind="version",
    ),
    Field(
        name="new_bindir",
        type="string",
        default="",
        title="New bin directory",
        description="installer bindir only: the bin directory of the target release (its postgres --version is "
        "the target; target_version, when given, must agree).",
        section="Installer",
        kind="abs_path",
    ),
    Field(
        name="min_free_gb",
        type="integer",
        default=20,
        title="Minimum free space (GB)",
        description="Free space the data and the backup filesystems must each keep after the backup.",
        section="Safety",
        minimum=0,
        maximum=1_000_000,
    ),
    Field(
        name="allow_downgrade",
        type="boolean",
        default=False,
        title="Allow downgrade",
        description="Allow a target older than the running release (going back to an earlier minor).",
        section="Safety",
    ),
    Field(
        name="ack_other_clusters",
        type="boolean",
        default=False,
        title="Other clusters acknowledged",
        description="Go ahead although other clusters on the host use the same binaries (apt, command): they run the "
        "new "
        "release after their next restart, and Debian's package scripts restart them on systemd hosts.",
        section="Safety",
    ),
]

ROLLBACK_FIELDS: list[Field] = [
    replace(f, default=DAG_ID) if f.name == "upgrade_dag_id" else f for f in recovery.FIELDS
]

_MINOR_RE = re.compile(r"^\d{1,2}\.\d{1,3}$")


def validate_params(conf: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = dict(validate(FIELDS, conf))
    if not p["target_version"] and p["installer"] != Installer.BINDIR:
        raise ConfigError(
            "target_version",
            f"is required by installer {p['installer']}: the minor release to run, e.g. 15.20 (only installer "
            "bindir takes it from new_bindir)",
        )
    if p["target_version"] and not _MINOR_RE.match(p["target_version"]):
        raise ConfigError("target_version", f"must be major.minor like 15.20, got {p['target_version']!r}")
    if p["installer"] == Installer.BINDIR and not p["new_bindir"]:
        raise ConfigError("new_bindir", "is required by installer bindir: the bin directory of the target release")
    if p["installer"] != Installer.BINDIR and p["new_bindir"]:
        raise ConfigError(
            "new_bindir",
            f"is only for installer bindir; installer {p['installer']} replaces the "
            "binaries of the cluster's own bin directory",
        )
    return p
