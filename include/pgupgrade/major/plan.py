"""The major upgrade's plan, with no side effects on the cluster: support matrix, blockers, extensions in the new
installation, space, the method (pg_upgrade --check against a throwaway new cluster, else dump/restore) and the
outage estimate."""

from __future__ import annotations

import logging
from pathlib import Path

from pgupgrade import (
    archiving,
    backup,
    checks,
    collations,
    config,
    facts,
    plans,
    registration,
    scratch,
    services,
    topology,
    versions,
)
from pgupgrade.backup import needs_base
from pgupgrade.cluster import Cluster
from pgupgrade.context import RunContext
from pgupgrade.errors import CommandError, ConfigError, PlanError
from pgupgrade.major import standbys, transfer
from pgupgrade.major.fields import SUPPORTED_MAJORS, target_major
from pgupgrade.major.model import MajorPlan, Method, NewCluster, OldCluster, TransferMode
from pgupgrade.scratch import InitdbOptions, exists, is_empty_dir
from pgupgrade.sql import connect, fetch_named, scalar_named
from pgupgrade.state import safe_name

log = logging.getLogger(__name__)


DEFAULT_GB_PER_S = {"copy": 0.2, "dump_restore": 0.09, "count_rows": 1.0}  # throughput used for outage estimates


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


def plan(ctx: RunContext) -> MajorPlan | plans.AlreadyThere:
    """No side effects on the cluster: support matrix, blockers, extensions, space, method, estimate."""
    p, old, host = ctx.params, ctx.cluster, ctx.host
    to_major = target_major(ctx)
    with connect(old) as conn:
        running = versions.Version.from_num(int(scalar_named(conn, "server-version-num")))
        old_socket_dirs = str(scalar_named(conn, "unix-socket-directories"))
    if running.major not in SUPPORTED_MAJORS:
        raise PlanError(
            f"PostgreSQL {running} is not supported "
            f"(supported: {SUPPORTED_MAJORS.start} to {SUPPORTED_MAJORS.stop - 1})"
        )
    if running.major == to_major:  # before inspecting pg_bindir: the old installation may be gone by now
        return plans.AlreadyThere(running=str(running), reason=f"cluster already runs {running}")
    old_inst, new_inst, warnings = _installations(ctx, running, to_major)
    new_datadir = _new_datadir(ctx, running.major, to_major)
    registration.check(old, to_major, new_inst.bindir, host)  # the new cluster's service can be set up
    dbs = facts.user_databases(old)
    topo = topology.planned(old, ctx.standbys(), p["max_standby_lag_mb"])  # every listed standby proven
    streaming = frozenset(s["streams_as"] for s in topo.get("standbys", []))
    blockers = _blockers(ctx, running.major, dbs, new_inst, warnings, streaming)
    archiving.plan_check(ctx, to_major, new_datadir, warnings)  # refuses a pgBackRest too old for the target
    data_bytes, relations = _size(old, dbs)
    options = scratch.matching_options(old)
    # libc/ICU collation versions old vs new: changes (and the indexes to REINDEX) go into the warnings
    colls = collations.compare(old, dbs, new_inst, options, _work_dir(new_datadir), host, warnings, ctx.run_id)
    preload = transfer.preload_libraries(old)
    missing_libs = checks.missing_libraries(preload, new_inst, host)
    if missing_libs:
        raise PlanError(
            "shared_preload_libraries names libraries the new installation lacks: " + ", ".join(missing_libs)
        )
    carried = config.carry_config(old, running.major, new_inst, new_datadir, host, write=False)
    warnings += [f"configuration not carried over: {d}" for d in carried.dropped]
    method, why, check_output = _choose_method(ctx, old_inst, new_inst, new_datadir, options, preload, blockers)
    mode = TransferMode(p["transfer_mode"]) if method == Method.PG_UPGRADE else None
    backup_dir = p["backup_dir"] or backup.default_dir(ctx)
    space = _space(ctx, method, mode, len(dbs), data_bytes, backup_dir, new_datadir)
    routes = standbys.plan_routes(ctx, topo, new_inst, new_datadir, method, mode)
    return MajorPlan(
        old=OldCluster(
            version=str(running),
            bindir=old.bindir,
            datadir=old.datadir,
            confdir=old.confdir,
            port=old.port,
            socket_dirs=old_socket_dirs,
        ),
        new=NewCluster(
            version=str(new_inst.version),
            bindir=new_inst.bindir,
            datadir=new_datadir,
            sharedir=new_inst.sharedir,
        ),
        databases=dbs,
        data_bytes=data_bytes,
        relations=relations,
        initdb=options,
        shared_preload_libraries=preload,
        method=method,
        transfer_mode=mode,
        method_reason=why,
        check_output_tail=check_output[-4000:],
        blockers_acknowledged=[b.as_dict() for b in blockers if b.ack_param],
        warnings=warnings,
        backup_dir=backup_dir,
        work_dir=_work_dir(new_datadir),
        outage_estimate_s=estimate_outage(method, mode, relations, data_bytes),
        space=space,
        config=carried.for_plan(),
        collations=colls,
        topology=topo,
        standby_routes=routes,
        standby_slots=_physical_slots(old) if routes else [],
    )


