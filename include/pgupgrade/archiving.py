"""WAL archiving and backup tools across a major upgrade.

What a cluster archives with (``archive_mode``, ``archive_command``, ``archive_library``) and which tool that is:
pgBackRest when the archive_command runs ``pgbackrest ... archive-push`` (its ``--stanza``), else a script or
another tool (WAL-G, Barman, ...). The runbook's rules:

- The plan refuses, before any side effect, a pgBackRest on the database host that does not support the target
  major (``pgbackrest version``, table in ``pgupgrade.pgbackrest``).
- Private starts archive nothing (``services.start_private``): a cluster that may still be rolled back never
  pushes WAL into the archive; the old cluster's archive stays valid for it.
- pgBackRest: ``stanza-upgrade`` runs at opening, after every validation (one-way: a rollback before opening
  leaves the repository untouched); after opening ``check`` and a new full backup (``after_open``). Until that
  backup exists there is no point-in-time recovery for the new major: the repository's backups are the old one's.
- Other tools: an admin hook (Variable ``pgupgrade_hooks``, key ``archiving``: an argv) runs on the database host
  after opening with the new cluster in its environment; its exit status is recorded, a failure alerts and never
  rolls an opened cluster back.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from pgupgrade import pgbackrest, versions
from pgupgrade.cluster import Cluster
from pgupgrade.commands import BASE_ENV, Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CommandError, PlanError
from pgupgrade.sql import connect, fetch_named, scalar_named

log = logging.getLogger(__name__)

HOOK = "archiving"  # key of the admin hook in Variable pgupgrade_hooks
BACKUP_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class Archiving:
    mode: str = "off"
    command: str = ""
    library: str = ""

    @property
    def active(self) -> bool:
        return self.mode in ("on", "always") and bool(self.command or self.library)

    @property
    def pgbackrest(self) -> pgbackrest.Invocation | None:
        if not self.active or self.library:
            return None
        return pgbackrest.from_archive_command(self.command)

    @property
    def tool(self) -> str:
        if not self.active:
            return "none"
        if self.library:
            return f"archive_library {self.library}"
        return "pgbackrest" if self.pgbackrest else "script/other"

    def as_dict(self) -> dict[str, Any]:
        inv = self.pgbackrest
        return {**asdict(self), "tool": self.tool, "stanza": inv.stanza if inv else None}


def running(cluster: Cluster) -> Archiving:
    """What the running server archives with."""
    with connect(cluster) as conn:
        row = fetch_named(conn, "archive-settings")[0]
    return Archiving(row["archive_mode"], row["archive_command"], row["archive_library"])


def configured(cluster: Cluster) -> Archiving:
    """What the cluster's configuration files set (what a start without private options archives with)."""
    with connect(cluster) as conn:
        rows = fetch_named(conn, "archive-settings-configured")
    values = {r["name"]: r["setting"] for r in rows}  # ordered by seqno: the last one wins
    return Archiving(
        values.get("archive_mode", "off"), values.get("archive_command", ""), values.get("archive_library", "")
    )


def pgbackrest_version(host: Host, inv: pgbackrest.Invocation, user: str) -> tuple[int, int, int]:
    res = host.run([inv.program, "version"], user=user, timeout=60)
    return pgbackrest.parse_version(res.stdout)


def plan_check(ctx: RunContext, to_major: int, new_datadir: str, warnings: list[str]) -> Archiving:
    """Part of the plan (no side effects): refuses a pgBackRest that cannot serve the target major, or whose
    stanza the archive_command does not name; adds what the run will do about archiving to ``warnings``."""
    arch = running(ctx.cluster)
    inv = arch.pgbackrest
    if inv is not None:
        if not inv.stanza:
            raise PlanError(
                f"the cluster archives with pgBackRest (archive_command {arch.command!r}) without --stanza: the "
                "upgrade must run stanza-upgrade for that stanza at opening; name it in archive_command"
            )
        try:
            version = pgbackrest_version(ctx.host, inv, ctx.cluster.os_user)
        except (CommandError, ValueError) as exc:
            raise PlanError(f"the cluster archives with pgBackRest but `{inv.program} version` failed: {exc}") from None
        why = pgbackrest.unsupported(version, to_major)
        if why:
            raise PlanError(
                f"the cluster archives with pgBackRest (stanza {inv.stanza}) and {why}; install it on "
                f"{ctx.host.name} before the upgrade (the new cluster's archive-push, stanza-upgrade and backups "
                "run with it)"
            )
        warnings.append(
            f"archiving: pgBackRest {pgbackrest.show(version)}, stanza {inv.stanza}: stanza-upgrade runs at opening; "
            f"the configuration's pg1-path must name {new_datadir} by then (archive-push reads that cluster); "
            "a full backup follows opening: no point-in-time recovery for the new major until it exists"
        )
    elif arch.active:
        warnings.append(
            f"archiving with {arch.tool}: nothing is archived before opening; then the '{HOOK}' hook runs "
            "(Variable pgupgrade_hooks) if configured: no point-in-time recovery for the new major until a base "
            "backup of the new cluster exists"
        )
    return arch


def upgrade_stanza(ctx: RunContext, new: Cluster) -> dict[str, Any] | None:
    """At opening, after every validation: ``pgbackrest stanza-upgrade`` for the new cluster (offline: it reads
    its pg_control), so that its WAL is archived from its first public start. One-way: never run before.
    None when the new cluster's configuration does not archive with pgBackRest."""
    inv = configured(new).pgbackrest
    if inv is None:
        return None
    argv = stanza_upgrade_argv(inv, new.datadir)
    ctx.state.record("archive_stanza_upgrade_started", stanza=inv.stanza)
    res = ctx.host.run(argv, user=new.os_user, timeout=600)
    ctx.state.record("archive_stanza_upgraded", stanza=inv.stanza, seconds=round(res.duration_s, 3))
    return {"stanza": inv.stanza, "seconds": res.duration_s}


