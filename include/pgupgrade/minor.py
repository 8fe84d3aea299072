"""The minor-version runbook ("PostgreSQL Minor Version Upgrade"), one function per DAG task, and its rollback.

Phases: plan (no side effects) → pre-upgrade (backup, health check, versions recorded, queue empty) → stop
(block logins, wait for clients, facts snapshot, clean stop) → install (bindir | apt | command) and start →
validate (version, facts, health, TVIEWs refreshed, smoke test) → open to clients → report.

Every destructive step journals before it acts. The plan records the release the cluster runs before the
upgrade — version, ``version()`` text, the bin directory the postmaster really runs from, the Debian package
versions, the rendered install command — and the rollback goes back to exactly that, reading it from the
run's state: never from the Airflow connection (whose ``pg_bindir`` still names the old bin directory after a
minor upgrade by bin directory) nor from the trigger conf.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pgupgrade import (
    backup,
    checks,
    clients,
    entities,
    facts,
    installers,
    recovery,
    scratch,
    services,
    versions,
)
from pgupgrade.cluster import Service
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, CommandError, ConfigError, PlanError, UnsafeState
from pgupgrade.params import COMMON, Field, validate
from pgupgrade.scratch import exists, log_tail
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

log = logging.getLogger(__name__)

DAG_ID = "pg_minor_upgrade"
ROLLBACK_DAG_ID = "pg_minor_upgrade_rollback"
INSTALL_COMMAND_VARIABLE = "pgupgrade_minor_install_command"
OUTAGE_ESTIMATE_S = {"bindir": 10.0, "apt": 90.0, "command": 60.0}  # stop, install, start, validate

FIELDS: list[Field] = [
    *COMMON,
    Field(
        "installer",
        "string",
        "bindir",
        "Installer",
        "bindir: restart the cluster from another installation of the same major (new_bindir). apt: "
        "apt-get install postgresql-N=<version> postgresql-client-N=<version> (replaces /usr/lib/postgresql/N "
        "for every cluster of that major on the host). command: the admin's command from the Airflow Variable "
        f"{INSTALL_COMMAND_VARIABLE} (JSON argv list with {{version}}), never from the trigger conf.",
        "Installer",
        enum=installers.INSTALLERS,
    ),
    Field(
        "target_version",
        "string",
        "",
        "Target version",
        "The minor release to run, e.g. 15.20: the same major as the running server, newer unless allow_downgrade.",
        "Installer",
        kind="version",
    ),
    Field(
        "new_bindir",
        "string",
        "",
        "New bin directory",
        "installer bindir only: the bin directory of the target release (its postgres --version must be the target).",
        "Installer",
        kind="abs_path",
    ),
    Field(
        "min_free_gb",
        "integer",
        20,
        "Minimum free space (GB)",
        "Free space the data and the backup filesystems must each keep after the backup.",
        "Safety",
        minimum=0,
        maximum=1_000_000,
    ),
    Field(
        "allow_downgrade",
        "boolean",
        False,
        "Allow downgrade",
        "Allow a target older than the running release (going back to an earlier minor).",
        "Safety",
    ),
    Field(
        "ack_other_clusters",
        "boolean",
        False,
        "Other clusters acknowledged",
        "Go ahead although other clusters on the host use the same binaries (apt, command): they run the new "
        "release after their next restart, and Debian's package scripts restart them on systemd hosts.",
        "Safety",
    ),
]

ROLLBACK_FIELDS: list[Field] = [
    replace(f, default=DAG_ID) if f.name == "upgrade_dag_id" else f for f in recovery.FIELDS
]

_MINOR_RE = re.compile(r"^\d{1,2}\.\d{1,3}$")


def validate_params(conf: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = dict(validate(FIELDS, conf))
    if not p["target_version"]:
        raise ConfigError("target_version", "is required: the minor release to run, e.g. 15.20")
    if not _MINOR_RE.match(p["target_version"]):
        raise ConfigError("target_version", f"must be major.minor like 15.20, got {p['target_version']!r}")
    if p["installer"] == "bindir" and not p["new_bindir"]:
        raise ConfigError("new_bindir", "is required by installer bindir: the bin directory of the target release")
    if p["installer"] != "bindir" and p["new_bindir"]:
        raise ConfigError(
            "new_bindir",
            f"is only for installer bindir; installer {p['installer']} replaces the "
            "binaries of the cluster's own bin directory",
        )
    return p


# -- helpers ------------------------------------------------------------------------------------------


def with_bindir(ctx: RunContext, bindir: str) -> RunContext:
    """The same run context with the cluster's binaries taken from bindir."""
    return replace(ctx, cluster=ctx.cluster.with_installation(bindir))