def _physical_slots(old: Cluster) -> list[str]:
    """The old primary's physical slots but this tool's own (the new primary recreates them for its standbys)."""
    with connect(old) as conn:
        slots = fetch_named(conn, "replication-slots")
    return [s["slot_name"] for s in slots if s["slot_type"] == "physical" and s["slot_name"] != backup.ROLLBACK_SLOT]


def _installations(
    ctx: RunContext, running: versions.Version, to_major: int
) -> tuple[versions.Installation, versions.Installation, list[str]]:
    """The old installation (must be what the server runs) and the new one (of the target major); warnings."""
    p, old, host = ctx.params, ctx.cluster, ctx.host
    from_major = ctx.spec.get("from_major") or running.major
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
    if p["transfer_mode"] == TransferMode.SWAP and new_inst.major < 18:
        raise ConfigError("transfer_mode", f"swap needs PostgreSQL 18 or newer, the new installation is {to_major}")
    return old_inst, new_inst, warnings


def _new_datadir(ctx: RunContext, old_major: int, to_major: int) -> str:
    """The new data directory: outside the old one, absent or empty."""
    old, host = ctx.cluster, ctx.host
    new_datadir: str = ctx.params["new_datadir"] or default_new_datadir(old.datadir, old_major, to_major)
    if new_datadir == old.datadir or new_datadir.startswith(old.datadir.rstrip("/") + "/"):
        raise ConfigError("new_datadir", f"must be outside the old data directory {old.datadir}")
    if exists(host, new_datadir, old.os_user) and not is_empty_dir(host, new_datadir, old.os_user):
        raise ConfigError("new_datadir", f"{new_datadir} exists and is not empty")
    return new_datadir


def _blockers(
    ctx: RunContext,
    old_major: int,
    dbs: list[str],
    new_inst: versions.Installation,
    warnings: list[str],
    standbys: frozenset[str],
) -> list[checks.Blocker]:
    """What stands in the way: unacknowledged blockers, an unhealthy old cluster, extensions the new installation
    lacks (each refuses); invalid indexes (a warning, added to ``warnings``). Returns every blocker found."""
    old = ctx.cluster
    blockers = checks.upgrade_blockers(old, old_major, dbs, standbys)
    refused = [b for b in blockers if b.ack_param and not ctx.params.get(b.ack_param)]
    if refused and not ctx.spec.get("ask_person"):  # else a person is asked after the plan (decisions)
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
    missing = checks.missing_extensions(old, dbs, new_inst, ctx.host)
    if missing:
        raise PlanError(
            "the new installation lacks extensions, neither pg_upgrade nor dump/restore can carry "
            "them: " + "; ".join(missing)
        )
    return blockers


def _size(old: Cluster, dbs: list[str]) -> tuple[int, int]:
    """(bytes of data, relations) over the user databases."""
    with connect(old) as conn:
        data_bytes = sum(int(scalar_named(conn, "database-size", {"datname": d})) for d in dbs)
    relations = 0
    for db in dbs:
        with connect(old, db) as conn:
            relations += int(scalar_named(conn, "pg-class-count"))
    return data_bytes, relations


