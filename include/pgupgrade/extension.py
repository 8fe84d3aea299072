"""Extension upgrade runbook (the seed's 0.1-to-0.2-migration.md and extension-minor-update.md), one function per
DAG task, and the rollback's functions. Everything extension-specific comes from the ExtensionProfile.

Upgrade phases: plan (no side effects) → backup (``pg_dump -Fc`` per database, TOC verified) and documentation of
the current state → stop operations (the profile's triggers disabled, their previous state saved first; queue
empty; backup re-verified) → update (extension files per ``extension_source``; per database ONE transaction:
``ALTER EXTENSION … UPDATE`` + the profile's migration SQL) → verify → triggers back exactly as they were, forced
refresh, stats, validate → performance, checklist, report. Every destructive step journals before it acts.

Rollback: decided per database from the upgrade run's journal and the catalog (never from the conf): a database
whose update never committed only gets its triggers back; one that was updated is restored from the run's
backup (after the old extension files are back, so the dump's ``CREATE EXTENSION`` creates the old version).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from pgupgrade import backup, checks, facts, recovery, services, versions
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, ConfigError, PlanError, UnsafeState
from pgupgrade.params import COMMON, Field, check_abs_path
from pgupgrade.profiles import Conn, ExtensionProfile
from pgupgrade.scratch import exists, is_empty_dir
from pgupgrade.sql import connect, fetch, fetch_named, load, psql, scalar
from pgupgrade.state import RunState

log = logging.getLogger(__name__)

MIGRATION_DAG_ID = "pg_tviews_0_1_to_0_2_migration"
MINOR_DAG_ID = "pg_tviews_minor_update"
ROLLBACK_DAG_ID = "pg_tviews_extension_rollback"
SOURCE_DIR_VARIABLE = "pgupgrade_extension_source_dir"
INSTALL_COMMAND_VARIABLE = "pgupgrade_extension_install_command"
SOURCES = ("installed", "copy", "command")
SNAPSHOT_TABLE = ("pgupgrade", "extension_snapshot")
LOCK_TIMEOUT = "30s"  # DDL on busy tables (DISABLE TRIGGER, ALTER EXTENSION) gives up instead of queueing forever
SCAN_REPEAT = 3

AdminGet = Callable[[str], Any]  # reads an admin-set Airflow Variable (JSON); None when unset


# fmt: off
def upgrade_fields(target_default: str) -> list[Field]:
    """The params of both upgrade DAGs; only the default target differs."""
    return [
        *COMMON,
        Field("databases", "array", [], "Databases",
              "Databases to update; empty: every database that has the extension installed.", "Extension"),
        Field("target_version", "string", target_default, "Target version",
              "Extension version to update to.", "Extension", kind="version"),
        Field("extension_source", "string", "installed", "Extension files",
              "installed: the target's files are already in the installation's share directory; copy: copied "
              f"from the directory in the Airflow Variable {SOURCE_DIR_VARIABLE}; command: installed by the argv "
              f"in the Variable {INSTALL_COMMAND_VARIABLE} (admin configuration, never from the trigger conf).",
              "Extension", enum=SOURCES),
        Field("strict_compat", "boolean", False, "Strict compatibility",
              "Stop in the plan when any view, function or procedure uses a function the target removes or "
              "changes (otherwise: warnings in the plan and the report).", "Extension"),
        Field("perf_threshold_pct", "integer", 100, "Slowdown threshold (%)",
              "How much slower a TVIEW scan may be after the update than before.", "Validation", minimum=0,
              maximum=10000),
        Field("perf_action", "string", "warn", "On slowdown", "warn or fail when the threshold is exceeded.",
              "Validation", enum=("warn", "fail")),
    ]


FIELDS = upgrade_fields("0.2.0")
MINOR_FIELDS = upgrade_fields("0.1.6")
ROLLBACK_FIELDS: list[Field] = [
    Field("postgres_conn_id", "string", "pg_upgrade_target", "Cluster connection",
          "The cluster's Airflow postgres connection (as the upgrade run had it).", "Cluster", kind="conn_id"),
    Field("upgrade_dag_id", "string", MIGRATION_DAG_ID, "Upgrade DAG", "The DAG of the run to roll back.", "Run",
          enum=(MIGRATION_DAG_ID, MINOR_DAG_ID)),
    Field("upgrade_run_id", "string", "", "Upgrade run id", "The run to roll back (its journal decides the path).",
          "Run"),
    Field("accept_data_loss", "boolean", False, "Accept data loss",
          "Restore a database from the backup although its tables changed after the backup was taken.", "Safety"),
    Field("reason", "string", "", "Reason", "Why (for the audit trail).", "Run"),
]
# fmt: on


# -- versions -------------------------------------------------------------------------------------------


def vtuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise PlanError(f"cannot compare extension version {version!r} (expected numbers like 0.1.5)") from None


def series(version: str) -> str:
    """0.1.5 → 0.1 (for a 0.x extension the first two numbers name the API series)."""
    return ".".join(version.split(".")[:2])


def between(changes: dict[str, list[str]], current: str, target: str) -> list[str]:
    """Names listed for the versions after current up to and including target."""
    lo, hi = vtuple(current), vtuple(target)
    return sorted({n for v, names in changes.items() if lo < vtuple(v) <= hi for n in names})


def check_target(spec: dict[str, Any], target: str) -> None:
    """The DAG's series rule for target_version (a ConfigError names the field)."""
    if spec.get("kind") == "series" and series(target) != spec["to_series"]:
        raise ConfigError("target_version", f"this DAG updates to {spec['to_series']}.x, got {target}")


def version_verdict(profile: ExtensionProfile, spec: dict[str, Any], current: str, target: str) -> str | None:
    """None when current may be updated to target by this DAG; "already" when it is there; else the reason."""
    if vtuple(current) == vtuple(target):
        return "already"
    if vtuple(current) > vtuple(target):
        return f"installed {current} is newer than the target {target} (a downgrade is a restore: rollback DAG)"
    if spec.get("kind") == "series":
        if series(current) != spec["from_series"]:
            return f"this DAG updates {spec['from_series']}.x to {spec['to_series']}.x; installed is {current}"
        minimum = profile.min_upgrade_from.get(series(target))
        if minimum and vtuple(current) < vtuple(minimum):
            return (
                f"{profile.extname} {target} needs {minimum} or later installed first, found {current}: run "
                f"{MINOR_DAG_ID} to {minimum} first"
            )
    elif series(current) != series(target):
        return f"a minor update stays within {series(current)}.x; {current} → {target} is a migration"
    return None


