"""The facts the compatibility pages (and the DROP EXTENSION and settings placeholders) show, read from a
throwaway PostgreSQL in which every version of the pg_tviews stand-in (tests/extension/pg_tviews) is created.
Collected in a process forked while the main one parses the DAGs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from .diffs import diff
from .pages import ROOT, Unavailable
from .probes import (
    CALLS,
    EXTNAME,
    PROBE_SETUP,
    SCENARIOS,
    drop_cascade_probe,
    dump_all,
    parallel,
    restore_probes,
    run_probe,
    run_scenario,
)

FACTS_MAJOR = 17  # the PostgreSQL major whose catalogs the compatibility pages are read from (newest as fallback)
GUC_RE = re.compile(r"current_setting\(\s*'([A-Za-z_][\w]*\.[\w.]+)'")
EXT = {"extname": EXTNAME}  # the parameter of the extension-* catalogue queries


@dataclasses.dataclass
class Facts:
    """What the compatibility pages say, read from a server; ``error`` when no server could be used."""

    server: str = ""
    versions: list[str] = dataclasses.field(default_factory=list)
    default_version: str = ""
    update_paths: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    snaps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    updated: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # target → snapshot after UPDATE
    calls: dict[str, dict[str, tuple[str, str]]] = dataclasses.field(default_factory=dict)  # sql → version → result
    scenarios: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    restores: list[dict[str, str]] = dataclasses.field(default_factory=list)
    drop_cascade: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[int, tuple[str, list[str]]] = dataclasses.field(default_factory=dict)  # major → (version, names)
    settings_error: str = ""
    profile: dict[str, Any] | None = None
    profile_error: str = ""
    error: str = ""
    seconds: float = 0.0

    def need(self) -> None:
        if self.error:
            raise Unavailable(f"no facts from a scratch PostgreSQL: {self.error}")


def ext_snapshot(conn: Any) -> dict[str, Any]:
    """The extension as the catalogs of this database describe it: functions, members, columns of its tables,
    configuration tables, settings its functions read."""
    from . import library

    funcs = library.fetch_named(conn, "extension-functions", EXT)
    gucs = sorted({g for f in funcs for g in GUC_RE.findall(f.pop("body") or "")})
    columns: dict[str, list[dict[str, Any]]] = {}
    for c in library.fetch_named(conn, "extension-columns", EXT):
        columns.setdefault(c["table_name"], []).append(
            {
                "position": c["position"],
                "name": c["column_name"],
                "type": c["type"],
                "not_null": c["not_null"],
                "default": c["default_expr"],
            }
        )
    return {
        "version": library.scalar(conn, library.load("extension-version"), EXT),
        "functions": {f"{f['name']}({f['types']})": f for f in funcs},
        "members": [r["object"] for r in library.fetch_named(conn, "extension-members", EXT) if not r["is_function"]],
        "columns": columns,
        "config": list(library.scalar(conn, library.load("extension-config-tables"), EXT) or []),
        "gucs": gucs,
    }


def collect_facts() -> Facts:
    """Starts a throwaway PostgreSQL (as the postgres OS user), reads the facts, stops and removes it."""
    started = time.monotonic()
    facts = Facts()
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import pgharness
        from . import library
    except Exception as exc:
        facts.error = f"cannot import the test harness or the library: {type(exc).__name__}: {exc}"
        return facts
    versions = library.versions
    try:
        try:
            inst = versions.for_major(FACTS_MAJOR)
        except Exception:
            found = versions.discover()
            if not found:
                facts.error = "no PostgreSQL installation found"
                return facts
            inst = found[0]
    except Exception as exc:
        facts.error = f"cannot look for PostgreSQL installations: {exc}"
        return facts
    facts.server = f"PostgreSQL {inst.major}"
    _read_settings(facts, pgharness)
    root = tempfile.mkdtemp(prefix="pgupgrade-docs-pg-")
    cluster = None
    try:
        shutil.chown(root, pgharness.OS_USER, pgharness.OS_USER)
        os.chmod(root, 0o755)
        pgharness.install_standin(inst)  # tests/extension/pg_tviews/* into the installation's share/extension
        cluster = library.create_cluster(
            inst,
            f"{root}/data",
            name="docs",
            port=55000 + os.getpid() % 1000,
            socket_dir=f"{root}/sock",
            os_user=pgharness.OS_USER,
            settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
        )
        _read_facts(facts, cluster, inst, pgharness)
    except Exception as exc:
        facts.error = f"{type(exc).__name__}: {str(exc)[:500]}"
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                library.Service(cluster, pgharness.HOST).stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
        facts.seconds = time.monotonic() - started
    return facts


def _updated_snapshot(conn: Any, target: str) -> dict[str, Any]:
    """The extension after ALTER EXTENSION … UPDATE TO target, read inside a transaction that is rolled back."""
    from . import library

    conn.autocommit = False
    try:
        library.fetch(conn, f"ALTER EXTENSION {EXTNAME} UPDATE TO %s", (target,))
        return ext_snapshot(conn)
    finally:
        conn.rollback()
        conn.autocommit = True


def _read_versions(facts: Facts, cluster: Any) -> None:
    """The versions the server has scripts for, the default one, the update paths between them."""
    from . import library

    with library.connect(cluster) as conn:
        facts.versions = [r[0] for r in library.fetch(conn, library.load("extension-available-versions"), EXT)]
        facts.versions.sort(key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))
        facts.default_version = str(library.scalar(conn, library.load("extension-default-version"), EXT))
        facts.update_paths = [
            (r[0], r[1], r[2]) for r in library.fetch(conn, library.load("extension-update-paths"), EXT)
        ]


def _read_facts(facts: Facts, cluster: Any, inst: Any, pgharness: Any) -> None:
    from . import library

    _read_versions(facts, cluster)
    dbs = {v: "v" + v.replace(".", "_") for v in facts.versions}
    oldest, newest = facts.versions[0], facts.versions[-1]
    restores = [(v, None) for v in facts.versions] + [(v, v) for v in facts.versions if v != facts.default_version]
    restore_dbs: dict[tuple[str, str | None], str] = {case: f"restore_{i}" for i, case in enumerate(restores)}

    def create_db(name: str) -> None:
        with library.connect(cluster) as c:
            library.fetch(c, f"CREATE DATABASE {name}")

    parallel(create_db, [*dbs.values(), *restore_dbs.values()])

    def per_version(version: str) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        with library.connect(cluster, dbs[version]) as c:
            library.fetch(c, f"CREATE EXTENSION {EXTNAME} VERSION %s", (version,))
            snap = ext_snapshot(c)
            for stmt in PROBE_SETUP:
                library.fetch(c, stmt)
            return snap, {stmt: run_probe(c, stmt) for stmt in CALLS}

    for version, (snap, calls) in zip(facts.versions, parallel(per_version, facts.versions), strict=True):
        facts.snaps[version] = snap
        for stmt, result in calls.items():
            facts.calls.setdefault(stmt, {})[version] = result
    _profile_crosscheck(facts)
    scan = None
    try:
        ext = library.extension_catalog
        profile = library.profiles.get(EXTNAME)

        def scan(conn: Any, db: str, current: str, target: str) -> Any:
            return ext.compat_scan(conn, db, profile, current, target)
    except Exception as exc:
        facts.profile_error = facts.profile_error or f"{type(exc).__name__}: {exc}"

    def probes_on_oldest(_: Any) -> None:
        with library.connect(cluster, dbs[oldest]) as c:
            for target in facts.versions[1:]:
                facts.updated[target] = _updated_snapshot(c, target)
            for sc in SCENARIOS:
                facts.scenarios.append(run_scenario(c, sc, oldest, newest, scan))
            facts.drop_cascade = drop_cascade_probe(c)

    host, os_user = pgharness.HOST, pgharness.OS_USER
    dumps = dump_all(cluster, inst, dbs, host, os_user)  # before the probes below lock the extension's tables

    def restore_all(_: Any) -> None:
        facts.restores = restore_probes(cluster, inst, dumps, restore_dbs, facts.versions, host, os_user)

    parallel(lambda f: f(None), [probes_on_oldest, restore_all])


def _read_settings(facts: Facts, pgharness: Any) -> None:
    """Core settings of the newest installation of each major (``postgres --describe-config``)."""
    from . import library

    try:
        for inst in library.versions.discover():
            if inst.major in facts.settings:
                continue
            out = pgharness.HOST.run([inst.bin("postgres"), "--describe-config"], user=pgharness.OS_USER).stdout
            names = sorted({ln.split("\t", 1)[0].lower() for ln in out.splitlines() if ln.strip()})
            facts.settings[inst.major] = (str(inst.version), names)
    except Exception as exc:
        facts.settings_error = f"{type(exc).__name__}: {exc}"


def _profile_crosscheck(facts: Facts) -> None:
    """The extension profile (include/config/extension_profiles.json) declares what each version changes; the
    DAGs' plan and verify steps trust it. Compared here with the catalogs."""
    from . import library

    try:
        profile = library.profiles.get(EXTNAME)
    except Exception as exc:
        facts.profile_error = f"{type(exc).__name__}: {exc}"
        return
    checks = []
    table_name = profile.metadata_table
    for i in range(1, len(facts.versions)):
        a, b = facts.snaps[facts.versions[i - 1]], facts.snaps[facts.versions[i]]
        d = diff(a, b)
        v = facts.versions[i]
        observed = {
            "removed_functions": sorted({f["name"] for f in d["removed"]} - {f["name"] for f in d["added"]}),
            "added_functions": sorted({f["name"] for f in d["added"]} - {f["name"] for f in d["removed"]}),
            "changed_functions": sorted({c["name"] for c in d["changed"] if c["interface"]}),
            "added_columns": sorted(c["name"] for c in d["columns"].get(table_name, {}).get("added", [])),
            "removed_columns": sorted(c["name"] for c in d["columns"].get(table_name, {}).get("removed", [])),
        }
        for key, seen in observed.items():
            declared = sorted(getattr(profile, key, {}).get(v, []))
            checks.append({"version": v, "key": key, "declared": declared, "observed": seen, "ok": declared == seen})
    facts.profile = {"checks": checks, "metadata_table": table_name}