def before(ctx: RunContext, plan_: dict[str, Any]) -> RunContext:
    """The cluster as it runs before the upgrade: the bin directory the plan found the postmaster running from."""
    return with_bindir(ctx, plan_["old"]["bindir"])


def after(ctx: RunContext, plan_: dict[str, Any]) -> RunContext:
    """The cluster on the target release (for apt and command the same bin directory, new binaries)."""
    return with_bindir(ctx, plan_["new"]["bindir"])


def _server_version(ctx: RunContext) -> tuple[int, str]:
    with connect(ctx.cluster) as conn:
        return int(scalar(conn, "SHOW server_version_num")), str(scalar(conn, "SELECT version()"))


def _fail_on(rows: list[dict[str, Any]], what: str) -> None:
    failed = [r for r in rows if not r["ok"] and r["check"] != "queue empty"]
    if failed:
        raise CheckFailed(f"{what}: " + "; ".join(f"{r['database']}: {r['check']} ({r['detail']})" for r in failed))


# -- plan -----------------------------------------------------------------------------------------------


def plan(ctx: RunContext, install_command: Any = None) -> dict[str, Any]:
    """No side effects: the target is the same major and newer (older only with allow_downgrade); the
    installer can deliver exactly the target (and the rollback the running release); space; other clusters.

    install_command: the admin's configuration for installer command (the Airflow Variable's JSON)."""
    p, c, host = ctx.params, ctx.cluster, ctx.host
    target = versions.Version.parse(p["target_version"])
    num, version_text = _server_version(ctx)
    running = versions.Version.from_num(num)
    if running.major != target.major:
        raise PlanError(
            f"a minor upgrade stays within one major: the server runs {running}, the target is {target}"
            f" (use the pg{running.major}_to_pg{target.major}_upgrade DAG for a major upgrade)"
        )
    if running == target:
        return {"already_upgraded": True, "running": str(running), "reason": f"the cluster already runs {running}"}
    if target < running and not p["allow_downgrade"]:
        raise PlanError(
            f"the target {target} is older than the running {running}: set allow_downgrade=true to go "
            "back to an earlier minor release"
        )
    warnings: list[str] = []
    bindir_now = installers.current_bindir(host, c)
    if bindir_now != c.bindir:
        warnings.append(
            f"the connection's pg_bindir is {c.bindir}, but the server runs from {bindir_now}: this run "
            "uses the latter; update the connection"
        )
    dbs = facts.user_databases(c)
    installer = p["installer"]
    apt_info: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    others: list[str] = []
    if installer == "bindir":
        new_bindir = _plan_bindir(ctx, target, dbs)
    elif installer == "apt":
        new_bindir = bindir_now
        apt_info = _plan_apt(ctx, bindir_now, running, target)
    else:
        new_bindir = bindir_now
        argv = (
            installers.parse_install_command(install_command, f"Variable {INSTALL_COMMAND_VARIABLE}")
            if (install_command is not None)
            else None
        )
        if argv is None:
            raise ConfigError(
                "installer",
                f"installer command needs the Airflow Variable {INSTALL_COMMAND_VARIABLE}: "
                "a JSON argv list naming {version}, set by an admin",
            )
        command = {
            "argv": argv,
            "install": installers.render_command(argv, str(target)),
            "rollback": installers.render_command(argv, str(running)),
        }
    if installer in ("apt", "command"):
        others = installers.other_clusters(host, c, running.major, bindir_now)
        if others and not p["ack_other_clusters"]:
            raise PlanError(
                "other clusters on this host use the same binaries, which the upgrade replaces: "
                + "; ".join(others)
                + " (they run the new release after their next restart; Debian's "
                "package scripts restart them on systemd hosts): set ack_other_clusters=true to go ahead"
            )
    with connect(c) as conn:
        data_bytes = sum(int(scalar(conn, "SELECT pg_database_size(%s)", (d,))) for d in dbs)
    backup_dir = p["backup_dir"] or backup.default_dir(ctx.state.root, c.name, ctx.run_id)
    space = _check_space(ctx, backup_dir, data_bytes)
    return {
        "already_upgraded": False,
        "installer": installer,
        "old": {
            "version": str(running),
            "version_num": num,
            "version_text": version_text,
            "bindir": bindir_now,
            "datadir": c.datadir,
        },
        "new": {"version": str(target), "version_num": _num(target), "bindir": new_bindir, "datadir": c.datadir},
        "connection_bindir": c.bindir,
        "method": f"minor {'downgrade' if target < running else 'upgrade'} ({installer})",
        "transfer_mode": None,
        "method_reason": _method_reason(installer, running, target, new_bindir),
        "apt": apt_info,
        "command": command,
        "other_clusters": others,
        "databases": dbs,
        "data_bytes": data_bytes,
        "initdb": scratch.matching_options(c).__dict__,  # for a restore from the backup by the rollback
        "backup_dir": backup_dir,
        "space": space,
        "warnings": warnings,
        "outage_estimate_s": OUTAGE_ESTIMATE_S[installer],
    }