# -- where the extension files come from ----------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """How the extension's files get into the installation: already there, copied from an admin-configured
    directory (``{version}`` in its path), or installed by an admin-configured argv (``{version}`` in it)."""

    kind: str
    dir_template: str | None = None
    command: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dir_template": self.dir_template,
            "command": list(self.command) if self.command else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        cmd = data.get("command")
        return cls(data["kind"], data.get("dir_template"), tuple(cmd) if cmd else None)

    def directory(self, version: str) -> str:
        assert self.dir_template is not None
        path: str = check_abs_path(SOURCE_DIR_VARIABLE, self.dir_template.replace("{version}", version))
        return path

    def argv(self, version: str, extname: str) -> list[str]:
        assert self.command is not None
        if not re.fullmatch(r"\d{1,4}(\.\d{1,4}){0,3}", version):
            raise ConfigError("target_version", f"not an extension version like 0.2.0: {version!r}")
        return [a.replace("{version}", version).replace("{extname}", extname) for a in self.command]


def resolve_source(kind: str, admin: AdminGet) -> Source:
    """Reads the admin configuration the source needs; refuses what a rollback could not undo."""
    if kind == "installed":
        return Source("installed")
    if kind == "copy":
        value = admin(SOURCE_DIR_VARIABLE)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"Variable {SOURCE_DIR_VARIABLE}",
                "must be set to a JSON string: an absolute "
                'directory path with {version} in it, e.g. "/srv/pg_tviews/{version}"',
            )
        if "{version}" not in value:
            raise ConfigError(
                f"Variable {SOURCE_DIR_VARIABLE}",
                "must contain {version}: the rollback copies the previous version's files from the same place",
            )
        check_abs_path(SOURCE_DIR_VARIABLE, value.replace("{version}", "0"))
        return Source("copy", dir_template=value)
    if kind == "command":
        from pgupgrade.installers import parse_install_command

        value = admin(INSTALL_COMMAND_VARIABLE)
        if value is None:
            raise ConfigError(f"Variable {INSTALL_COMMAND_VARIABLE}", "must be set (a JSON argv list with {version})")
        return Source("command", command=tuple(parse_install_command(value, f"Variable {INSTALL_COMMAND_VARIABLE}")))
    raise ConfigError("extension_source", f"must be one of {', '.join(SOURCES)}, got {kind!r}")


def _source_files(host: Host, directory: str, extname: str) -> list[str]:
    res = host.run(
        ["find", directory, "-maxdepth", "1", "-type", "f", "-name", f"{extname}*", "-printf", "%f\\n"],
        check=False,
        timeout=60,
    )
    return sorted(res.stdout.split()) if res.exit_code == 0 else []


def install_files(cluster: Cluster, host: Host, source: Source, version: str, extname: str) -> dict[str, Any]:
    """Puts one version's files into the cluster's installation (copy or command; nothing for installed)."""
    if source.kind == "installed":
        return {"source": "installed", "action": "none: the files are already in place"}
    inst = versions.inspect(cluster.bindir, host)
    if source.kind == "command":
        argv = source.argv(version, extname)
        res = host.run(argv, user="root", timeout=3600)
        return {"source": "command", "argv": argv, "seconds": round(res.duration_s, 3)}
    directory = source.directory(version)
    names = _source_files(host, directory, extname)
    scripts = [n for n in names if n == f"{extname}.control" or (n.startswith(f"{extname}--") and n.endswith(".sql"))]
    libs = [n for n in names if n.endswith(".so")]
    if f"{extname}.control" not in scripts:
        raise CheckFailed(f"{directory} has no {extname}.control")
    host.run(
        ["install", "-m", "0644", "-t", inst.extension_dir, "--", *[f"{directory}/{n}" for n in scripts]], user="root"
    )
    if libs:
        host.run(
            ["install", "-m", "0755", "-t", inst.pkglibdir, "--", *[f"{directory}/{n}" for n in libs]], user="root"
        )
    return {"source": "copy", "from": directory, "files": scripts + libs}


# -- catalog helpers ------------------------------------------------------------------------------------

_Q_MEMBER_FUNCTION = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
     AND d.refclassid = 'pg_catalog.pg_extension'::regclass
    JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
    WHERE e.extname = %s AND p.proname = %s)"""
_Q_MEMBER_TABLES = """
SELECT n.nspname::text, c.relname::text
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_extension'::regclass
JOIN pg_catalog.pg_class c ON c.oid = d.objid AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e'
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND (%(extname)s::text IS NULL OR e.extname = %(extname)s)
  AND (%(relname)s::text IS NULL OR c.relname = %(relname)s)
ORDER BY 1, 2"""
# a relation by name, resolved through the search path like the extension resolves it; quote: an unqualified
# name that is quoted first (entity names), else a (qualified, quoted) name as stored (backing tables)
_Q_RELATION = """
SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(CASE WHEN %(quote)s THEN pg_catalog.quote_ident(%(name)s) ELSE %(name)s END)"""
_Q_COLUMNS = """
SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
_Q_UPDATE_PATH = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension_update_paths(%s)
               WHERE source = %s AND target = %s AND path IS NOT NULL)"""
_Q_VERSION_AVAILABLE = """
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extension_versions WHERE name = %s AND version = %s)"""
# tuples written per table since the statistics were reset (also by aborted transactions)
_Q_WRITES = """
SELECT schemaname::text, relname::text, n_tup_ins + n_tup_upd + n_tup_del FROM pg_catalog.pg_stat_user_tables"""


def _member_function_exists(conn: Conn, extname: str, name: str) -> bool:
    return bool(scalar(conn, _Q_MEMBER_FUNCTION, (extname, name)))


def metadata_table(conn: Conn, profile: ExtensionProfile) -> tuple[str, str]:
    """(schema, name) of the extension's metadata table: its member table of the profile's name."""
    rows = fetch(conn, _Q_MEMBER_TABLES, {"extname": profile.extname, "relname": profile.metadata_table})
    if not rows:
        raise CheckFailed(f"extension {profile.extname} has no table {profile.metadata_table}")
    return str(rows[0][0]), str(rows[0][1])


def _relation(conn: Conn, name: str, *, quote: bool) -> str | None:
    rows = fetch(conn, _Q_RELATION, {"name": name, "quote": quote})
    return f"{rows[0][0]}.{rows[0][1]}" if rows else None


def _columns(conn: Conn, schema: str, table: str) -> list[tuple[str, str]]:
    return [(str(c), str(t)) for c, t in fetch(conn, _Q_COLUMNS, (schema, table))]


def update_path_exists(conn: Conn, extname: str, current: str, target: str) -> bool:
    return bool(scalar(conn, _Q_UPDATE_PATH, (extname, current, target)))


def default_version(conn: Conn, extname: str) -> str | None:
    v = scalar(conn, "SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = %s", (extname,))
    return str(v) if v is not None else None


def version_available(conn: Conn, extname: str, version: str) -> bool:
    return bool(scalar(conn, _Q_VERSION_AVAILABLE, (extname, version)))


def entity_tables(conn: Conn, profile: ExtensionProfile) -> dict[str, dict[str, Any]]:
    """Each entity's table (resolved like the extension does, through the search path), its columns and row
    count, and the backing table named in the metadata ("schema.name", None when it is missing)."""
    out: dict[str, dict[str, Any]] = {}
    q = psql.SQL("SELECT {e}::text, {b}::text FROM {t} ORDER BY 1").format(
        e=psql.Identifier(profile.entity_column),
        b=psql.Identifier(profile.backing_column),
        t=psql.Identifier(profile.metadata_table),
    )
    for entity, backing in fetch(conn, q):
        table = _relation(conn, entity, quote=True)
        info: dict[str, Any] = {
            "backing": backing,
            "backing_table": _relation(conn, backing, quote=False) if backing else None,
            "table": table,
        }
        if table:
            schema, name = table.split(".", 1)
            info["columns"] = [{"name": c, "type": t} for c, t in _columns(conn, schema, name)]
            info["rows"] = int(scalar(conn, psql.SQL("SELECT count(*) FROM {}").format(psql.Identifier(schema, name))))
        out[str(entity)] = info
    return out


