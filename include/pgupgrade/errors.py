"""Exception hierarchy: every error says what failed and what to do about it."""

from __future__ import annotations


class PgUpgradeError(Exception):
    """Base class of every error raised by the library."""


class ConfigError(PgUpgradeError):
    """Bad input (trigger conf, connection extra, admin config). Raised before any side effect."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class CommandError(PgUpgradeError):
    """A command exited non-zero or timed out."""

    def __init__(self, argv: list[str], exit_code: int | None, stderr: str, stdout: str = "") -> None:
        self.argv = argv
        self.exit_code = exit_code
        self.stderr = stderr
        self.stdout = stdout
        what = "timed out" if exit_code is None else f"exited with code {exit_code}"
        tail = (stderr or stdout).strip()[-2000:]
        super().__init__(f"command {argv[0]!r} {what}: {tail}")


class PlanError(PgUpgradeError):
    """The upgrade cannot go ahead as asked; nothing has been changed."""


class CheckFailed(PgUpgradeError):
    """A validation after a change did not hold (facts differ, health check failed, ...)."""


class LockHeld(PgUpgradeError):
    """Another run holds the per-cluster lock."""


class UnsafeState(PgUpgradeError):
    """Refusing a destructive step because the state on disk does not allow it (re-run on a half-built dir...)."""
