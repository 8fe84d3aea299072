"""Before the outage, with the cluster still serving: the backup, the health check with the versions recorded,
the apt download, the extension's queue empty."""

from __future__ import annotations

from typing import Any

from pgupgrade import backup, checks, entities
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed
from pgupgrade.minor import installers
from pgupgrade.minor.fields import Installer
from pgupgrade.minor.plan import MinorPlan, on_old, server_version
from pgupgrade.sql import connect


def fail_on(rows: list[dict[str, Any]], what: str) -> None:
    """Raises CheckFailed naming every failed row of a health check (an empty queue is checked on its own)."""
    failed = [r for r in rows if not r["ok"] and r["check"] != "queue empty"]
    if failed:
        raise CheckFailed(f"{what}: " + "; ".join(f"{r['database']}: {r['check']} ({r['detail']})" for r in failed))


def take_backup(ctx: RunContext) -> dict[str, Any]:
    """Globals + ``pg_dump -Fd`` (compressed) per database, verified readable by ``pg_restore -l``."""
    plan_ = ctx.plan(MinorPlan)
    # no base backup: the data directory stays, a minor release keeps its format
    manifest = backup.take_backup(on_old(ctx, plan_), plan_.backup_dir, plan_.databases, base=False)
    return {k: manifest[k] for k in ("backup_dir", "total_bytes", "databases")}


def pre_checks(ctx: RunContext) -> dict[str, Any]:
    """The health check must pass before anything changes; version() and the extension's reported version are
    recorded (the seed's pg-version-before.txt / ext-version-before.txt)."""
    plan_ = ctx.plan(MinorPlan)
    cur = on_old(ctx, plan_)
    rows = checks.health(cur.cluster, plan_.databases, ctx.profile)
    fail_on(rows, "health check failed before the upgrade (nothing was changed; fix it first)")
    num, text = server_version(cur)
    ext: dict[str, str] = {}
    for db in checks.extension_databases(cur.cluster, plan_.databases, ctx.profile):
        with connect(cur.cluster, db) as conn:
            ext[db] = ctx.profile.reported_version(conn)
    recorded = {"server_version_num": num, "version": text, "extension": ext, "health": rows}
    ctx.state.save("versions_before", recorded)
    return {"version": text, "extension": ext}


def prefetch(ctx: RunContext) -> dict[str, Any]:
    """apt: downloads the target packages now (``apt-get install --download-only``), so that the outage holds
    only their unpacking. Nothing to fetch for the other installers."""
    plan_ = ctx.plan(MinorPlan)
    if plan_.installer is not Installer.APT:
        return {"prefetched": False, "why": f"installer {plan_.installer} has nothing to download"}
    pins = plan_.apt_pins().packages
    res = installers.apt_install(ctx.host, pins, allow_downgrades=ctx.params["allow_downgrade"], download_only=True)
    return {"prefetched": True, "packages": pins, "seconds": round(res.duration_s, 3)}


def queue_empty(ctx: RunContext) -> bool:
    """The extension's queue is empty in every database of the plan."""
    plan_ = ctx.plan(MinorPlan)
    return bool(entities.queue_empty(on_old(ctx, plan_), plan_.databases))
