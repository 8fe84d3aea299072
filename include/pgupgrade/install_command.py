"""The install command an admin configures for a runbook that installs by command (the minor release's binaries,
the extension's files): an argv list in an Airflow Variable, never in the trigger conf, naming ``{version}`` so
that the rollback can run the same command for the previous version."""

from __future__ import annotations

import json
from typing import Any

from pgupgrade.errors import ConfigError


def parse_install_command(value: Any, source: str) -> list[str]:
    """The argv list of the command installer, as the admin configured it (JSON list of strings); it must
    name ``{version}`` so that the rollback can run the same command for the previous release."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(source, f"is not valid JSON: {exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise ConfigError(source, f"must be a JSON list of non-empty strings (an argv), got {value!r}")
    if any("\x00" in a for a in value):
        raise ConfigError(source, "contains a NUL byte")
    if not any("{version}" in a for a in value):
        raise ConfigError(
            source, "must contain {version} (the rollback runs the same command for the previous release)"
        )
    return list(value)