def _num(v: versions.Version) -> int:
    return int(v.major) * 10000 + int(v.minor)


def _method_reason(installer: str, running: versions.Version, target: versions.Version, bindir: str) -> str:
    if installer == "bindir":
        return f"restart the data directory from {bindir} ({target}); the {running} installation stays for a rollback"
    if installer == "apt":
        return f"Debian packages {running} → {target} in place; the rollback reinstalls {running}"
    return f"the admin's install command for {target}; the rollback runs it for {running}"


def _plan_bindir(ctx: RunContext, target: versions.Version, dbs: list[str]) -> str:
    c, host, new_bindir = ctx.cluster, ctx.host, ctx.params["new_bindir"]
    if c.service != "pg_ctl":
        raise PlanError(
            f"installer bindir restarts the cluster with pg_ctl from another bin directory; service "
            f"{c.service!r} decides the binaries itself: use installer apt or command"
        )
    if not exists(host, f"{new_bindir}/postgres"):
        raise PlanError(f"new_bindir {new_bindir} has no postgres program: PostgreSQL {target} is not installed there")
    new_inst = versions.inspect(new_bindir, host)
    if new_inst.major != target.major:
        raise PlanError(
            f"new_bindir {new_bindir} is PostgreSQL {new_inst.version}, another major than the target "
            f"{target}: a major upgrade needs pg_upgrade (pg{target.major}_to_pg{new_inst.major}_upgrade)"
        )
    if new_inst.version != target:
        raise PlanError(f"new_bindir {new_bindir} is PostgreSQL {new_inst.version}, not the target {target}")
    missing = checks.missing_extensions(c, dbs, new_inst, host)
    if missing:
        raise PlanError(f"the {target} installation lacks extensions the cluster uses: " + "; ".join(missing))
    return str(new_inst.bindir)


def _plan_apt(ctx: RunContext, bindir_now: str, running: versions.Version, target: versions.Version) -> dict[str, Any]:
    host = ctx.host
    deb_bindir = installers.debian_bindir(running.major)
    if installers.realpath(host, bindir_now) != installers.realpath(host, deb_bindir):
        raise PlanError(
            f"installer apt replaces {deb_bindir}; this cluster runs from {bindir_now}: use installer bindir or command"
        )
    to: dict[str, str] = {}
    back: dict[str, str] = {}
    installed: dict[str, str | None] = {}
    for pkg in installers.debian_packages(running.major):
        pol = installers.apt_policy(host, pkg)
        installed[pkg] = pol.installed
        if pol.installed is None:
            raise PlanError(
                f"package {pkg} is not installed: installer apt upgrades the packages the cluster runs from"
            )
        wanted = pol.matching(str(target))
        if not wanted:
            raise PlanError(
                f"apt-cache policy {pkg} lists no {target} (it knows {', '.join(pol.versions) or 'none'}):"
                " run apt-get update, or add the repository that has it"
            )
        to_v = pol.candidate if pol.candidate in wanted else wanted[0]
        if to_v != pol.installed and not pol.downloadable(to_v):
            raise PlanError(f"no repository offers {pkg} {to_v}")
        prev = pol.matching(str(running))
        back_v = pol.installed if pol.installed in prev else (prev[0] if prev else None)
        if back_v is None or not pol.downloadable(back_v):
            raise PlanError(
                f"the rollback could not reinstall {pkg} {running}: no repository offers it any more "
                f"(apt-cache policy {pkg}); keep its .deb files in a local repository first"
            )
        to[pkg], back[pkg] = to_v, back_v
    return {"packages": to, "previous_packages": back, "installed_before": installed}