def scan_times(conn: Conn, tables: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Best of a few full scans (count(*)) of each entity's table, in seconds."""
    out: dict[str, float] = {}
    for entity, info in tables.items():
        if not info.get("table"):
            continue
        schema, name = info["table"].split(".", 1)
        q = psql.SQL("SELECT count(*) FROM {}").format(psql.Identifier(schema, name))
        best = float("inf")
        for _ in range(SCAN_REPEAT):
            started = time.perf_counter()
            scalar(conn, q)
            best = min(best, time.perf_counter() - started)
        out[entity] = best
    return out


def prefixed_triggers(conn: Conn, prefix: str) -> list[dict[str, Any]]:
    """The profile's triggers with their pg_trigger.tgenabled (O, D, R, A); the LIKE in the SQL treats _ as a
    wildcard, so the prefix is checked exactly here."""
    return [
        t
        for t in fetch_named(conn, "triggers-with-prefix", {"prefix": prefix})
        if str(t["trigger_name"]).startswith(prefix)
    ]


_MODE_SQL = {"O": "ENABLE TRIGGER", "D": "DISABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}


def set_trigger_modes(conn: Conn, triggers: list[dict[str, Any]]) -> list[str]:
    """In the connection's (open) transaction: each trigger to its recorded mode; returns what changed."""
    changed = []
    with conn.cursor() as cur:
        cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for t in triggers:
            cur.execute(
                psql.SQL("ALTER TABLE {} {} {}").format(
                    psql.Identifier(t["schema"], t["table_name"]),
                    psql.SQL(_MODE_SQL[t["enabled"]]),
                    psql.Identifier(t["trigger_name"]),
                )
            )
            changed.append(f"{t['schema']}.{t['table_name']}.{t['trigger_name']} → {t['enabled']}")
    return changed


def trigger_differences(conn: Conn, prefix: str, recorded: list[dict[str, Any]]) -> list[str]:
    now = {(t["schema"], t["table_name"], t["trigger_name"]): t["enabled"] for t in prefixed_triggers(conn, prefix)}
    diffs = []
    for t in recorded:
        key = (t["schema"], t["table_name"], t["trigger_name"])
        if key not in now:
            diffs.append(f"trigger {'.'.join(key)} is missing")
        elif now[key] != t["enabled"]:
            diffs.append(f"trigger {'.'.join(key)} is {now[key]}, was {t['enabled']} before the run")
    return diffs


# -- compatibility -----------------------------------------------------------------------------------------


def compat_scan(conn: Conn, db: str, profile: ExtensionProfile, current: str, target: str) -> list[dict[str, Any]]:
    """Views, functions, procedures (and other objects) that use a function the target removes or changes.

    ``bound``: a pg_depend entry (views, SQL-standard bodies ...): the update script cannot drop or re-create
    the function while it exists, so it blocks the update. ``text``: the name appears in a late-bound body
    (plpgsql, plain sql): the object fails when it runs after the update."""
    removed = between(profile.removed_functions, current, target)
    changed = between(profile.changed_functions, current, target)
    names = removed + [c for c in changed if c not in removed]
    if not names:
        return []
    kind_of = {n: ("removed" if n in removed else "changed") for n in names}
    found: list[dict[str, Any]] = []
    for r in fetch_named(conn, "extension-dependents", {"extname": profile.extname, "functions": names}):
        found.append(
            {
                "database": db,
                "object_type": r["object_type"],
                "object": r["object"],
                "function": r["signature"],
                "kind": kind_of[r["function"]],
                "how": "bound",
                "blocks_update": True,
            }
        )
    for r in fetch_named(conn, "extension-function-bodies", {"names": names}):
        for n in names:
            if re.search(rf"(?<![\w$]){re.escape(n)}(?![\w$])", r["body"] or ""):
                found.append(
                    {
                        "database": db,
                        "object_type": r["object_type"],
                        "object": r["object"],
                        "function": n,
                        "kind": kind_of[n],
                        "how": "text",
                        "blocks_update": False,
                    }
                )
    return found


def describe_finding(f: dict[str, Any]) -> str:
    what = "is removed in the target" if f["kind"] == "removed" else "changes its signature in the target"
    effect = (
        "blocks the update (the update script cannot drop or re-create the function while it depends on it)"
        if f["blocks_update"]
        else "will fail or behave differently when it runs after the update"
    )
    return f"{f['database']}: {f['object_type']} {f['object']} uses {f['function']}, which {what}; it {effect}"


# -- plan ---------------------------------------------------------------------------------------------------


def _refuse(ctx: RunContext, plan_: dict[str, Any], reason: str) -> None:
    """Records the refusal in the plan, then stops the run; the failed run's report (runtime.failure_tail) carries
    the plan with the refusal, the compatibility findings and the warnings."""
    plan_["refused"] = reason
    ctx.state.save("plan", plan_)
    raise PlanError(reason)


def plan(ctx: RunContext, admin: AdminGet) -> dict[str, Any]:
    """No side effects: databases, versions, update path, compatibility, metadata health, rollback readiness,
    backup space. Saved as the run's plan; refusals stop the run before anything changed."""
    p, cluster, host, profile, spec = ctx.params, ctx.cluster, ctx.host, ctx.profile, ctx.spec
    target = p["target_version"]
    check_target(spec, target)
    source = resolve_source(p["extension_source"], admin)
    all_dbs = facts.user_databases(cluster)
    if p["databases"]:
        unknown = [d for d in p["databases"] if d not in all_dbs]
        if unknown:
            raise ConfigError("databases", f"no such database: {', '.join(unknown)}; have {', '.join(all_dbs)}")
        candidates = list(p["databases"])
        without = [d for d in candidates if d not in checks.extension_databases(cluster, candidates, profile)]
        if without:
            raise ConfigError("databases", f"{profile.extname} is not installed in {', '.join(without)}")
    else:
        candidates = checks.extension_databases(cluster, all_dbs, profile)
        if not candidates:
            raise PlanError(f"{profile.extname} is not installed in any database of {cluster.name}")
    plan_: dict[str, Any] = {
        "already_upgraded": False,
        "extname": profile.extname,
        "kind": spec.get("kind"),
        "target_version": target,
        "source": source.as_dict(),
        "databases": [],
        "already_at_target": [],
        "from_versions": {},
        "metadata_tables": {},
        "entities": {},
        "compat": [],
        "warnings": [],
    }
    refusals: list[str] = []
    for db in candidates:
        with connect(cluster, db) as conn:
            current = profile.installed_version(conn)
            assert current is not None
            verdict = version_verdict(profile, spec, current, target)
            if verdict == "already":
                plan_["already_at_target"].append(db)
                continue
            if verdict:
                refusals.append(f"{db}: {verdict}")
                continue
            plan_["databases"].append(db)
            plan_["from_versions"][db] = current
            plan_["metadata_tables"][db] = list(metadata_table(conn, profile))
            tables = entity_tables(conn, profile)
            plan_["entities"][db] = sorted(tables)
            orphans = [e for e, i in tables.items() if not i["backing_table"]]
            if orphans:
                refusals.append(
                    f"{db}: metadata rows whose backing table is missing: {', '.join(orphans)} (the "
                    "migration verifies every row's backing table; fix or remove these TVIEWs first)"
                )
            for prob in profile.problems(conn):
                plan_["warnings"].append(f"{db}: metadata problem before the update: {prob}")
            if source.kind == "installed" and not update_path_exists(conn, profile.extname, current, target):
                refusals.append(
                    f"{db}: the installation has no update path {current} → {target} for "
                    f"{profile.extname} (pg_extension_update_paths); install the {target} files first "
                    "or use extension_source copy/command"
                )
            plan_["compat"] += compat_scan(conn, db, profile, current, target)
            refusals += _rollback_readiness(conn, db, profile, source, current)
    plan_["warnings"] += [describe_finding(f) for f in plan_["compat"]]
    if not plan_["databases"] and not refusals:
        plan_.update(already_upgraded=True, reason=f"{profile.extname} is at {target} in every database in scope")
        ctx.state.save("plan", plan_)
        return plan_
    if source.kind == "copy":
        refusals += _check_source_dir(
            host, source, profile.extname, target, sorted(set(plan_["from_versions"].values()))
        )
    elif source.kind == "command":
        assert source.command is not None
        if not exists(host, source.command[0]):
            refusals.append(f"install command {source.command[0]} does not exist on {host.name}")
    blocking = [f for f in plan_["compat"] if f["blocks_update"]]
    if blocking:
        refusals.append(
            "objects depend on functions the update drops or re-creates: "
            + "; ".join(f"{f['database']}: {f['object_type']} {f['object']} → {f['function']}" for f in blocking)
            + " (change or drop them first)"
        )
    if p["strict_compat"] and plan_["compat"]:
        refusals.append(
            f"strict_compat: {len(plan_['compat'])} object(s) use removed or changed functions: "
            + "; ".join(f"{f['object_type']} {f['object']}" for f in plan_["compat"])
        )
    backup_dir = p["backup_dir"] or backup.default_dir(ctx.state.root, cluster.name, ctx.run_id)
    plan_["backup_dir"] = backup_dir
    refusals += _check_backup_dir(ctx, backup_dir, plan_)
    if refusals:
        _refuse(ctx, plan_, "; ".join(refusals))
    for w in plan_["warnings"]:
        log.warning("%s", w)
    ctx.state.save("plan", plan_)
    return plan_


def _rollback_readiness(conn: Conn, db: str, profile: ExtensionProfile, source: Source, current: str) -> list[str]:
    """A restore recreates the extension with the dump's CREATE EXTENSION, which installs the control file's
    default_version: with files already installed that must be the current version, or the rollback of an
    update that committed could not restore this database."""
    if source.kind != "installed":
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


def _check_source_dir(host: Host, source: Source, extname: str, target: str, olds: list[str]) -> list[str]:
    out = []
    new_dir = source.directory(target)
    names = _source_files(host, new_dir, extname)
    if f"{extname}.control" not in names:
        out.append(f"{new_dir} has no {extname}.control")
    if not any(n.endswith(f"--{target}.sql") for n in names):
        out.append(f"{new_dir} has no {extname} script for {target} ({extname}--<from>--{target}.sql)")
    for old in olds:
        old_dir = source.directory(old)
        if f"{extname}.control" not in _source_files(host, old_dir, extname):
            out.append(f"{old_dir} (the {old} files, for a rollback) has no {extname}.control")
    return out


def _check_backup_dir(ctx: RunContext, backup_dir: str, plan_: dict[str, Any]) -> list[str]:
    cluster, host = ctx.cluster, ctx.host
    out = []
    if backup_dir == cluster.datadir or backup_dir.startswith(cluster.datadir.rstrip("/") + "/"):
        out.append(f"backup_dir {backup_dir} is inside the data directory {cluster.datadir}")
    if exists(host, backup_dir, cluster.os_user) and not is_empty_dir(host, backup_dir, cluster.os_user):
        out.append(f"backup_dir {backup_dir} exists and is not empty; give each run its own directory")
    with connect(cluster) as conn:
        size = sum(int(scalar(conn, "SELECT pg_database_size(%s)", (d,))) for d in plan_["databases"])
    need = int(size * 1.1) + 16 * 2**20  # custom format compresses: the database size is an upper bound
    free = checks.free_bytes(host, backup_dir)
    plan_["space"] = {"need_backup": need, "free_backup": free, "databases_bytes": size}
    if free < need:
        out.append(f"{free} bytes free for the backup in {backup_dir}, need {need}")
    return out


# -- prepare --------------------------------------------------------------------------------------------------


def _writes(conn: Conn) -> dict[str, int]:
    """Tuples written per table (inserts + updates + deletes): an increase after the backup means something may
    have changed that a restore would lose."""
    return {f"{s}.{t}": int(w) for s, t, w in fetch(conn, _Q_WRITES)}


def _derived(conn: Conn, profile: ExtensionProfile) -> list[str]:
    """Tables whose contents the extension or the run itself rewrites: the member tables of every extension and
    the entity (TVIEW) tables. They are not compared when judging whether clients wrote after the backup."""
    members = [f"{s}.{t}" for s, t in fetch(conn, _Q_MEMBER_TABLES, {"extname": None, "relname": None})]
    tviews = [i["table"] for i in entity_tables(conn, profile).values() if i.get("table")]
    return sorted(set(members + tviews))


def take_backup(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """``pg_dump -Fc`` per database (TOC listed, the metadata table's data entry present), plus what a rollback
    needs to judge later changes: row counts (and checksums with verify_content), write counters, the tables the
    run itself rewrites."""
    if ctx.state.has("backup"):
        manifest: dict[str, Any] = ctx.state.load("backup")
        backup.verify(ctx.host, manifest, ctx.cluster.os_user)
        log.info("backup of this run already taken and verified: %s", manifest["backup_dir"])
        return _backup_summary(manifest)
    dbs = plan_["databases"]
    writes, derived = {}, {}
    for db in dbs:
        with connect(ctx.cluster, db) as conn:
            writes[db] = _writes(conn)
            derived[db] = _derived(conn, ctx.profile)
    snapshot = facts.snapshot(ctx.cluster, content=ctx.params["verify_content"])
    required = {db: [("TABLE DATA", s, t)] for db, (s, t) in plan_["metadata_tables"].items()}
    ctx.state.record("backup_started", backup_dir=plan_["backup_dir"])
    manifest = backup.dump_custom(ctx.cluster, ctx.host, plan_["backup_dir"], dbs, required=required)
    manifest["facts"] = {**snapshot, "databases": {db: snapshot["databases"][db] for db in dbs}}
    manifest["writes"] = writes
    manifest["derived"] = derived
    ctx.state.save("backup", manifest)
    return _backup_summary(manifest)


def _backup_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "backup_dir": manifest["backup_dir"],
        "total_bytes": manifest["total_bytes"],
        "databases": manifest["databases"],
    }


def document_state(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """The current state, as a JSON file in the run state and as rows of pgupgrade.extension_snapshot in each
    database: metadata rows, each TVIEW's columns and row count, scan times (the performance baseline)."""
    state: dict[str, Any] = {}
    for db in plan_["databases"]:
        with connect(ctx.cluster, db) as conn:
            version = ctx.profile.installed_version(conn)
            rows = ctx.profile.metadata_rows(conn)
            tables = entity_tables(conn, ctx.profile)
            state[db] = {
                "version": version,
                "reported_version": ctx.profile.reported_version(conn),
                "metadata": rows,
                "tviews": tables,
                "scan_s": scan_times(conn, tables),
            }
    ctx.state.save("state_before", state)
    ctx.state.record("snapshot_table_writing", table=".".join(SNAPSHOT_TABLE), databases=list(state))
    for db, s in state.items():
        with connect(ctx.cluster, db, autocommit=False) as conn, conn.cursor() as cur:
            cur.execute(load("extension-snapshot-table"))
            for row in s["metadata"]:
                entity = str(row[ctx.profile.entity_column])
                info = s["tviews"].get(entity, {})
                cur.execute(
                    psql.SQL("""
                    INSERT INTO {} (dag_id, run_id, extname, extversion, entity, metadata, tview_columns, tview_rows)
                    VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)
                    ON CONFLICT (dag_id, run_id, entity) DO UPDATE SET taken_at = now(), metadata = EXCLUDED.metadata,
                        tview_columns = EXCLUDED.tview_columns, tview_rows = EXCLUDED.tview_rows""").format(
                        psql.Identifier(*SNAPSHOT_TABLE)
                    ),
                    (
                        ctx.dag_id,
                        ctx.run_id,
                        ctx.profile.extname,
                        s["version"],
                        entity,
                        json.dumps(row, default=str),
                        json.dumps(info.get("columns")),
                        info.get("rows"),
                    ),
                )
            conn.commit()
    return {
        db: {"tviews": {e: i.get("rows") for e, i in s["tviews"].items()}, "metadata_rows": len(s["metadata"])}
        for db, s in state.items()
    }


# -- stop operations ------------------------------------------------------------------------------------------


def disable_triggers(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, int]:
    """Saves every prefixed trigger's state (once: a re-run never overwrites it with the disabled state), then
    disables the enabled ones, one transaction per database."""
    saved: dict[str, list[dict[str, Any]]] | None = ctx.state.load("triggers_before")
    if saved is None:
        saved = {}
        for db in plan_["databases"]:
            with connect(ctx.cluster, db) as conn:
                saved[db] = prefixed_triggers(conn, ctx.profile.trigger_prefix)
        ctx.state.save("triggers_before", saved)
    out = {}
    for db in plan_["databases"]:
        enabled = [t for t in saved[db] if t["enabled"] != "D"]
        ctx.state.record("triggers_disabling", database=db, triggers=[t["trigger_name"] for t in enabled])
        with connect(ctx.cluster, db, autocommit=False) as conn:
            set_trigger_modes(conn, [{**t, "enabled": "D"} for t in enabled])
            conn.commit()
        ctx.state.record("triggers_disabled", database=db, count=len(enabled))
        out[db] = len(enabled)
    return out


def final_backup_check(ctx: RunContext) -> dict[str, int]:
    """The backup files are unchanged (sizes, checksums) and each archive still lists the same TOC."""
    manifest = ctx.state.load("backup")
    if manifest is None:
        raise CheckFailed("no backup on record for this run")
    backup.verify(ctx.host, manifest, ctx.cluster.os_user)
    out = {}
    for db, meta in manifest["databases"].items():
        n = len(backup.toc(ctx.host, meta["file"], ctx.cluster.os_user, manifest["bindir"]))
        if n != meta["toc_entries"]:
            raise CheckFailed(f"backup of {db} now lists {n} TOC entries, {meta['toc_entries']} when written")
        out[db] = n
    return out


# -- update ----------------------------------------------------------------------------------------------------


def install_target_files(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    source = Source.from_dict(plan_["source"])
    if source.kind == "installed":
        return install_files(ctx.cluster, ctx.host, source, plan_["target_version"], ctx.profile.extname)
    ctx.state.record("extension_files_installing", version=plan_["target_version"], source=source.kind)
    result = install_files(ctx.cluster, ctx.host, source, plan_["target_version"], ctx.profile.extname)
    ctx.state.record("extension_files_installed", version=plan_["target_version"])
    return result


def update_extension(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """Per database ONE transaction: ALTER EXTENSION … UPDATE TO target, then the profile's migration SQL
    (include/sql/upgrade-extension.sql), which raises when a check fails; any error rolls both back."""
    profile, target = ctx.profile, plan_["target_version"]
    before = ctx.state.load("state_before") or {}
    todo = []
    for db in plan_["databases"]:
        with connect(ctx.cluster, db) as conn:
            current = profile.installed_version(conn)
            if current == target:
                log.info("%s: already at %s (an earlier attempt of this run)", db, target)
                continue
            if current is None or current != plan_["from_versions"][db]:
                raise CheckFailed(f"{db}: {profile.extname} is at {current}; the plan saw {plan_['from_versions'][db]}")
            if not update_path_exists(conn, profile.extname, current, target):
                raise CheckFailed(
                    f"{db}: no update path {current} → {target} for {profile.extname} after the files "
                    "were installed (pg_extension_update_paths)"
                )
            todo.append((db, current))
    out: dict[str, Any] = {}
    for db, current in todo:
        expected = [str(r[profile.entity_column]) for r in before.get(db, {}).get("metadata", [])]
        ctx.state.record("extension_update_started", database=db, version_from=current, version_to=target)
        started = time.monotonic()
        with connect(ctx.cluster, db, autocommit=False) as conn:
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    cur.execute(
                        psql.SQL("ALTER EXTENSION {} UPDATE TO {}").format(
                            psql.Identifier(profile.extname), psql.Literal(target)
                        )
                    )
                    result = None
                    if profile.migration_sql:
                        cur.execute(
                            load(profile.migration_sql),
                            {
                                "extname": profile.extname,
                                "target": target,
                                "metadata_table": profile.metadata_table,
                                "entity_column": profile.entity_column,
                                "backing_column": profile.backing_column,
                                "expected_entities": expected,
                                "removed_functions": between(profile.removed_functions, current, target),
                            },
                        )
                        row = cur.fetchone() if cur.description else None
                        result = row[0] if row else None
                conn.commit()
            except Exception as exc:
                conn.rollback()
                ctx.state.record("extension_update_failed", database=db, error=str(exc)[:2000])
                raise CheckFailed(f"{db}: update {current} → {target} failed and was rolled back: {exc}") from exc
        ctx.state.record("extension_updated", database=db, version=target, migration=result)
        out[db] = {"from": current, "to": target, "migration": result, "seconds": round(time.monotonic() - started, 3)}
    return out


def verify_extension(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """Version (catalog and the extension's own function), new columns and functions, removed ones gone,
    every metadata row still there."""
    profile, target = ctx.profile, plan_["target_version"]
    before = ctx.state.load("state_before") or {}
    out: dict[str, Any] = {}
    for db in plan_["databases"]:
        current = plan_["from_versions"][db]
        errors: list[str] = []
        with connect(ctx.cluster, db) as conn:
            installed, reported = profile.installed_version(conn), profile.reported_version(conn)
            if installed != target or reported != target:
                errors.append(f"version {installed} (reported {reported}), expected {target}")
            schema, table = metadata_table(conn, profile)
            cols = {c for c, _ in _columns(conn, schema, table)}
            missing_cols = [c for c in between(profile.added_columns, current, target) if c not in cols]
            stale_cols = [c for c in between(profile.removed_columns, current, target) if c in cols]
            if missing_cols:
                errors.append(f"{schema}.{table} lacks the new columns {', '.join(missing_cols)}")
            if stale_cols:
                errors.append(f"{schema}.{table} still has the removed columns {', '.join(stale_cols)}")
            answered = {}
            for fn in between(profile.added_functions, current, target):
                if not _member_function_exists(conn, profile.extname, fn):
                    errors.append(f"new function {fn} is missing")
                    continue
                answered[fn] = int(scalar(conn, psql.SQL("SELECT count(*) FROM {}()").format(psql.Identifier(fn))))
            left = [
                fn
                for fn in between(profile.removed_functions, current, target)
                if _member_function_exists(conn, profile.extname, fn)
            ]
            if left:
                errors.append(f"removed functions still present: {', '.join(left)}")
            entities = profile.entities(conn)
            expected = sorted(str(r[profile.entity_column]) for r in before.get(db, {}).get("metadata", []))
            if sorted(entities) != expected:
                errors.append(f"metadata rows: {expected} before, {sorted(entities)} after")
        if errors:
            raise CheckFailed(f"{db}: after the update: " + "; ".join(errors))
        out[db] = {
            "version": installed,
            "new_columns": between(profile.added_columns, current, target),
            "new_functions": answered,
            "metadata_rows": len(entities),
        }
    return out


# -- re-enable --------------------------------------------------------------------------------------------------


def restore_triggers(
    cluster: Cluster, state: RunState, profile: ExtensionProfile, databases: list[str], journal: RunState
) -> dict[str, Any]:
    """Puts back the recorded mode of every trigger the run disabled (journalled in ``journal``), then checks
    that every recorded trigger is exactly as before. Triggers that were disabled before stay disabled."""
    saved = state.load("triggers_before") or {}
    out: dict[str, Any] = {}
    for db in databases:
        recorded = saved.get(db)
        if recorded is None:
            continue
        with connect(cluster, db) as conn:
            now = {
                (t["schema"], t["table_name"], t["trigger_name"]): t["enabled"]
                for t in prefixed_triggers(conn, profile.trigger_prefix)
            }
        todo = [
            t
            for t in recorded
            if t["enabled"] != "D"
            and now.get((t["schema"], t["table_name"], t["trigger_name"])) not in (None, t["enabled"])
        ]
        journal.record("triggers_restoring", database=db, triggers=[t["trigger_name"] for t in todo])
        with connect(cluster, db, autocommit=False) as conn:
            changed = set_trigger_modes(conn, todo)
            conn.commit()
        with connect(cluster, db) as conn:
            diffs = trigger_differences(conn, profile.trigger_prefix, recorded)
        journal.record("triggers_restored", database=db, count=len(changed))
        if diffs:
            raise CheckFailed(f"{db}: triggers not as before the run: " + "; ".join(diffs))
        out[db] = {"restored": changed, "left_disabled": [t["trigger_name"] for t in recorded if t["enabled"] == "D"]}
    return out


def enable_triggers(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    return restore_triggers(ctx.cluster, ctx.state, ctx.profile, plan_["databases"], ctx.state)


def refresh_tviews(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, int]:
    """Every TVIEW refreshed with force (positional arguments: valid for both the old and the new signature)."""
    out = {}
    for db in plan_["databases"]:
        with connect(ctx.cluster, db) as conn:
            entities = ctx.profile.entities(conn)
            for entity in entities:
                ctx.profile.refresh(conn, entity, force=True)
        out[db] = len(entities)
    return out


def _tolerated_entities(ctx: RunContext, db: str) -> set[str]:
    """Entities whose backing table carries a prefixed trigger that was already disabled before the run: their
    'trigger disabled' findings are the operator's choice, kept as it was."""
    saved = (ctx.state.load("triggers_before") or {}).get(db, [])
    disabled_tables = {f"{t['schema']}.{t['table_name']}" for t in saved if t["enabled"] == "D"}
    if not disabled_tables:
        return set()
    with connect(ctx.cluster, db) as conn:
        tables = entity_tables(conn, ctx.profile)
    return {e for e, i in tables.items() if i.get("backing_table") in disabled_tables}


def check_stats(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """The profile's stats function (where the installed version has it) lists every TVIEW with every value set."""
    fn = ctx.profile.stats_function
    out: dict[str, Any] = {}
    for db in plan_["databases"]:
        with connect(ctx.cluster, db) as conn:
            if not fn or not _member_function_exists(conn, ctx.profile.extname, fn):
                out[db] = "no stats function in this version"
                continue
            rows = [r[0] for r in fetch(conn, psql.SQL("SELECT to_jsonb(s) FROM {}() s").format(psql.Identifier(fn)))]
            entities = ctx.profile.entities(conn)
        by_entity = {str(r.get(ctx.profile.entity_column)): r for r in rows}
        missing = [e for e in entities if e not in by_entity]
        empty = [
            f"{e} ({', '.join(k for k, v in r.items() if v is None)})"
            for e, r in by_entity.items()
            if any(v is None for v in r.values())
        ]
        if missing or empty:
            raise CheckFailed(
                f"{db}: {fn}(): "
                + "; ".join(
                    ([f"no stats for {', '.join(missing)}"] if missing else [])
                    + ([f"stats not populated: {', '.join(empty)}"] if empty else [])
                )
            )
        out[db] = by_entity
    return out


def validate_tviews(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    """The profile's validate function (where the installed version has it) returns no issues, except for
    TVIEWs whose trigger was disabled before the run (kept so, reported as warnings)."""
    fn = ctx.profile.validate_function
    out: dict[str, Any] = {}
    for db in plan_["databases"]:
        with connect(ctx.cluster, db) as conn:
            if not fn or not _member_function_exists(conn, ctx.profile.extname, fn):
                out[db] = "no validate function in this version"
                continue
            issues = [r[0] for r in fetch(conn, psql.SQL("SELECT to_jsonb(v) FROM {}() v").format(psql.Identifier(fn)))]
        tolerated = _tolerated_entities(ctx, db)
        bad = [i for i in issues if str(i.get(ctx.profile.entity_column)) not in tolerated]
        kept = [i for i in issues if str(i.get(ctx.profile.entity_column)) in tolerated]
        for i in kept:
            log.warning("%s: %s (its trigger was disabled before the run and stays so)", db, i)
        if bad:
            raise CheckFailed(f"{db}: {fn}() reports: " + "; ".join(json.dumps(i, default=str) for i in bad))
        out[db] = {"issues": [], "kept_as_before": kept}
    return out


# -- finish ----------------------------------------------------------------------------------------------------


def performance(ctx: RunContext, plan_: dict[str, Any]) -> dict[str, Any]:
    before = ctx.state.load("state_before") or {}
    threshold = ctx.params["perf_threshold_pct"]
    slow, timings = [], {}
    for db in plan_["databases"]:
        with connect(ctx.cluster, db) as conn:
            after = scan_times(conn, entity_tables(conn, ctx.profile))
        for entity, t_after in after.items():
            t_before = before.get(db, {}).get("scan_s", {}).get(entity)
            timings[f"{db}.{entity}"] = {"before_s": t_before, "after_s": t_after}
            if t_before is not None and t_after > max(t_before, 0.005) * (1 + threshold / 100):
                slow.append(f"{db}.{entity}: {t_before * 1000:.1f} ms before, {t_after * 1000:.1f} ms after")
    if slow and ctx.params["perf_action"] == "fail":
        raise CheckFailed(f"slower than the {threshold}% threshold: " + "; ".join(slow))
    for line in slow:
        log.warning("slower after the update: %s", line)
    result = {"threshold_pct": threshold, "slower": slow, "timings": timings}
    ctx.state.save("performance", result)
    return result


def final_checklist(ctx: RunContext, plan_: dict[str, Any]) -> list[dict[str, Any]]:
    """checks.health (server, indexes, disabled prefixed triggers, extension version, metadata errors, queue):
    a disabled trigger counts only when it was enabled before the run; a non-empty queue is a warning (clients
    may write again)."""
    rows: list[dict[str, Any]] = checks.health(ctx.cluster, plan_["databases"], ctx.profile)
    saved = ctx.state.load("triggers_before") or {}
    failed = []
    for r in rows:
        if r["check"].startswith("no disabled triggers"):
            with connect(ctx.cluster, r["database"]) as conn:
                diffs = trigger_differences(conn, ctx.profile.trigger_prefix, saved.get(r["database"], []))
            r["ok"], r["detail"] = not diffs, "; ".join(diffs) or "every trigger as before the run"
        if r["check"] == f"{ctx.profile.extname} version" and r["detail"] != plan_["target_version"]:
            r["ok"] = False
        if not r["ok"] and r["check"] != "queue empty":
            failed.append(f"{r['database']}: {r['check']} ({r['detail']})")
        elif not r["ok"]:
            log.warning("%s: %s (%s)", r["database"], r["check"], r["detail"])
    ctx.state.save("checklist", rows)
    if failed:
        raise CheckFailed("final checklist: " + "; ".join(failed))
    return rows


def write_report(ctx: RunContext, status: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    from pgupgrade import report

    plan_ = ctx.state.load("plan") or {}
    triggers = ctx.state.load("triggers_before") or {}
    before = ctx.state.load("state_before") or {}
    off = ctx.state.first("triggers_disabling")
    on = next((e for e in reversed(ctx.state.events()) if e["event"] == "triggers_restored"), None)
    ext = {
        "extname": plan_.get("extname"),
        "target_version": plan_.get("target_version"),
        "from_versions": plan_.get("from_versions"),
        "compatibility": plan_.get("compat", []),
        "triggers_before": triggers,
        "tview_rows_before": {
            db: {e: i.get("rows") for e, i in s.get("tviews", {}).items()} for db, s in before.items()
        },
        "triggers_disabled": {"from": off["at"] if off else None, "to": on["at"] if on else None},
        "backup": _backup_summary(ctx.state.load("backup")) if ctx.state.has("backup") else None,
        "performance": ctx.state.load("performance"),
        "checklist": ctx.state.load("checklist"),
    }
    rep = report.build(ctx.state, status=status, extra={"extension": ext, **(extra or {})})
    json_path, md_path = report.write(ctx.state, rep)
    md_path.write_text(md_path.read_text() + _markdown(ext))
    log.info("report: %s", md_path)
    return {"json": str(json_path), "markdown": str(md_path)}


def _markdown(ext: dict[str, Any]) -> str:
    lines = ["", f"## Extension {ext.get('extname')} → {ext.get('target_version')}", ""]
    for db, v in (ext.get("from_versions") or {}).items():
        rows = ext["tview_rows_before"].get(db, {})
        lines.append(
            f"- `{db}`: from {v}; TVIEW rows before: " + (", ".join(f"{e}={n}" for e, n in rows.items()) or "-")
        )
    if ext.get("backup"):
        for db, meta in ext["backup"]["databases"].items():
            lines.append(f"- backup of `{db}`: `{meta['file']}` ({meta['toc_entries']} TOC entries)")
    if ext["triggers_disabled"]["from"]:
        lines.append(
            f"- triggers disabled {ext['triggers_disabled']['from']} → re-enabled {ext['triggers_disabled']['to']}"
        )
    if ext.get("compatibility"):
        lines += ["", "### Compatibility", ""] + [f"- {describe_finding(f)}" for f in ext["compatibility"]]
    perf = ext.get("performance")
    if perf:
        lines += ["", f"### TVIEW scan times (threshold {perf['threshold_pct']}%)", ""]
        lines += ["| TVIEW | before ms | after ms |", "|---|---|---|"]
        for name, t in perf["timings"].items():
            b = f"{t['before_s'] * 1000:.2f}" if t["before_s"] is not None else "-"
            lines.append(f"| {name} | {b} | {t['after_s'] * 1000:.2f} |")
        lines += [f"- slower: {line}" for line in perf["slower"]]
    if ext.get("checklist"):
        lines += ["", "### Final checklist", ""]
        for r in ext["checklist"]:
            if r["check"] != "server accepts queries":
                mark = "ok" if r["ok"] else "FAILED"
                lines.append(f"- {mark}: {r['database']}: {r['check']} {r['detail'] or ''}".rstrip())
    return "\n".join(lines) + "\n"


# -- rollback ---------------------------------------------------------------------------------------------------


def upgrade_state(ctx: RunContext) -> RunState:
    return RunState.for_run(ctx.params["upgrade_dag_id"], ctx.params["upgrade_run_id"], ctx.state.root)


def _update_started(up: RunState, db: str) -> bool:
    return any(e["event"] == "extension_update_started" and e.get("database") == db for e in up.events())


def data_loss_risks(cluster: Cluster, manifest: dict[str, Any], databases: list[str]) -> list[str]:
    """Changes to tables after the backup that a restore would undo: row counts, checksums (with verify_content)
    and write counters of every table the run does not rewrite itself (best effort: statistics reach the
    counters up to a few seconds late)."""
    if not databases:
        return []
    now = facts.snapshot(
        cluster, content=any("md5" in t for d in manifest["facts"]["databases"].values() for t in d["tables"].values())
    )
    risks = []
    for db in databases:
        skip = set(manifest["derived"].get(db, []))
        before_t = manifest["facts"]["databases"][db]["tables"]
        now_t = now["databases"].get(db, {}).get("tables", {})
        with connect(cluster, db) as conn:
            writes = _writes(conn)
        for table, b in before_t.items():
            if table in skip or table.startswith(f"{SNAPSHOT_TABLE[0]}.") or table not in now_t:
                continue
            a = now_t[table]
            if a["rows"] != b["rows"]:
                risks.append(f"{db}.{table}: {b['rows']} rows in the backup, {a['rows']} now")
            elif "md5" in b and b.get("md5") != a.get("md5"):
                risks.append(f"{db}.{table}: content changed since the backup")
            elif writes.get(table, 0) > manifest["writes"].get(db, {}).get(table, 0):
                risks.append(f"{db}.{table}: written since the backup (statistics)")
    return risks


def assess(ctx: RunContext) -> dict[str, Any]:
    """Per database, from the upgrade run's journal and the catalog: restore it (its update committed), or only
    give its triggers back (nothing else changed). Refuses a restore that would lose later writes."""
    up = upgrade_state(ctx)
    if not ctx.params["upgrade_run_id"] or not up.dir.exists():
        raise ConfigError("upgrade_run_id", f"no state for {up.dag_id} run {up.run_id!r} in {up.dir}")
    if services.start_if_down(ctx.cluster, ctx.host):  # the server died under the run (this DAG never stops it)
        ctx.state.record("server_started", why="no server ran when the rollback began")
    plan_ = up.load("plan")
    if not plan_ or plan_.get("refused") or plan_.get("already_upgraded") or "from_versions" not in plan_:
        why = (plan_ or {}).get("refused") or (plan_ or {}).get("reason") or "the run stopped before its plan"
        return {
            "path": "nothing",
            "why": f"the upgrade run changed nothing ({why})",
            "restore": [],
            "triggers": [],
            "put_back_files": False,
            "databases": {},
        }
    per_db: dict[str, str] = {}
    restore: list[str] = []
    for db, old in plan_["from_versions"].items():
        if not _update_started(up, db):
            per_db[db] = "the update never started here"
            continue
        with connect(ctx.cluster, db) as conn:
            now = ctx.profile.installed_version(conn)
        if now == old:
            per_db[db] = f"the update transaction never committed ({ctx.profile.extname} still {old})"
        else:
            per_db[db] = f"the update committed ({ctx.profile.extname} {now}, was {old}): restore from the backup"
            restore.append(db)
    triggers = [
        db
        for db in plan_["databases"]
        if any(e["event"] == "triggers_disabling" and e.get("database") == db for e in up.events())
    ]
    source = Source.from_dict(plan_["source"])
    put_back = source.kind != "installed" and up.happened("extension_files_installing")
    why = "; ".join(f"{db}: {w}" for db, w in per_db.items()) or "no database was touched"
    if restore:
        manifest = up.load("backup")
        if manifest is None:
            raise UnsafeState(f"{', '.join(restore)} need a restore but the upgrade run has no backup on record")
        risks = data_loss_risks(ctx.cluster, manifest, restore)
        if risks and not ctx.params["accept_data_loss"]:
            # no restore: the committed update stays, its triggers come back and verify checks the new version
            return {
                "path": "keep_new",
                "why": why,
                "refused": "a restore would undo changes made after the backup: "
                + "; ".join(risks[:10])
                + " (set accept_data_loss=true to restore anyway)",
                "kept": restore,
                "restore": [],
                "triggers": triggers,
                "put_back_files": False,
                "databases": per_db,
            }
    path = "restore" if restore else ("triggers_only" if triggers or put_back else "nothing")
    return {
        "path": path,
        "why": why,
        "restore": restore,
        "triggers": triggers,
        "put_back_files": put_back,
        "databases": per_db,
    }


def verify_kept_new(ctx: RunContext, decision: dict[str, Any]) -> NoReturn:
    """The restore was refused (it would lose later writes): the databases whose update committed keep the new
    version, checked as the update run checks it (version, columns, functions, metadata rows, the validate
    function; restore_triggers has put the triggers back). Then the refusal is raised all the same, so the run
    fails and the lock waits for a person (``accept_data_loss``), saying whether the kept version passed."""
    up = upgrade_state(ctx)
    plan_ = dict(up.load("plan") or {})
    plan_["databases"] = decision["kept"]
    as_run = replace(ctx, state=up)
    errors: list[str] = []
    try:
        verify_extension(as_run, plan_)
        validate_tviews(as_run, plan_)
    except CheckFailed as exc:
        errors.append(str(exc))
    target = plan_.get("target_version")
    if errors:
        raise UnsafeState(
            f"{decision['refused']}; {ctx.profile.extname} {target} kept in {', '.join(decision['kept'])}, and "
            "it does NOT pass the checks: " + "; ".join(errors)
        )
    ctx.state.record("kept_new_verified", databases=decision["kept"], version=target)
    raise UnsafeState(
        f"{decision['refused']}; {ctx.profile.extname} {target} kept in {', '.join(decision['kept'])}: it passes "
        "the update's checks (version, columns, functions, metadata rows, validate) with its triggers back"
    )


def put_back_files(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """FIRST: the old version's files back (copy/command), so that a restore's CREATE EXTENSION creates the old
    version; then, for every database to restore, the control file's default_version must be its old version."""
    up = upgrade_state(ctx)
    plan_ = up.load("plan") or {}
    out: dict[str, Any] = {}
    olds = sorted(
        {plan_["from_versions"][db] for db in (decision["restore"] or plan_.get("from_versions", {}))}, key=vtuple
    )
    if decision["put_back_files"]:
        source = Source.from_dict(plan_["source"])
        for old in olds:
            ctx.state.record("extension_files_restoring", version=old)
            out[old] = install_files(ctx.cluster, ctx.host, source, old, ctx.profile.extname)
    for db in decision["restore"]:
        old = plan_["from_versions"][db]
        with connect(ctx.cluster, db) as conn:
            default = default_version(conn, ctx.profile.extname)
            available = version_available(conn, ctx.profile.extname, old)
        if default != old or not available:
            raise UnsafeState(
                f"{db}: restoring the backup would create {ctx.profile.extname} {default} (the control "
                f"file's default_version), not {old}: put the {old} files back first"
            )
    return out


def restore_databases(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """``pg_restore --clean --if-exists --single-transaction`` of each updated database from the upgrade run's
    backup: the dump's CREATE EXTENSION recreates the old version (checked before and after)."""
    up = upgrade_state(ctx)
    plan_, manifest = up.load("plan") or {}, up.load("backup")
    out: dict[str, Any] = {}
    for db in decision["restore"]:
        old = plan_["from_versions"][db]
        ctx.state.record("database_restore_started", database=db, archive=manifest["databases"][db]["file"])
        started = time.monotonic()
        backup.restore_custom(ctx.cluster, ctx.host, manifest["databases"][db]["file"], db, bindir=manifest["bindir"])
        with connect(ctx.cluster, db) as conn:
            installed, reported = ctx.profile.installed_version(conn), ctx.profile.reported_version(conn)
        ctx.state.record("database_restored", database=db, version=installed)
        if installed != old or reported != old:
            raise CheckFailed(
                f"{db}: after the restore {ctx.profile.extname} is {installed} (reports {reported}), expected {old}"
            )
        out[db] = {"version": installed, "seconds": round(time.monotonic() - started, 3)}
    return out


def rollback_triggers(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    return restore_triggers(ctx.cluster, upgrade_state(ctx), ctx.profile, decision["triggers"], ctx.state)


def verify_rolled_back(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """Every database of the plan is on its old version with its triggers as before; restored ones also hold
    exactly the backup's row counts and the metadata rows documented before the update."""
    up = upgrade_state(ctx)
    plan_ = up.load("plan") or {}
    if decision["path"] == "nothing":
        return {"checked": "nothing was changed"}
    if decision["path"] == "keep_new":
        verify_kept_new(ctx, decision)
    saved = up.load("triggers_before") or {}
    before = up.load("state_before") or {}
    manifest = up.load("backup")
    now = facts.snapshot(ctx.cluster) if decision["restore"] else None
    errors: list[str] = []
    out: dict[str, Any] = {}
    for db, old in plan_["from_versions"].items():
        with connect(ctx.cluster, db) as conn:
            installed, reported = ctx.profile.installed_version(conn), ctx.profile.reported_version(conn)
            trig = trigger_differences(conn, ctx.profile.trigger_prefix, saved.get(db, []))
            metadata = ctx.profile.metadata_rows(conn)
        if installed != old or reported != old:
            errors.append(f"{db}: {ctx.profile.extname} {installed} (reports {reported}), expected {old}")
        errors += [f"{db}: {d}" for d in trig]
        if db in decision["restore"] and before.get(db):
            if json.dumps(metadata, sort_keys=True, default=str) != json.dumps(
                before[db]["metadata"], sort_keys=True, default=str
            ):
                errors.append(f"{db}: metadata rows differ from those documented before the update")
        if db in decision["restore"] and now is not None and manifest is not None:
            b_t = manifest["facts"]["databases"][db]["tables"]
            a_t = {k: v for k, v in now["databases"][db]["tables"].items() if not k.startswith(f"{SNAPSHOT_TABLE[0]}.")}
            for table in sorted(set(b_t) | set(a_t)):
                if table not in a_t or table not in b_t or a_t[table]["rows"] != b_t[table]["rows"]:
                    errors.append(
                        f"{db}.{table}: {b_t.get(table, {}).get('rows')} rows in the backup, "
                        f"{a_t.get(table, {}).get('rows')} now"
                    )
        out[db] = {"version": installed, "metadata_rows": len(metadata), "restored": db in decision["restore"]}
    if errors:
        raise CheckFailed("after the rollback: " + "; ".join(errors))
    return out


def write_rollback_report(ctx: RunContext) -> dict[str, str]:
    decision = ctx.state.load("decision") or {}
    return recovery.write_report(
        ctx, restored_databases=decision.get("restore"), triggers_restored_in=decision.get("triggers")
    )


def decision_of(ctx: RunContext) -> dict[str, Any]:
    data: dict[str, Any] | None = ctx.state.load("decision")
    if data is None:
        raise CheckFailed("no rollback decision on record (the assess task did not finish)")
    return data
