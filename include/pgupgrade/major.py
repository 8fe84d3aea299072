"""The major-version runbook (pg15-to-pg16.md and its siblings), one function per DAG task.

Phases: plan (no side effects) → prepare (check, backup, rehearsal) → stop (block logins, wait for clients
and queue, facts snapshot, clean stop) → upgrade (pg_upgrade | dump/restore) → configure & start privately →
extension → validate → open to clients → report. Every destructive step journals before it acts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pgupgrade import backup, checks, facts, scratch, services, upgrade, versions
from pgupgrade.backup import needs_base
from pgupgrade.clients import terminate_clients
from pgupgrade.cluster import Cluster, Service
from pgupgrade.context import RunContext
from pgupgrade.entities import extension_facts, refresh_all, snapshot_before
from pgupgrade.errors import CheckFailed, CommandError, ConfigError, PlanError, UnsafeState
from pgupgrade.params import COMMON, Field
from pgupgrade.scratch import InitdbOptions, exists, is_empty_dir
from pgupgrade.services import stop_old
from pgupgrade.sql import connect, fetch_named, scalar
from pgupgrade.state import safe_name

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
        enum=upgrade.TRANSFER_MODES,
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

DEFAULT_GB_PER_S = {"copy": 0.2, "dump_restore": 0.09, "count_rows": 1.0}  # throughput used for outage estimates


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


# -- helpers ------------------------------------------------------------------------------------------


def _work_dir(new_datadir: str) -> str:
    path = Path(new_datadir)
    return str(path.parent / f".pgupgrade-{path.name}")


def default_new_datadir(old_datadir: str, old_major: int, new_major: int) -> str:
    parts = Path(old_datadir).parts
    if str(old_major) in parts:
        i = len(parts) - 1 - parts[::-1].index(str(old_major))
        return str(Path(*parts[:i], str(new_major), *parts[i + 1 :]))
    return f"{old_datadir}_{new_major}"


def _release_index(v: versions.Version) -> int:
    """Minor releases ship quarterly for every supported major at once; a new major every autumn."""
    return (v.major - 10) * 4 + v.minor


def plan(ctx: RunContext) -> dict[str, Any]:
    """No side effects on the cluster: support matrix, blockers, extensions, space, method, estimate."""
    p, old, host = ctx.params, ctx.cluster, ctx.host
    to_major = target_major(ctx)
    with connect(old) as conn:
        running = versions.Version.from_num(int(scalar(conn, "SHOW server_version_num")))
        old_socket_dirs = str(scalar(conn, "SHOW unix_socket_directories"))
    from_major = ctx.spec.get("from_major") or running.major
    if running.major not in SUPPORTED_MAJORS:
        raise PlanError(
            f"PostgreSQL {running} is not supported "
            f"(supported: {SUPPORTED_MAJORS.start} to {SUPPORTED_MAJORS.stop - 1})"
        )
    if running.major == to_major:  # before inspecting pg_bindir: the old installation may be gone by now
        return {"already_upgraded": True, "running": str(running), "reason": f"cluster already runs {running}"}
    old_inst = versions.inspect(old.bindir, host)
    if running.major != from_major or running.major > to_major:
        raise PlanError(f"this DAG upgrades {from_major} to {to_major}; the cluster runs {running}")
    if old_inst.major != running.major:
        raise PlanError(
            f"connection extra pg_bindir {old.bindir} is PostgreSQL {old_inst.version}, the server "
            f"runs {running}: fix the connection"
        )
    new_inst = versions.inspect(p["new_bindir"], host) if p["new_bindir"] else versions.for_major(to_major, host=host)
    if new_inst.major != to_major:
        raise PlanError(f"new_bindir {new_inst.bindir} is PostgreSQL {new_inst.version}, not {to_major}")
    warnings: list[str] = []
    if _release_index(new_inst.version) < _release_index(running):
        warnings.append(
            f"PostgreSQL {new_inst.version} was released before {running}: fixes in the old minor "
            "may be missing in the new one; install the newest minor of the new major"
        )
    if p["transfer_mode"] == "swap" and new_inst.major < 18:
        raise ConfigError("transfer_mode", f"swap needs PostgreSQL 18 or newer, the new installation is {to_major}")
    new_datadir = p["new_datadir"] or default_new_datadir(old.datadir, running.major, to_major)
    if new_datadir == old.datadir or new_datadir.startswith(old.datadir.rstrip("/") + "/"):
        raise ConfigError("new_datadir", f"must be outside the old data directory {old.datadir}")
    if exists(host, new_datadir, old.os_user) and not is_empty_dir(host, new_datadir, old.os_user):
        raise ConfigError("new_datadir", f"{new_datadir} exists and is not empty")
    dbs = facts.user_databases(old)
    blockers = checks.upgrade_blockers(old, running.major, dbs)
    refused = [b for b in blockers if b.ack_param and not p.get(b.ack_param)]
    if refused:
        raise PlanError("; ".join(f"{b.detail} (set {b.ack_param}=true to go ahead)" for b in refused))
    unhealthy = [
        f"{r['database']}: {r['check']} ({r['detail']})"
        for r in checks.health(old, dbs, ctx.profile)
        if not r["ok"] and r["check"] not in ("queue empty", "no invalid indexes")
    ]
    if unhealthy:
        raise PlanError("the old cluster is not healthy; fix this before the upgrade: " + "; ".join(unhealthy))
    invalid = [r for r in checks.health(old, dbs, None) if r["check"] == "no invalid indexes" and not r["ok"]]
    for r in invalid:
        warnings.append(f"{r['database']}: invalid indexes are not carried over: {r['detail']}")
    missing = checks.missing_extensions(old, dbs, new_inst, host)
    if missing:
        raise PlanError(
            "the new installation lacks extensions, neither pg_upgrade nor dump/restore can carry "
            "them: " + "; ".join(missing)
        )
    with connect(old) as conn:
        data_bytes = sum(int(scalar(conn, "SELECT pg_database_size(%s)", (d,))) for d in dbs)
    relations = 0
    for db in dbs:
        with connect(old, db) as conn:
            relations += int(scalar(conn, "SELECT count(*) FROM pg_class"))
    options = scratch.matching_options(old)
    preload = upgrade.preload_libraries(old)
    missing_libs = checks.missing_libraries(preload, new_inst, host)
    if missing_libs:
        raise PlanError(
            "shared_preload_libraries names libraries the new installation lacks: " + ", ".join(missing_libs)
        )

    method, why, check_output = _choose_method(ctx, old_inst, new_inst, new_datadir, options, preload, blockers)
    mode = p["transfer_mode"] if method == "pg_upgrade" else None
    backup_dir = p["backup_dir"] or backup.default_dir(ctx.state.root, old.name, ctx.run_id)
    need_backup = int(data_bytes * 1.1)
    if needs_base(method, mode):
        missing = backup.base_requirements(old)
        if missing:
            raise PlanError(
                f"{mode} mode's way back needs a base backup with a replication slot, but "
                + "; ".join(missing)
                + ": fix that or use transfer_mode=copy"
            )
        need_backup += data_bytes  # the base backup next to the logical one
    need_new = data_bytes if method == "dump_restore" or mode == "copy" else 64 * 2**20 * max(len(dbs), 1)
    if method == "dump_restore":
        need_new += data_bytes  # the dump directory next to the new cluster
    free_backup = checks.free_bytes(host, backup_dir)
    free_new = checks.free_bytes(host, new_datadir)
    if checks.same_filesystem(host, backup_dir, new_datadir):
        if free_new < need_backup + need_new:
            raise PlanError(f"{free_new} bytes free for backup and new cluster, need {need_backup + need_new}")
    elif free_backup < need_backup or free_new < need_new:
        raise PlanError(
            f"not enough space: backup needs {need_backup} (free {free_backup}), new cluster "
            f"{need_new} (free {free_new})"
        )
    if mode in ("link", "clone", "swap") and not checks.same_filesystem(host, old.datadir, new_datadir):
        raise PlanError(
            f"{mode} mode needs old and new data directories on one filesystem; use transfer_mode=copy "
            "or a new_datadir on the old one's filesystem"
        )
    estimate = _estimate(method, mode, relations, data_bytes)
    return {
        "already_upgraded": False,
        "old": {
            "version": str(running),
            "bindir": old.bindir,
            "datadir": old.datadir,
            "confdir": old.confdir,
            "port": old.port,
            "socket_dirs": old_socket_dirs,
        },
        "new": {
            "version": str(new_inst.version),
            "bindir": new_inst.bindir,
            "datadir": new_datadir,
            "sharedir": new_inst.sharedir,
        },
        "databases": dbs,
        "data_bytes": data_bytes,
        "relations": relations,
        "initdb": options.__dict__,
        "shared_preload_libraries": preload,
        "method": method,
        "transfer_mode": mode,
        "method_reason": why,
        "check_output_tail": check_output[-4000:],
        "blockers_acknowledged": [b.as_dict() for b in blockers if b.ack_param],
        "warnings": warnings,
        "backup_dir": backup_dir,
        "work_dir": _work_dir(new_datadir),
        "outage_estimate_s": estimate,
        "space": {"need_backup": need_backup, "need_new": need_new, "free_backup": free_backup, "free_new": free_new},
    }


def _estimate(method: str, mode: str | None, relations: int, data_bytes: int) -> float:
    """Seconds from blocking logins to letting clients in. Every method also counts the rows of every table twice
    inside the outage (the facts before and after), which reads all data."""
    base = 10.0  # stop, start privately, validate, restart for clients
    counting = 2 * data_bytes / (DEFAULT_GB_PER_S["count_rows"] * 2**30)
    if method == "dump_restore":
        return base + counting + data_bytes / (DEFAULT_GB_PER_S["dump_restore"] * 2**30) + relations * 0.005
    if mode == "copy":
        return base + counting + data_bytes / (DEFAULT_GB_PER_S["copy"] * 2**30) + relations * 0.002
    return base + counting + relations * 0.002


def _choose_method(
    ctx: RunContext,
    old_inst: versions.Installation,
    new_inst: versions.Installation,
    new_datadir: str,
    options: InitdbOptions,
    preload: str,
    blockers: list[checks.Blocker],
) -> tuple[str, str, str]:
    wanted = ctx.params["method"]
    only_dump = [b for b in blockers if b.breaks_pg_upgrade and not b.breaks_dump_restore]
    both = [b for b in blockers if b.breaks_dump_restore]
    if both:
        raise PlanError("; ".join(b.detail for b in both))
    if wanted == "dump_restore":
        return "dump_restore", "asked for by the method param", ""
    ok, output = pg_upgrade_check(ctx, new_inst, new_datadir, options, preload)
    if ok and not only_dump:
        return "pg_upgrade", "pg_upgrade --check passed against a new cluster initdb'd to match the old one", output
    reasons = [b.detail for b in only_dump] or [_check_failure(output)]
    if wanted == "pg_upgrade":
        raise PlanError("pg_upgrade cannot upgrade this cluster: " + "; ".join(reasons))
    if only_dump:
        return "dump_restore", "pg_upgrade cannot carry: " + "; ".join(reasons), output
    raise PlanError("pg_upgrade --check failed for a reason dump/restore does not avoid: " + reasons[0])


def _check_failure(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if "fatal" in ln.lower() or "failure" in ln.lower()]
    return " ".join(lines[-3:]) or output.strip()[-500:]


def pg_upgrade_check(
    ctx: RunContext, new_inst: versions.Installation, new_datadir: str, options: InitdbOptions, preload: str
) -> tuple[bool, str]:
    """pg_upgrade --check against a throwaway cluster in the work dir (removed afterwards); the old cluster
    keeps running ("live check")."""
    old, host = ctx.cluster, ctx.host
    work = f"{_work_dir(new_datadir)}/check-{safe_name(ctx.run_id)}"
    host.run(["rm", "-rf", "--", work], user=old.os_user)
    scratch_data = f"{work}/data"
    try:
        upgrade.prepare_new_cluster(old, new_inst, scratch_data, options, host)
        if preload:
            _set_preload(host, scratch_data, preload, old.os_user)
        sock = services.make_socket_dir(host, services.socket_path(f"{work}/sock"), old.os_user)
        argv = upgrade.pg_upgrade_argv(
            old,
            new_inst,
            scratch_data,
            mode=ctx.params["transfer_mode"] if ctx.params["transfer_mode"] != "swap" else "link",
            jobs=ctx.params["jobs"],
            socket_dir=sock,
            check=True,
            old_port=old.port,
            new_port=old.port + 1,
        )
        try:
            res = host.run(argv, user=old.os_user, cwd=work, timeout=3600)
            return "Clusters are compatible" in res.stdout, res.stdout
        except CommandError as exc:
            log.warning("pg_upgrade --check failed:\n%s\n%s", exc.stdout[-6000:], exc.stderr[-2000:])
            logs = upgrade.output_logs(host, scratch_data, old.os_user)
            for name, text in logs.items():
                log.warning("%s:\n%s", name, text[-3000:])
            return False, exc.stdout + exc.stderr + "".join(logs.values())
    finally:
        host.run(["rm", "-rf", "--", work, services.socket_path(f"{work}/sock")], user=old.os_user, check=False)


def _set_preload(host: Any, datadir: str, preload: str, user: str) -> None:
    from pgupgrade.scratch import write_settings

    write_settings(host, f"{datadir}/postgresql.conf", {"shared_preload_libraries": f"'{preload}'"}, user)


# -- preparation ----------------------------------------------------------------------------------------


# -- stop -----------------------------------------------------------------------------------------------


# -- upgrade --------------------------------------------------------------------------------------------


def _new_cluster(ctx: RunContext, plan_: dict[str, Any], *, private: bool) -> Cluster:
    c = ctx.cluster.with_installation(plan_["new"]["bindir"], plan_["new"]["datadir"])
    if private:
        return services.private_cluster(c, c.datadir, c.bindir, _sock(plan_, "sock"))
    return replace(c, confdir=None)


def _sock(plan_: dict[str, Any], name: str) -> str:
    return services.socket_path(f"{plan_['work_dir']}/{name}")


def init_new(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """initdb of the new cluster (matching the old one) and the preload libraries it needs — before the outage,
    so the outage holds only the transfer. Refuses a non-empty directory and a second initdb in one run."""
    ctx.state.refuse_if("new_initdb", "the new cluster was already initialised by this run; trigger the rollback DAG")
    old, host = ctx.cluster, ctx.host
    new_inst = versions.inspect(plan_["new"]["bindir"], host)
    new_datadir = plan_["new"]["datadir"]
    ctx.state.record("new_initdb", datadir=new_datadir)
    upgrade.prepare_new_cluster(old, new_inst, new_datadir, InitdbOptions(**plan_["initdb"]), host)
    if plan_["shared_preload_libraries"]:
        _set_preload(host, new_datadir, plan_["shared_preload_libraries"], old.os_user)
    return {"datadir": new_datadir, "version": str(new_inst.version)}


def _require_new_cluster(ctx: RunContext) -> None:
    if not ctx.state.happened("new_initdb"):
        raise UnsafeState("init_new has not run for this run: no freshly initialised new cluster to fill")


def run_pg_upgrade(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    old, host = ctx.cluster, ctx.host
    ctx.state.refuse_if(
        "transfer_started",
        "pg_upgrade already ran (or began) for this run; refusing to run it "
        "twice on a half-built directory: trigger the rollback DAG",
    )
    _require_new_cluster(ctx)
    new_inst = versions.inspect(plan_["new"]["bindir"], host)
    new_datadir = plan_["new"]["datadir"]
    work = plan_["work_dir"]
    sock = services.make_socket_dir(host, _sock(plan_, "sock"), old.os_user)
    argv = upgrade.pg_upgrade_argv(
        old,
        new_inst,
        new_datadir,
        mode=plan_["transfer_mode"],
        jobs=ctx.params["jobs"],
        socket_dir=sock,
        check=False,
        old_port=old.port,
        new_port=old.port + 1,
    )
    ctx.state.record("transfer_started", method="pg_upgrade", mode=plan_["transfer_mode"])
    try:
        res = upgrade.run_pg_upgrade(argv, host, old.os_user, work, timeout=24 * 3600)
    except CommandError:
        ctx.state.save("pg_upgrade_logs", upgrade.output_logs(host, new_datadir, old.os_user))
        raise
    ctx.state.record("transfer_done", seconds=round(res.duration_s, 3))
    return {"seconds": res.duration_s, "stdout_tail": res.stdout[-3000:]}


def run_dump_restore(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    old, host = ctx.cluster, ctx.host
    ctx.state.refuse_if("transfer_started", "dump/restore already began for this run; trigger the rollback DAG")
    new_inst = versions.inspect(plan_["new"]["bindir"], host)
    work = plan_["work_dir"]
    new_private = _new_cluster(ctx, plan_, private=True)
    _require_new_cluster(ctx)
    ctx.state.record("transfer_started", method="dump_restore")
    started = time.monotonic()
    # The old cluster normally still runs here with logins blocked and no client left (the cutover dumps before
    # it stops the old one); a run that finds it stopped starts it where no client can reach it.
    source = old
    if ctx.state.happened("old_stop_requested"):
        source = services.private_cluster(old, old.datadir, old.bindir, _sock(plan_, "old-sock"))
        services.start_private(source, host, source.host)
    try:
        services.start_private(new_private, host, new_private.host)
        dump_dir = f"{work}/dump"
        host.run(["rm", "-rf", "--", dump_dir], user=old.os_user)
        upgrade.dump_restore(source, new_private, host, dump_dir, plan_["databases"], ctx.params["jobs"], new_inst)
        host.run(["rm", "-rf", "--", dump_dir], user=old.os_user)
    finally:
        if source is not old:
            Service(source, host).stop("fast")
        Service(new_private, host).stop("fast")
    ctx.state.record("transfer_done", seconds=round(time.monotonic() - started, 3))
    return {"seconds": time.monotonic() - started}


def configure_new(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    new_inst = versions.inspect(plan_["new"]["bindir"], ctx.host)
    from_major = versions.Version.parse(plan_["old"]["version"]).major
    if ctx.state.happened("config_carried"):
        return {"already": True}
    carried = upgrade.carry_config(ctx.cluster, from_major, new_inst, plan_["new"]["datadir"], ctx.host)
    ctx.state.record("config_carried", dropped=carried.dropped, rewritten=carried.rewritten)
    return carried.as_dict()


def start_new_private(ctx: RunContext, plan_: dict[str, Any]) -> None:
    new_private = _new_cluster(ctx, plan_, private=True)
    ctx.state.record("new_started")  # before the first start: from here the old cluster may be unusable (link)
    services.start_private(new_private, ctx.host, new_private.host)


# -- extension and validation ----------------------------------------------------------------------------


def update_extensions(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    new_private = _new_cluster(ctx, plan_, private=True)
    script = f"{plan_['work_dir']}/update_extensions.sql"
    ran = False
    if exists(ctx.host, script, ctx.cluster.os_user):
        ctx.host.run(
            [new_private.bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-f", script],
            user=ctx.cluster.os_user,
            env=new_private.libpq_env("postgres"),
        )
        ran = True
    before = ctx.state.load("facts_before")["extension"]
    result: dict[str, Any] = {"update_extensions_sql": ran, "databases": {}}
    for db, prev in before.items():
        with connect(new_private, db) as conn:
            version = ctx.profile.reported_version(conn)
            rows = len(ctx.profile.metadata_rows(conn))
            problems = ctx.profile.problems(conn)
            not_firing = ctx.profile.trigger_fires(conn)
        disabled = [
            r
            for r in checks.health(new_private, [db], ctx.profile)
            if r["check"].startswith("no disabled triggers") and not r["ok"]
        ]
        errors = []
        if rows != prev["metadata_rows"]:
            errors.append(f"{prev['metadata_rows']} metadata rows before, {rows} after")
        errors += problems + not_firing + [r["detail"] for r in disabled]
        if errors:
            raise CheckFailed(f"{db}: {ctx.profile.extname} after the upgrade: " + "; ".join(errors))
        result["databases"][db] = {"version": version, "metadata_rows": rows}
    return result


def validate_facts(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    new_private = _new_cluster(ctx, plan_, private=True)
    before = ctx.state.load("facts_before")
    after = facts.snapshot(new_private, content=ctx.params["verify_content"])
    ctx.state.save("facts_after", after)
    diffs = facts.compare(before, after)
    if diffs:
        raise CheckFailed("facts differ after the upgrade: " + "; ".join(diffs[:20]))
    if versions.Version.from_num(after["server_version_num"]).major != target_major(ctx):
        raise CheckFailed(f"new cluster runs {after['server_version']}, not {target_major(ctx)}")
    return {"tables": facts.table_count(after), "server_version": after["server_version"]}


def health_check(ctx: RunContext, plan_: dict[str, Any]) -> list[dict[str, Any]]:
    new_private = _new_cluster(ctx, plan_, private=True)
    rows = checks.health(new_private, plan_["databases"], ctx.profile)
    failed = [r for r in rows if not r["ok"] and r["check"] != "queue empty"]
    if failed:
        raise CheckFailed(
            "health check failed: " + "; ".join(f"{r['database']}: {r['check']} ({r['detail']})" for r in failed)
        )
    return rows


def refresh_tviews(ctx: RunContext, plan_: dict[str, Any]) -> int:
    return refresh_all(ctx, _new_cluster(ctx, plan_, private=False), plan_["databases"])


def analyze(ctx: RunContext, plan_: dict[str, Any]) -> None:
    new = _new_cluster(ctx, plan_, private=False)
    argv = [new.bin("vacuumdb"), "--all", "--analyze-in-stages", "-j", str(ctx.params["jobs"])]
    if versions.Version.parse(plan_["new"]["version"]).major >= 18:
        argv.append("--missing-stats-only")  # pg_upgrade 18 carries statistics over
    ctx.host.run(argv, user=ctx.cluster.os_user, env=new.libpq_env("postgres"), timeout=24 * 3600)


def performance(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    new = _new_cluster(ctx, plan_, private=False)
    before = ctx.state.load("facts_before")["extension"]
    after = extension_facts(new, list(before), ctx)
    threshold = ctx.params["perf_threshold_pct"]
    slow = []
    for db, b in before.items():
        for entity, t_before in b["scan_s"].items():
            t_after = after[db]["scan_s"].get(entity, 0.0)
            if t_after > max(t_before, 0.005) * (1 + threshold / 100):
                slow.append(f"{db}.{entity}: {t_before * 1000:.1f} ms before, {t_after * 1000:.1f} ms after")
    if slow and ctx.params["perf_action"] == "fail":
        raise CheckFailed("slower than the threshold: " + "; ".join(slow))
    for line in slow:
        log.warning("slower after the upgrade: %s", line)
    return {"slower": slow, "threshold_pct": threshold}


def open_to_clients(ctx: RunContext, plan_: dict[str, Any]) -> None:
    """Restart the new cluster where clients reach it (old port and sockets), then give logins back."""
    private = _new_cluster(ctx, plan_, private=True)
    public = _new_cluster(ctx, plan_, private=False)
    Service(private, ctx.host).stop("fast")
    ctx.state.record("new_public_start")
    Service(public, ctx.host).start()
    with connect(public) as conn:
        lsn = fetch_named(conn, "wal-position")[0]["lsn"]  # a rollback counts the WAL written after this
    roles = ctx.state.load("blocked_roles", [])
    checks.unblock_logins(public, roles)
    ctx.state.record("opened", roles=roles, wal_lsn=lsn)


def cutover_steps(method: str) -> list[tuple[str, Callable[[RunContext, dict[str, Any]], Any]]]:
    """The outage-critical section, run in one task process so no task hand-off lengthens the outage: every
    step is still journaled (and can be failed on purpose) under its own name."""
    stop: tuple[str, Callable[[RunContext, dict[str, Any]], Any]] = ("stop_old", lambda ctx, _plan: stop_old(ctx))
    # pg_upgrade needs the old cluster stopped; dump/restore reads it while it still runs (logins blocked, no
    # client left), which saves a stop and a private start inside the outage
    transfer = (
        [stop, ("pg_upgrade", run_pg_upgrade)] if method == "pg_upgrade" else [("dump_restore", run_dump_restore), stop]
    )
    return [
        ("terminate_clients", terminate_clients),
        ("snapshot_facts", snapshot_before),
        *transfer,
        ("configure_new", configure_new),
        ("start_new_private", start_new_private),
        ("update_extensions", update_extensions),
        ("validate_facts", validate_facts),
        ("health_check", health_check),
        ("open_to_clients", open_to_clients),
    ]


def new_connection_extra(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    extra = ctx.cluster.to_extra()
    extra.update({"pg_bindir": plan_["new"]["bindir"], "pg_datadir": plan_["new"]["datadir"]})
    extra.pop("pg_confdir", None)
    return extra


# -- rehearsal and report --------------------------------------------------------------------------------


def rehearsal(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """The seed's "test the upgrade on a dev database first", automated: the backup restored into a scratch
    cluster of the old version, the planned upgrade run on it, facts compared. Production is not touched."""
    if not ctx.params["rehearsal"]:
        return {"rehearsal": "not requested"}
    from pgupgrade.scratch import create_cluster

    old, host = ctx.cluster, ctx.host
    manifest = ctx.state.load("backup")
    root = f"{plan_['work_dir']}/rehearsal"
    host.run(["rm", "-rf", "--", root], user=old.os_user)
    old_inst = versions.inspect(old.bindir, host)
    new_inst = versions.inspect(plan_["new"]["bindir"], host)
    options = InitdbOptions(**plan_["initdb"])
    preload = (
        {"shared_preload_libraries": f"'{plan_['shared_preload_libraries']}'"}
        if plan_["shared_preload_libraries"]
        else {}
    )
    started = time.monotonic()
    sock_old, sock_new = _sock(plan_, "rehearsal-old"), _sock(plan_, "rehearsal-new")
    scratch_old = create_cluster(
        old_inst,
        f"{root}/old",
        name="rehearsal-old",
        port=old.port + 2,
        socket_dir=sock_old,
        os_user=old.os_user,
        options=options,
        settings=preload,
        host=host,
    )
    scratch_new = replace(
        scratch_old, name="rehearsal-new", bindir=new_inst.bindir, datadir=f"{root}/new", host=sock_new
    )
    try:
        backup.restore(scratch_old, host, manifest, jobs=ctx.params["jobs"])
        before = facts.snapshot(scratch_old)
        if plan_["method"] == "pg_upgrade":
            Service(scratch_old, host).stop("fast")
            upgrade.prepare_new_cluster(old, new_inst, scratch_new.datadir, options, host)
            if preload:
                _set_preload(host, scratch_new.datadir, plan_["shared_preload_libraries"], old.os_user)
            argv = upgrade.pg_upgrade_argv(
                scratch_old,
                new_inst,
                scratch_new.datadir,
                mode=plan_["transfer_mode"],
                jobs=ctx.params["jobs"],
                socket_dir=sock_old,
                check=False,
                old_port=scratch_old.port,
                new_port=scratch_old.port + 1,
            )
            upgrade.run_pg_upgrade(argv, host, old.os_user, f"{root}/work", timeout=24 * 3600)
        else:
            upgrade.prepare_new_cluster(old, new_inst, scratch_new.datadir, options, host)
            services.start_private(scratch_new, host, sock_new)
            upgrade.dump_restore(
                scratch_old, scratch_new, host, f"{root}/dump", plan_["databases"], ctx.params["jobs"], new_inst
            )
            Service(scratch_new, host).stop("fast")
        services.start_private(scratch_new, host, sock_new)
        diffs = facts.compare(before, facts.snapshot(scratch_new))
        if diffs:
            raise CheckFailed("rehearsal: facts differ after the upgrade: " + "; ".join(diffs[:10]))
        return {
            "rehearsal": "passed",
            "seconds": round(time.monotonic() - started, 3),
            "tables": facts.table_count(before),
        }
    finally:
        for c in (scratch_new, scratch_old):
            if exists(host, f"{c.datadir}/postmaster.pid", old.os_user):
                Service(c, host).stop("immediate")
        host.run(["rm", "-rf", "--", root, sock_old, sock_new], user=old.os_user, check=False)


def write_report(ctx: RunContext, status: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    from pgupgrade import report

    plan_ = ctx.state.load("plan") or {}
    more: dict[str, Any] = dict(extra or {})
    if plan_.get("new") and ctx.state.happened("opened"):
        more["next_steps"] = (
            "point the Airflow connection at the new cluster: extra = "
            + json.dumps(new_connection_extra(ctx, plan_), sort_keys=True)
            + "; delete the old cluster with pg_major_upgrade_cleanup after verifying the new one"
        )
        if ctx.state.happened("wal_slot_created"):
            more["next_steps"] += (
                f" (until then its data directory keeps the WAL of the way back: replication slot "
                f"{backup.ROLLBACK_SLOT}; drop it if you ever start the old cluster by hand)"
            )
    rep = report.build(ctx.state, status=status, extra=more)
    json_path, md_path = report.write(ctx.state, rep)
    log.info("report: %s", md_path)
    return {"json": str(json_path), "markdown": str(md_path)}


# -- cleanup of the old cluster ----------------------------------------------------------------------------

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


def cleanup_check(ctx: RunContext) -> dict[str, Any]:
    """Everything that must hold before the old cluster may go; no side effects."""
    from pgupgrade.state import RunState

    p = ctx.params
    up = RunState.for_run(p["upgrade_dag_id"], p["upgrade_run_id"], ctx.state.root)
    plan_ = up.load("plan")
    if not plan_ or not up.happened("opened"):
        raise PlanError(f"run {p['upgrade_dag_id']}/{p['upgrade_run_id']} did not finish an upgrade (no 'opened')")
    if up.happened("old_cluster_deleted"):
        raise PlanError("the old cluster of this run was deleted already")
    if up.happened("rollback_triggered"):
        raise PlanError("this run was rolled back: its old cluster is the one serving")
    old_datadir = plan_["old"]["datadir"]
    if p["confirm_delete"] != old_datadir:
        raise ConfigError("confirm_delete", f"must be exactly {old_datadir!r} to delete it")
    opened = up.first("opened") or {}
    age_h = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(opened["at"])).total_seconds() / 3600
    if age_h < p["min_age_hours"]:
        raise PlanError(f"the new cluster has served for {age_h:.1f} h, less than min_age_hours={p['min_age_hours']}")
    new = replace(ctx.cluster, bindir=plan_["new"]["bindir"], datadir=plan_["new"]["datadir"], confdir=None)
    if not Service(new, ctx.host).is_running():
        raise PlanError(f"the new cluster in {new.datadir} is not running")
    old = replace(ctx.cluster, bindir=plan_["old"]["bindir"], datadir=old_datadir)
    if exists(ctx.host, f"{old_datadir}/postmaster.pid", old.os_user) and Service(old, ctx.host).is_running():
        raise PlanError(f"a postmaster runs in the old data directory {old_datadir}")
    return {"old_datadir": old_datadir, "age_hours": round(age_h, 2), "work_dir": plan_["work_dir"]}


def delete_old_cluster(ctx: RunContext) -> dict[str, Any]:
    """pg_upgrade's own delete_old_cluster.sh when it wrote one (it knows the tablespace subdirectories),
    otherwise the old data directory."""
    from pgupgrade.state import RunState

    checked = cleanup_check(ctx)
    p = ctx.params
    up = RunState.for_run(p["upgrade_dag_id"], p["upgrade_run_id"], ctx.state.root)
    user = ctx.cluster.os_user
    script = f"{checked['work_dir']}/delete_old_cluster.sh"
    up.record("old_cluster_deleted", by=f"{ctx.dag_id}/{ctx.run_id}", datadir=checked["old_datadir"])
    if exists(ctx.host, script, user):
        ctx.host.run(["sh", script], user=user, timeout=24 * 3600)
    ctx.host.run(["rm", "-rf", "--", checked["old_datadir"]], user=user, timeout=24 * 3600)
    return checked
