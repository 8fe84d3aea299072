"""The plan of an extension update, with no side effects: the databases in scope and their versions, update
paths, metadata health, the compatibility scan, rollback readiness, the extension files and the backup space.
Refusals stop the run before anything changed.

The typed plan comes in three forms, each stored as the JSON the untyped plan had (``plans.to_json``):
``ExtensionPlan`` (what every later step reads, ``ctx.plan(ExtensionPlan)``), ``RefusedPlan`` (the same plus
``refused``, saved before the plan task fails) and ``AtTargetPlan`` (every database in scope already at the
target: ``already_upgraded`` and the ``reason``, the run ends green at ``dry_run_gate``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pgupgrade import backup, checks, facts, plans
from pgupgrade.context import RunContext
from pgupgrade.errors import ConfigError, PlanError
from pgupgrade.extension.catalog import (
    compat_scan,
    default_version,
    describe_finding,
    entity_tables,
    metadata_table,
    update_path_exists,
)
from pgupgrade.extension.fields import SourceKind, check_target, version_verdict
from pgupgrade.extension.source import AdminGet, Source, resolve_source, source_files
from pgupgrade.profiles import Conn, ExtensionProfile
from pgupgrade.scratch import exists, is_empty_dir
from pgupgrade.sql import connect, scalar_named

log = logging.getLogger(__name__)


# -- the typed plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupSpace:
    need_backup: int
    free_backup: int
    databases_bytes: int


@dataclass(frozen=True, kw_only=True)
class Scope:
    """What every form of the plan records: the databases to update (``databases``, each with its
    ``from_versions``, metadata table and entities), those already at the target, the compatibility findings and
    the warnings."""

    already_upgraded: bool = False
    extname: str
    kind: str | None  # the DAG's spec: "series" (a migration) or "minor"
    target_version: str
    source: Source
    databases: list[str]
    already_at_target: list[str]
    from_versions: dict[str, str]
    metadata_tables: dict[str, list[str]]  # database → [schema, table]
    entities: dict[str, list[str]]
    compat: list[dict[str, Any]]  # catalog.compat_scan findings
    warnings: list[str]


@dataclass(frozen=True, kw_only=True)
class ExtensionPlan(Scope):
    """The plan the run carries out."""

    backup_dir: str
    space: BackupSpace


@dataclass(frozen=True, kw_only=True)
class RefusedPlan(ExtensionPlan):
    """A plan the run refused to carry out (nothing was changed), with why."""

    refused: str


@dataclass(frozen=True, kw_only=True)
class AtTargetPlan(Scope):
    """Nothing to do: the extension is at the target in every database in scope."""

    already_upgraded: bool = True
    reason: str


FormT = TypeVar("FormT", bound=Scope)


def _form(scope: Scope, cls: type[FormT], **more: Any) -> FormT:
    """``scope`` as one form of the plan (``already_upgraded`` takes that form's default)."""
    kept = {f.name: getattr(scope, f.name) for f in dataclasses.fields(scope) if f.name != "already_upgraded"}
    return cls(**kept, **more)


# -- per database -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    """One database in scope as the plan saw it: at the target, refused by the version rules, or to update
    (``current`` set) with what that needs."""

    database: str
    at_target: bool = False
    current: str | None = None
    metadata_table: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    compat: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


def databases_in_scope(ctx: RunContext) -> list[str]:
    """The ``databases`` param (each must exist and have the extension), or every database that has it."""
    cluster, profile, wanted = ctx.cluster, ctx.profile, ctx.params["databases"]
    all_dbs = facts.user_databases(cluster)
    if not wanted:
        found = checks.extension_databases(cluster, all_dbs, profile)
        if not found:
            raise PlanError(f"{profile.extname} is not installed in any database of {cluster.name}")
        return found
    unknown = [d for d in wanted if d not in all_dbs]
    if unknown:
        raise ConfigError("databases", f"no such database: {', '.join(unknown)}; have {', '.join(all_dbs)}")
    candidates = list(wanted)
    without = [d for d in candidates if d not in checks.extension_databases(cluster, candidates, profile)]
    if without:
        raise ConfigError("databases", f"{profile.extname} is not installed in {', '.join(without)}")
    return candidates


def inspect_database(ctx: RunContext, db: str, source: Source, target: str) -> _Seen:
    """The installed version against the DAG's version rules; for a database to update: its metadata table and
    entities (refused: rows whose backing table is missing), metadata problems (warnings), the update path,
    the compatibility scan and rollback readiness."""
    profile = ctx.profile
    with connect(ctx.cluster, db) as conn:
        current = profile.installed_version(conn)
        assert current is not None
        verdict = version_verdict(profile, ctx.spec, current, target)
        if verdict == "already":
            return _Seen(db, at_target=True)
        if verdict:
            return _Seen(db, refusals=[f"{db}: {verdict}"])
        table = list(metadata_table(conn, profile))
        tables = entity_tables(conn, profile)
        refusals = []
        orphans = [e for e, i in tables.items() if not i["backing_table"]]
        if orphans:
            refusals.append(
                f"{db}: metadata rows whose backing table is missing: {', '.join(orphans)} (the "
                "migration verifies every row's backing table; fix or remove these TVIEWs first)"
            )
        warnings = [f"{db}: metadata problem before the update: {prob}" for prob in profile.problems(conn)]
        if source.kind == SourceKind.INSTALLED and not update_path_exists(conn, profile.extname, current, target):
            refusals.append(
                f"{db}: the installation has no update path {current} → {target} for "
                f"{profile.extname} (pg_extension_update_paths); install the {target} files first "
                "or use extension_source copy/command"
            )
        compat = compat_scan(conn, db, profile, current, target)
        refusals += rollback_readiness(conn, db, profile, source, current)
    return _Seen(
        db,
        current=current,
        metadata_table=table,
        entities=sorted(tables),
        compat=compat,
        warnings=warnings,
        refusals=refusals,
    )


def rollback_readiness(conn: Conn, db: str, profile: ExtensionProfile, source: Source, current: str) -> list[str]:
    """A restore recreates the extension with the dump's CREATE EXTENSION, which installs the control file's
    default_version: with files already installed that must be the current version, or the rollback of an
    update that committed could not restore this database."""
    if source.kind != SourceKind.INSTALLED:
        return []
    default = default_version(conn, profile.extname)
    if default != current:
        return [
            f"{db}: the installed control file's default_version is {default}, not the installed {current}: a "
            "rollback could not restore this database (the dump's CREATE EXTENSION would create "
            f"{default}); use extension_source copy or command so the rollback can put the {current} files "
            "back"
        ]
    return []


# -- across databases ---------------------------------------------------------------------------------------


def scope_of(ctx: RunContext, source: Source, target: str, seen: list[_Seen]) -> Scope:
    """The databases as seen, in the plan's terms (the compatibility findings become warnings too)."""
    todo = [s for s in seen if s.current is not None]
    compat = [f for s in todo for f in s.compat]
    return Scope(
        extname=ctx.profile.extname,
        kind=ctx.spec.get("kind"),
        target_version=target,
        source=source,
        databases=[s.database for s in todo],
        already_at_target=[s.database for s in seen if s.at_target],
        from_versions={s.database: s.current for s in todo if s.current is not None},
        metadata_tables={s.database: s.metadata_table for s in todo},
        entities={s.database: s.entities for s in todo},
        compat=compat,
        warnings=[w for s in todo for w in s.warnings] + [describe_finding(f) for f in compat],
    )


def source_refusals(ctx: RunContext, scope: Scope) -> list[str]:
    """The files the source needs are there: copy: the target's and every old version's directory (the
    rollback copies those back); command: the program."""
    source, extname = scope.source, ctx.profile.extname
    if source.kind == SourceKind.COPY:
        olds = sorted(set(scope.from_versions.values()))
        return check_source_dir(ctx, source, extname, scope.target_version, olds)
    if source.kind == SourceKind.COMMAND:
        assert source.command is not None
        if not exists(ctx.host, source.command[0]):
            return [f"install command {source.command[0]} does not exist on {ctx.host.name}"]
    return []


def check_source_dir(ctx: RunContext, source: Source, extname: str, target: str, olds: list[str]) -> list[str]:
    out = []
    new_dir = source.directory(target)
    names = source_files(ctx.host, new_dir, extname)
    if f"{extname}.control" not in names:
        out.append(f"{new_dir} has no {extname}.control")
    if not any(n.endswith(f"--{target}.sql") for n in names):
        out.append(f"{new_dir} has no {extname} script for {target} ({extname}--<from>--{target}.sql)")
    for old in olds:
        old_dir = source.directory(old)
        if f"{extname}.control" not in source_files(ctx.host, old_dir, extname):
            out.append(f"{old_dir} (the {old} files, for a rollback) has no {extname}.control")
    return out


def compat_refusals(compat: list[dict[str, Any]], strict: bool) -> list[str]:
    """Bound findings always refuse (the update script cannot drop the function under them); with
    ``strict_compat`` every finding does."""
    out = []
    blocking = [f for f in compat if f["blocks_update"]]
    if blocking:
        out.append(
            "objects depend on functions the update drops or re-creates: "
            + "; ".join(f"{f['database']}: {f['object_type']} {f['object']} → {f['function']}" for f in blocking)
            + " (change or drop them first)"
        )
    if strict and compat:
        out.append(
            f"strict_compat: {len(compat)} object(s) use removed or changed functions: "
            + "; ".join(f"{f['object_type']} {f['object']}" for f in compat)
        )
    return out


def backup_space(ctx: RunContext, backup_dir: str, databases: list[str]) -> tuple[BackupSpace, list[str]]:
    """The space one custom-format dump per database needs and what backup_dir has; refusals: backup_dir inside
    the data directory, not empty, or too small."""
    cluster, host = ctx.cluster, ctx.host
    out = []
    if backup_dir == cluster.datadir or backup_dir.startswith(cluster.datadir.rstrip("/") + "/"):
        out.append(f"backup_dir {backup_dir} is inside the data directory {cluster.datadir}")
    if exists(host, backup_dir, cluster.os_user) and not is_empty_dir(host, backup_dir, cluster.os_user):
        out.append(f"backup_dir {backup_dir} exists and is not empty; give each run its own directory")
    with connect(cluster) as conn:
        size = sum(int(scalar_named(conn, "database-size", {"datname": d})) for d in databases)
    need = int(size * 1.1) + 16 * 2**20  # custom format compresses: the database size is an upper bound
    free = checks.free_bytes(host, backup_dir)
    if free < need:
        out.append(f"{free} bytes free for the backup in {backup_dir}, need {need}")
    return BackupSpace(need_backup=need, free_backup=free, databases_bytes=size), out


# -- the plan -----------------------------------------------------------------------------------------------


def refuse(ctx: RunContext, planned: ExtensionPlan, reason: str) -> None:
    """Records the refusal in the plan, then stops the run; the failed run's report (failure.failure_tail) carries
    the plan with the refusal, the compatibility findings and the warnings."""
    ctx.state.save("plan", plans.to_json(_form(planned, RefusedPlan, refused=reason)))
    raise PlanError(reason)


def plan(ctx: RunContext, admin: AdminGet) -> ExtensionPlan | AtTargetPlan:
    """No side effects: databases, versions, update path, compatibility, metadata health, rollback readiness,
    backup space. The plan task saves it as the run's plan; refusals stop the run before anything changed."""
    target = ctx.params["target_version"]
    check_target(ctx.spec, target)
    source = resolve_source(ctx.params["extension_source"], admin)
    seen = [inspect_database(ctx, db, source, target) for db in databases_in_scope(ctx)]
    scope = scope_of(ctx, source, target, seen)
    refusals = [r for s in seen for r in s.refusals]
    if not scope.databases and not refusals:
        return _form(scope, AtTargetPlan, reason=f"{scope.extname} is at {target} in every database in scope")
    refusals += source_refusals(ctx, scope)
    refusals += compat_refusals(scope.compat, ctx.params["strict_compat"])
    backup_dir = ctx.params["backup_dir"] or backup.default_dir(ctx)
    space, no_room = backup_space(ctx, backup_dir, scope.databases)
    planned = _form(scope, ExtensionPlan, backup_dir=backup_dir, space=space)
    if refusals + no_room:
        refuse(ctx, planned, "; ".join(refusals + no_room))
    for w in planned.warnings:
        log.warning("%s", w)
    return planned