def _space(
    ctx: RunContext,
    method: Method,
    mode: TransferMode | None,
    databases: int,
    data_bytes: int,
    backup_dir: str,
    new_datadir: str,
) -> dict[str, int]:
    """Room for the backup (and, link/swap, the base backup of the way back) and the new cluster; one filesystem
    for link/clone/swap. Refuses what does not fit."""
    old, host = ctx.cluster, ctx.host
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
    need_new = (
        data_bytes if method == Method.DUMP_RESTORE or mode == TransferMode.COPY else 64 * 2**20 * max(databases, 1)
    )
    if method == Method.DUMP_RESTORE:
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
    if mode in (TransferMode.LINK, TransferMode.CLONE, TransferMode.SWAP) and not checks.same_filesystem(
        host, old.datadir, new_datadir
    ):
        raise PlanError(
            f"{mode} mode needs old and new data directories on one filesystem; use transfer_mode=copy "
            "or a new_datadir on the old one's filesystem"
        )
    return {"need_backup": need_backup, "need_new": need_new, "free_backup": free_backup, "free_new": free_new}


def estimate_outage(method: str, mode: str | None, relations: int, data_bytes: int) -> float:
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
) -> tuple[Method, str, str]:
    wanted = ctx.params["method"]
    only_dump = [b for b in blockers if b.breaks_pg_upgrade and not b.breaks_dump_restore]
    both = [b for b in blockers if b.breaks_dump_restore]
    if both:
        raise PlanError("; ".join(b.detail for b in both))
    if wanted == "dump_restore":
        return Method.DUMP_RESTORE, "asked for by the method param", ""
    ok, output = pg_upgrade_check(ctx, new_inst, new_datadir, options, preload)
    if ok and not only_dump:
        return (
            Method.PG_UPGRADE,
            "pg_upgrade --check passed against a new cluster initdb'd to match the old one",
            output,
        )
    reasons = [b.detail for b in only_dump] or [_check_failure(output)]
    if wanted == "pg_upgrade":
        raise PlanError("pg_upgrade cannot upgrade this cluster: " + "; ".join(reasons))
    if only_dump:
        return Method.DUMP_RESTORE, "pg_upgrade cannot carry: " + "; ".join(reasons), output
    raise PlanError("pg_upgrade --check failed for a reason dump/restore does not avoid: " + reasons[0])


def _check_failure(output: str) -> str:
    """pg_upgrade's reason: its "fatal" checks and "could not" errors before its first "Failure, exiting" (the server
    logs appended after it hold consequences, such as a lock file, not the cause)."""
    head = [ln.strip() for ln in output.split("Failure, exiting", 1)[0].splitlines()]
    lines = [ln for ln in head if "fatal" in ln.lower() or ln.lower().startswith("could not")]
    if not lines:
        lines = [ln.strip() for ln in output.splitlines() if "fatal" in ln.lower() or "failure" in ln.lower()]
    reason = " ".join(lines[-3:]) or output.strip()[-500:]
    if "could not clone" in reason:
        reason += (
            " (transfer_mode=clone needs a filesystem that makes reflinks, such as XFS with reflink=1 or Btrfs, "
            "holding both data directories: use link or copy here)"
        )
    return reason


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
        transfer.prepare_new_cluster(old, new_inst, scratch_data, options, host)
        if preload:
            transfer.set_preload(host, scratch_data, preload, old.os_user)
        sock = services.make_socket_dir(host, services.socket_path(f"{work}/sock"), old.os_user)
        argv = transfer.pg_upgrade_argv(
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
            logs = transfer.output_logs(host, scratch_data, old.os_user)
            for name, text in logs.items():
                log.warning("%s:\n%s", name, text[-3000:])
            return False, exc.stdout + exc.stderr + "".join(logs.values())
    finally:
        host.run(["rm", "-rf", "--", work, services.socket_path(f"{work}/sock")], user=old.os_user, check=False)