def stanza_upgrade_argv(inv: pgbackrest.Invocation, datadir: str) -> list[str]:
    return inv.argv("stanza-upgrade", "--no-online", pg1_path=datadir)


def check_argv(inv: pgbackrest.Invocation, datadir: str) -> list[str]:
    return inv.argv("check", pg1_path=datadir)


def full_backup_argv(inv: pgbackrest.Invocation, datadir: str) -> list[str]:
    return inv.argv("backup", "--type=full", pg1_path=datadir)


def hook_env(new: Cluster, major: int) -> dict[str, str]:
    """The hook's environment: the new cluster (libpq variables, its major, bin and data directories) and its
    programs first in PATH."""
    return {
        **new.libpq_env("postgres"),
        "PATH": f"{new.bindir}:{BASE_ENV['PATH']}",
        "PGUPGRADE_NEW_MAJOR": str(major),
        "PGUPGRADE_NEW_BINDIR": new.bindir,
        "PGUPGRADE_NEW_DATADIR": new.datadir,
    }


def after_open(ctx: RunContext, new: Cluster, hook: list[str] | None, hook_error: str | None = None) -> dict[str, Any]:
    """After opening: pgBackRest ``check`` and a full backup, or the admin's archiving hook (``hook_error``: why
    its configuration could not be read). Never raises for a failed command or a misconfigured hook (the cluster
    is open: a rollback would lose the clients' writes): the result says ``needs_attention`` and why, saved as
    the run's ``archiving`` state for the report."""
    arch = running(new)
    with connect(new) as conn:
        major = versions.Version.from_num(int(scalar_named(conn, "server-version-num"))).major
    out: dict[str, Any] = {**arch.as_dict(), "major": major, "needs_attention": False}
    inv = arch.pgbackrest
    if not arch.active:
        out["summary"] = "the cluster does not archive WAL: nothing to do"
    elif inv is not None:
        out.update(_pgbackrest_after_open(ctx, new, inv, major))
    elif hook_error is not None:
        out["summary"] = (
            f"the '{HOOK}' hook is misconfigured ({hook_error}): nothing ran; no point-in-time recovery for "
            f"PostgreSQL {major} until a base backup of the new cluster exists"
        )
        out["needs_attention"] = True
    elif hook is not None:
        out.update(_run_hook(ctx, new, hook, major))
    else:
        out["summary"] = (
            f"archiving with {arch.tool} and no '{HOOK}' hook configured (Variable pgupgrade_hooks): no "
            f"point-in-time recovery for PostgreSQL {major} until you take a base backup of the new cluster"
        )
        out["needs_attention"] = True
    ctx.state.save("archiving", out)
    ctx.state.record("archiving_after_open", tool=out["tool"], needs_attention=out["needs_attention"])
    (log.warning if out["needs_attention"] else log.info)("archiving: %s", out["summary"])
    return out


def _pgbackrest_after_open(ctx: RunContext, new: Cluster, inv: pgbackrest.Invocation, major: int) -> dict[str, Any]:
    out: dict[str, Any] = {"check": None, "full_backup": None}
    for key, argv, timeout in (
        ("check", check_argv(inv, new.datadir), 600.0),
        ("full_backup", full_backup_argv(inv, new.datadir), float(BACKUP_TIMEOUT_S)),
    ):
        try:
            res = ctx.host.run(argv, user=new.os_user, timeout=timeout)
        except CommandError as exc:
            out[key] = {"ok": False, "error": str(exc)[-2000:]}
            out["needs_attention"] = True
            out["summary"] = (
                f"pgBackRest {key.replace('_', ' ')} failed after opening (stanza {inv.stanza}): no point-in-time "
                f"recovery for PostgreSQL {major} until a full backup of the new cluster exists; fix it and run "
                f"`{' '.join(full_backup_argv(inv, new.datadir))}`"
            )
            return out
        out[key] = {"ok": True, "seconds": round(res.duration_s, 3)}
        ctx.state.record(f"archive_{key}", stanza=inv.stanza, seconds=round(res.duration_s, 3))
    out["summary"] = (
        f"pgBackRest stanza {inv.stanza}: check passed and a full backup of the new cluster exists: point-in-time "
        f"recovery for PostgreSQL {major} from that backup on (none before it)"
    )
    return out


def _run_hook(ctx: RunContext, new: Cluster, hook: list[str], major: int) -> dict[str, Any]:
    """The admin's hook, as the runner's login user on the database host (a tool's own user: ``runuser`` or
    ``sudo`` in the argv)."""
    try:
        res = ctx.host.run(hook, env=hook_env(new, major), timeout=3600, check=False)
    except CommandError as exc:  # timed out, or the program is missing
        code, tail = exc.exit_code, str(exc)[-2000:]
    else:
        code, tail = res.exit_code, (res.stderr or res.stdout)[-2000:]
    ctx.state.record("archive_hook", exit_code=code)
    ok = code == 0
    return {
        "hook": {"argv": hook, "exit_code": code, "output_tail": tail},
        "needs_attention": not ok,
        "summary": (
            f"the '{HOOK}' hook ran (exit 0): it is the hook's part to take the base backup without which there "
            f"is no point-in-time recovery for PostgreSQL {major}"
            if ok
            else f"the '{HOOK}' hook failed (exit {code}): no point-in-time recovery for PostgreSQL {major} until "
            "a base backup of the new cluster exists"
        ),
    }