def _check_space(ctx: RunContext, backup_dir: str, data_bytes: int) -> dict[str, Any]:
    host, datadir = ctx.host, ctx.cluster.datadir
    min_free = ctx.params["min_free_gb"] * 2**30
    need_backup = int(data_bytes * 1.1)  # a compressed directory dump is smaller: an upper bound
    free_data = checks.free_bytes(host, datadir)
    free_backup = checks.free_bytes(host, backup_dir)
    same = checks.same_filesystem(host, datadir, backup_dir)
    gb = 2**30
    short: list[str] = []
    if same:
        if free_data - need_backup < min_free:
            short.append(
                f"the data directory and the backup share a filesystem with {free_data / gb:.1f} GB free; "
                f"after a backup of up to {need_backup / gb:.2f} GB it must keep {min_free / gb:.0f} GB"
            )
    else:
        if free_data < min_free:
            short.append(
                f"{free_data / gb:.1f} GB free for the data directory {datadir}, min_free_gb is {min_free / gb:.0f}"
            )
        if free_backup - need_backup < min_free:
            short.append(
                f"{free_backup / gb:.1f} GB free for the backup in {backup_dir}; after a backup of up to "
                f"{need_backup / gb:.2f} GB it must keep {min_free / gb:.0f} GB"
            )
    if short:
        raise PlanError("not enough free space: " + "; ".join(short) + " (min_free_gb)")
    return {
        "free_data": free_data,
        "free_backup": free_backup,
        "need_backup": need_backup,
        "min_free": min_free,
        "same_filesystem": same,
    }


# -- pre-upgrade ----------------------------------------------------------------------------------------


def take_backup(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """Globals + ``pg_dump -Fd`` (compressed) per database, verified readable by ``pg_restore -l``."""
    manifest = backup.take_backup(before(ctx, plan_), plan_)
    return {k: manifest[k] for k in ("backup_dir", "total_bytes", "databases")}


def pre_checks(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """The health check must pass before anything changes; version() and the extension's reported version are
    recorded (the seed's pg-version-before.txt / ext-version-before.txt)."""
    cur = before(ctx, plan_)
    rows = checks.health(cur.cluster, plan_["databases"], ctx.profile)
    _fail_on(rows, "health check failed before the upgrade (nothing was changed; fix it first)")
    num, text = _server_version(cur)
    ext: dict[str, str] = {}
    for db in checks.extension_databases(cur.cluster, plan_["databases"], ctx.profile):
        with connect(cur.cluster, db) as conn:
            ext[db] = ctx.profile.reported_version(conn)
    recorded = {"server_version_num": num, "version": text, "extension": ext, "health": rows}
    ctx.state.save("versions_before", recorded)
    return {"version": text, "extension": ext}


def prefetch(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """apt: downloads the target packages now (``apt-get install --download-only``), so that the outage holds
    only their unpacking. Nothing to fetch for the other installers."""
    if plan_["installer"] != "apt":
        return {"prefetched": False, "why": f"installer {plan_['installer']} has nothing to download"}
    pins = plan_["apt"]["packages"]
    res = installers.apt_install(ctx.host, pins, allow_downgrades=ctx.params["allow_downgrade"], download_only=True)
    return {"prefetched": True, "packages": pins, "seconds": round(res.duration_s, 3)}


def queue_empty(ctx: RunContext, plan_: dict[str, Any]) -> bool:
    return bool(entities.queue_empty(before(ctx, plan_), plan_["databases"]))


# -- stop -----------------------------------------------------------------------------------------------


def stop_server(ctx: RunContext, plan_: dict[str, Any]) -> None:
    """Clean (fast) shutdown, confirmed down (journal: old_stop_requested, old_stopped)."""
    services.stop_old(before(ctx, plan_))


# -- install and start ------------------------------------------------------------------------------------


def _stop_if_started(ctx: RunContext, why: str) -> bool:
    """Package scripts (Debian's postinst on systemd hosts) or an admin command may start the cluster: stop it
    again so that the run starts it itself and checks what it starts."""
    svc = Service(ctx.cluster, ctx.host)
    if installers.postmaster_pid(ctx.host, ctx.cluster) is not None and svc.is_running():
        ctx.state.record("stopped_again", why=why)
        svc.stop("fast")
        return True
    return False


def install(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """Puts the target release's binaries in place: nothing to install for bindir (the switch is recorded),
    apt-get install of the exact package versions, or the admin's command."""
    installer, host = plan_["installer"], ctx.host
    old_ctx, new_ctx = before(ctx, plan_), after(ctx, plan_)
    if not ctx.state.happened("old_stopped") or Service(old_ctx.cluster, host).is_running():
        raise UnsafeState("refusing to change the binaries of a running server: the stop step did not finish")
    result: dict[str, Any] = {"installer": installer}
    if installer == "bindir":
        ctx.state.record("bindir_switch", previous=plan_["old"]["bindir"], new=plan_["new"]["bindir"])
    elif installer == "apt":
        apt = plan_["apt"]
        ctx.state.record(
            "install_started",
            installer="apt",
            packages=apt["packages"],
            previous_packages=apt["previous_packages"],
            previous_version=plan_["old"]["version"],
        )
        res = installers.apt_install(host, apt["packages"], allow_downgrades=ctx.params["allow_downgrade"])
        ctx.state.record("install_done", seconds=round(res.duration_s, 3))
        result["stopped_again"] = _stop_if_started(new_ctx, "the package scripts started the cluster")
        result["apt_output_tail"] = res.stdout[-3000:]
    else:
        ctx.state.record(
            "install_started",
            installer="command",
            argv=plan_["command"]["install"],
            previous_version=plan_["old"]["version"],
        )
        res = installers.run_install_command(host, plan_["command"]["argv"], plan_["new"]["version"])
        ctx.state.record("install_done", seconds=round(res.duration_s, 3))
        result["stopped_again"] = _stop_if_started(new_ctx, "the install command started the cluster")
        result["output_tail"] = (res.stdout + res.stderr)[-3000:]
    got = versions.inspect(plan_["new"]["bindir"], host).version
    if str(got) != plan_["new"]["version"]:
        raise CheckFailed(
            f"after the install, {plan_['new']['bindir']}/postgres is PostgreSQL {got}, not the "
            f"target {plan_['new']['version']}"
        )
    result["binaries"] = str(got)
    return result


def _start(ctx: RunContext, what: str) -> None:
    svc = Service(ctx.cluster, ctx.host)
    try:
        svc.start()
    except (CommandError, CheckFailed) as exc:
        tail = log_tail(ctx.host, svc, 30)
        raise CheckFailed(
            f"{what} did not start from {ctx.cluster.bindir}: {exc}" + (f"\nserver log:\n{tail}" if tail else "")
        ) from exc


def start_new(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """Starts the cluster on the target release (pg_isready polling, no sleeps); the extension must load and
    report the version it reported before."""
    new_ctx = after(ctx, plan_)
    ctx.state.record("new_start_requested", bindir=plan_["new"]["bindir"])
    _start(new_ctx, f"PostgreSQL {plan_['new']['version']}")
    ctx.state.record("new_public_start", bindir=plan_["new"]["bindir"])
    _num_now, text = _server_version(new_ctx)
    ext_before = (ctx.state.load("versions_before") or {}).get("extension", {})
    loaded: dict[str, str] = {}
    for db, version in ext_before.items():
        with connect(new_ctx.cluster, db) as conn:
            loaded[db] = ctx.profile.reported_version(conn)
        if loaded[db] != version:
            raise CheckFailed(f"{db}: {ctx.profile.extname} reports {loaded[db]} after the restart, {version} before")
    return {"version": text, "extension": loaded}


# -- validate and open ------------------------------------------------------------------------------------


def validate_facts(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """version() is the target; databases, roles, row counts (and checksums if asked), extension versions and
    the extension's metadata count equal the snapshot taken before the stop."""
    new_ctx = after(ctx, plan_)
    facts_before = ctx.state.load("facts_before")
    now = facts.snapshot(new_ctx.cluster, content=ctx.params["verify_content"])
    now["extension"] = entities.extension_facts(new_ctx.cluster, plan_["databases"], new_ctx)
    ctx.state.save("facts_after", now)
    if now["server_version_num"] != plan_["new"]["version_num"]:
        raise CheckFailed(f"the server runs {now['server_version']}, not the target {plan_['new']['version']}")
    diffs = facts.compare(facts_before, now, same_extension_versions=True)
    for db, ext in facts_before.get("extension", {}).items():
        rows_now = now["extension"].get(db, {}).get("metadata_rows")
        if rows_now != ext["metadata_rows"]:
            diffs.append(f"{db}: {ext['metadata_rows']} {ctx.profile.metadata_table} rows before, {rows_now} after")
    if diffs:
        raise CheckFailed("facts differ after the upgrade: " + "; ".join(diffs[:20]))
    return {"server_version": now["server_version"], "tables": facts.table_count(now)}


def health_check(ctx: RunContext, plan_: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = list(checks.health(after(ctx, plan_).cluster, plan_["databases"], ctx.profile))
    _fail_on(rows, "health check failed after the upgrade")
    return rows


def refresh_tviews(ctx: RunContext, plan_: dict[str, Any]) -> int:
    new_ctx = after(ctx, plan_)
    return int(entities.refresh_all(new_ctx, new_ctx.cluster, plan_["databases"]))


def smoke_test(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """Per extension database: a change to each backing table reaches the queue (inside a transaction that is
    rolled back), no metadata row has last_error, the queue is empty."""
    new_ctx = after(ctx, plan_)
    out: dict[str, Any] = {}
    errors: list[str] = []
    for db in checks.extension_databases(new_ctx.cluster, plan_["databases"], ctx.profile):
        with connect(new_ctx.cluster, db, autocommit=True) as conn:
            not_firing = ctx.profile.trigger_fires(conn)
            problems = ctx.profile.problems(conn)
            queue = ctx.profile.queue_size(conn)
        errors += [f"{db}: {e}" for e in not_firing + problems]
        if queue:
            errors.append(f"{db}: {queue} entries in the queue")
        out[db] = {"triggers_fire": not not_firing, "problems": problems, "queue": queue}
    if errors:
        raise CheckFailed("smoke test failed: " + "; ".join(errors))
    return out


def open_to_clients(ctx: RunContext, plan_: dict[str, Any]) -> list[str]:
    roles = ctx.state.load("blocked_roles", [])
    checks.unblock_logins(after(ctx, plan_).cluster, roles)
    ctx.state.record("opened", roles=roles)
    return list(roles)


def cutover_steps() -> list[tuple[str, Callable[[RunContext, dict[str, Any]], Any]]]:
    """The outage-critical section, run in one task process (as in the major upgrade): every step journaled
    under its own name."""
    return [
        ("terminate_clients", lambda ctx, p: clients.terminate_clients(before(ctx, p), p)),
        ("snapshot_facts", lambda ctx, p: entities.snapshot_before(before(ctx, p), p)),
        ("stop_server", stop_server),
        ("install", install),
        ("start_new", start_new),
        ("validate_facts", validate_facts),
        ("health_check", health_check),
        ("smoke_test", smoke_test),
        ("open_to_clients", open_to_clients),
    ]


def write_report(ctx: RunContext, status: str) -> dict[str, str]:
    from pgupgrade import report

    plan_ = ctx.state.load("plan") or {}
    pre = ctx.state.load("versions_before") or {}
    extra: dict[str, Any] = {"version_before": pre.get("version")}
    post = ctx.state.load("facts_after")
    if post:
        extra["version_after"] = post.get("server_version")
    if plan_.get("installer") == "bindir" and ctx.state.happened("opened"):
        conn_extra = {**ctx.cluster.to_extra(), "pg_bindir": plan_["new"]["bindir"]}
        extra["next_steps"] = (
            f"the cluster now runs from {plan_['new']['bindir']}: set the extra of Airflow "
            f"connection {ctx.params['postgres_conn_id']} to {json.dumps(conn_extra, sort_keys=True)}"
            f"; keep {plan_['old']['bindir']} installed until no rollback is wanted"
        )
    rep = report.build(ctx.state, status=status, extra=extra)
    json_path, md_path = report.write(ctx.state, rep)
    log.info("report: %s", md_path)
    return {"json": str(json_path), "markdown": str(md_path)}


# -- rollback -----------------------------------------------------------------------------------------------


def upgrade_state(rc: RunContext) -> RunState:
    return RunState.for_run(rc.params["upgrade_dag_id"], rc.params["upgrade_run_id"], rc.state.root)


def _upgrade_plan(rc: RunContext) -> dict[str, Any]:
    plan_: dict[str, Any] = upgrade_state(rc).load("plan") or {}
    return plan_


def rollback_assess(rc: RunContext) -> dict[str, Any]:
    """The path, from the upgrade run's journal: ``nothing`` (no plan: it changed nothing), ``never_stopped``
    (give logins back), ``previous_release`` (back to the recorded release through the same installer)."""
    up = upgrade_state(rc)
    if not up.dir.exists():
        raise ConfigError("upgrade_run_id", f"no state for {up.dag_id} run {up.run_id!r}")
    plan_ = up.load("plan")
    if not plan_ or plan_.get("already_upgraded"):
        decision = {"path": "nothing", "why": "the upgrade run stopped before it changed anything"}
    elif not up.happened("old_stop_requested"):
        decision = {"path": "never_stopped", "why": "the server was never stopped: logins are given back"}
    else:
        old = plan_["old"]
        decision = {
            "path": "previous_release",
            "why": f"the server was stopped: back to PostgreSQL {old['version']} from {old['bindir']} "
            f"(installer {plan_['installer']}), as recorded by the upgrade run",
        }
    if up.happened("opened"):
        decision["why"] += (
            "; clients were let in after the upgrade: logins are blocked again, and their writes "
            "are kept (a minor release keeps the data format)"
        )
    rc.state.save("decision", decision)
    log.info("rollback path: %s, because %s", decision["path"], decision["why"])
    return decision


def _running(ctx: RunContext) -> bool:
    """Whether a postmaster runs on the data directory (also while the bin directory lacks pg_ctl, e.g. during a
    half-done package install)."""
    pid = installers.postmaster_pid(ctx.host, ctx.cluster)
    if pid is None:
        return False
    if exists(ctx.host, ctx.cluster.bin("pg_ctl")):
        return bool(Service(ctx.cluster, ctx.host).is_running())
    res = ctx.host.run(["kill", "-0", str(pid)], user=ctx.cluster.os_user, check=False, timeout=30)
    return bool(res.exit_code == 0)


def back_to_previous(rc: RunContext) -> dict[str, Any]:
    """Stops the cluster if it runs, puts the recorded previous release back through the same installer,
    checks its binaries, and starts the data directory with them. A data directory that does not start is
    recorded (``start.started = false``) for the restore branch, not raised."""
    decision = rc.state.load("decision")
    up, plan_ = upgrade_state(rc), _upgrade_plan(rc)
    if decision["path"] == "nothing":
        rc.state.save("start", {"started": True})
        return {"path": "nothing"}
    prev = before(rc, plan_)
    if decision["path"] == "never_stopped":
        if not _running(prev):
            rc.state.record("previous_start_requested", bindir=prev.cluster.bindir)
            _start(prev, f"PostgreSQL {plan_['old']['version']}")
        rc.state.save("start", {"started": True})
        return {"path": "never_stopped"}
    new = after(rc, plan_)
    running_ctx = new if exists(rc.host, new.cluster.bin("pg_ctl")) else prev
    if _running(running_ctx):
        if up.happened("opened"):
            roles = checks.block_logins(running_ctx.cluster)
            rc.state.save("blocked_roles", roles)
            rc.state.record("logins_blocked", roles=roles)
            checks.terminate_clients(running_ctx.cluster)
            rc.state.save("facts_before_rollback", facts.snapshot(running_ctx.cluster))
        rc.state.record("stop_requested", bindir=running_ctx.cluster.bindir)
        Service(running_ctx.cluster, rc.host).stop("fast")
        rc.state.record("stopped")
    _reinstall_previous(rc, up, plan_)
    got = versions.inspect(plan_["old"]["bindir"], rc.host).version
    if str(got) != plan_["old"]["version"]:
        raise CheckFailed(
            f"{plan_['old']['bindir']}/postgres is PostgreSQL {got}, not the recorded "
            f"{plan_['old']['version']}: the previous release is not back"
        )
    rc.state.record("previous_start_requested", bindir=prev.cluster.bindir)
    try:
        _start(prev, f"PostgreSQL {plan_['old']['version']}")
    except CheckFailed as exc:
        log.error("the data directory does not start on the previous release: %s", exc)
        rc.state.record("previous_start_failed", error=str(exc)[:4000])
        rc.state.save("start", {"started": False, "error": str(exc)})
        return {"path": "previous_release", "started": False}
    rc.state.record("previous_started", bindir=prev.cluster.bindir)
    rc.state.save("start", {"started": True})
    return {"path": "previous_release", "started": True, "bindir": prev.cluster.bindir}


def _reinstall_previous(rc: RunContext, up: RunState, plan_: dict[str, Any]) -> None:
    installer = plan_["installer"]
    prev = before(rc, plan_)
    if installer == "bindir":
        rc.state.record("bindir_switch", previous=plan_["new"]["bindir"], new=plan_["old"]["bindir"])
        return
    event = up.first("install_started")
    if event is None:
        log.info("the upgrade run never started the install: the previous binaries are still in place")
        return
    if installer == "apt":
        pins = event["previous_packages"]
        rc.state.record("install_started", installer="apt", packages=pins)
        res = installers.apt_install(rc.host, pins, allow_downgrades=True)
    else:
        version = event["previous_version"]
        rc.state.record(
            "install_started", installer="command", argv=installers.render_command(plan_["command"]["argv"], version)
        )
        res = installers.run_install_command(rc.host, plan_["command"]["argv"], version)
    rc.state.record("install_done", seconds=round(res.duration_s, 3))
    _stop_if_started(prev, "the package scripts / install command started the cluster")


def data_dir_started(rc: RunContext) -> bool:
    return bool((rc.state.load("start") or {}).get("started"))


def restore_from_backup(rc: RunContext) -> str:
    """Only when the data directory no longer starts on the previous release: the directory is moved aside
    (never deleted), a fresh cluster is initdb'd with the previous binaries and the backup restored. Refused
    when data changed after the backup, unless accept_data_loss (recovery.data_loss_risks)."""
    plan_ = _upgrade_plan(rc)
    rc.state.record("restore_started")
    aside = recovery.restore_from_backup(
        upgrade_state(rc), before(rc, plan_).cluster, rc.host, accept_data_loss=rc.params["accept_data_loss"]
    )
    rc.state.record("restored", moved_aside=aside)
    return str(aside)


def verify_previous(rc: RunContext) -> dict[str, Any]:
    """version() equals the one recorded before the upgrade; facts equal the snapshot taken before the stop
    (or the one this rollback took before stopping a cluster clients had used; or the backup's, after an
    accepted lossy restore)."""
    up, plan_ = upgrade_state(rc), _upgrade_plan(rc)
    if not plan_.get("old"):
        return {"verified": False, "why": "the upgrade run changed nothing"}
    prev = before(rc, plan_)
    num, text = _server_version(prev)
    if num != plan_["old"]["version_num"] or text != plan_["old"]["version_text"]:
        raise CheckFailed(f"the cluster runs {text!r}, the recorded release was {plan_['old']['version_text']!r}")
    expected = rc.state.load("facts_before_rollback") or up.load("facts_before")
    if rc.state.happened("restored") and recovery.data_loss_risks(up):
        expected = (up.load("backup") or {}).get("facts", expected)
    if expected is None:
        return {"version": text, "facts_compared": False}
    content = any("md5" in t for db in expected["databases"].values() for t in db["tables"].values())
    now = facts.snapshot(prev.cluster, content=content)
    diffs = facts.compare(expected, now, same_extension_versions=True)
    if diffs:
        raise CheckFailed("after the rollback the facts differ from the snapshot: " + "; ".join(diffs[:20]))
    rc.state.save("facts_after", now)
    return {"version": text, "facts_compared": True, "tables": facts.table_count(now)}


def rollback_refresh(rc: RunContext) -> int:
    plan_ = _upgrade_plan(rc)
    if not plan_.get("old"):
        return 0
    prev = before(rc, plan_)
    return int(entities.refresh_all(prev, prev.cluster, plan_["databases"]))


def rollback_open(rc: RunContext) -> list[str]:
    """Gives back the logins the upgrade run (and this run) blocked."""
    plan_ = _upgrade_plan(rc)
    roles = sorted(set(upgrade_state(rc).load("blocked_roles", [])) | set(rc.state.load("blocked_roles", [])))
    if plan_.get("old") and roles:
        checks.unblock_logins(before(rc, plan_).cluster, roles)
    rc.state.record("opened", roles=roles)
    return roles
