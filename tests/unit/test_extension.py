"""pgupgrade.extension without a server: version rules, the source configuration, TOC parsing, the SQL files."""

from __future__ import annotations

import pytest

from pgupgrade import backup, profiles
from pgupgrade.errors import ConfigError, PlanError
from pgupgrade.extension import fields, source
from pgupgrade.sql import load

PROFILE = profiles.get("pg_tviews")
SERIES = {"kind": "series", "from_series": "0.1", "to_series": "0.2"}
MINOR = {"kind": "minor"}


def test_versions_compare_numerically():
    assert fields.vtuple("0.1.10") > fields.vtuple("0.1.9")
    assert fields.series("0.1.5") == "0.1"
    with pytest.raises(PlanError):
        fields.vtuple("0.2beta")


def test_changes_between_versions():
    assert fields.between(PROFILE.removed_functions, "0.1.5", "0.2.0") == ["pg_tviews_refresh_async"]
    assert fields.between(PROFILE.removed_functions, "0.1.5", "0.1.6") == []
    assert fields.between(PROFILE.added_columns, "0.1.6", "0.2.0") == [
        "query_plan",
        "source_hash",
        "stats_last_computed",
    ]


@pytest.mark.parametrize(
    ("spec", "current", "target", "ok"),
    [
        (SERIES, "0.1.5", "0.2.0", True),
        (SERIES, "0.1.6", "0.2.0", True),
        (SERIES, "0.1.4", "0.2.0", False),  # needs 0.1.5 first (profile.min_upgrade_from)
        (SERIES, "0.2.0", "0.2.0", "already"),
        (MINOR, "0.1.5", "0.1.6", True),
        (MINOR, "0.1.5", "0.2.0", False),  # a migration, not a minor update
        (MINOR, "0.1.6", "0.1.5", False),  # a downgrade
    ],
)
def test_version_verdict(spec, current, target, ok):
    verdict = fields.version_verdict(PROFILE, spec, current, target)
    if ok is True:
        assert verdict is None
    elif ok == "already":
        assert verdict == "already"
    else:
        assert verdict and verdict != "already"


def test_target_must_be_in_the_dags_series():
    fields.check_target(SERIES, "0.2.1")
    fields.check_target(MINOR, "0.1.7")
    with pytest.raises(ConfigError, match="target_version"):
        fields.check_target(SERIES, "0.1.6")


def test_source_configuration_is_admin_only_and_rollback_ready():
    assert source.resolve_source("installed", lambda _: None).kind == "installed"
    with pytest.raises(ConfigError, match="source_dir"):
        source.resolve_source("copy", lambda _: None)
    with pytest.raises(ConfigError, match="version"):  # the rollback needs the old version's directory too
        source.resolve_source("copy", lambda _: "/srv/pg_tviews")
    with pytest.raises(ConfigError):
        source.resolve_source("copy", lambda _: "relative/{version}")
    src = source.resolve_source("copy", lambda _: "/srv/pg_tviews/{version}")
    assert src.directory("0.1.5") == "/srv/pg_tviews/0.1.5"
    cmd = source.resolve_source("command", lambda _: ["/usr/local/sbin/install", "{extname}", "{version}"])
    assert cmd.argv("0.2.0", "pg_tviews") == ["/usr/local/sbin/install", "pg_tviews", "0.2.0"]
    with pytest.raises(ConfigError):
        cmd.argv("0.2.0; rm -rf /", "pg_tviews")
    assert source.Source.from_dict(cmd.as_dict()) == cmd


def test_toc_lookup():
    toc = [
        "3401; 0 16391 TABLE DATA public pg_tviews_metadata postgres",
        "3402; 0 16400 TABLE DATA public pg_tviews_metadata_old postgres",
        "2; 3079 16385 EXTENSION - pg_tviews ",
    ]
    assert backup.toc_has(toc, "TABLE DATA", "public", "pg_tviews_metadata")
    assert not backup.toc_has(toc[1:], "TABLE DATA", "public", "pg_tviews_metadata")
    assert backup.toc_has(toc, "EXTENSION", "-", "pg_tviews")


def test_sql_files_are_parameter_safe():
    """Files run with bound parameters double every percent sign and keep placeholders out of comments."""
    for name in ("upgrade-extension", "extension-dependents", "extension-function-bodies"):
        text = load(name)
        for line in text.splitlines():
            if line.lstrip().startswith("--"):
                assert "%(" not in line, (name, line)
        stripped = text.replace("%%", "").replace("%(", "")
        assert "%" not in stripped, name


class FakeHost:
    """Answers the few commands install_files runs; records every argv."""

    name = "fake"

    def __init__(self, files: list[str]) -> None:
        from pgupgrade.commands import Redactor

        self.redactor = Redactor()
        self.files = files
        self.calls: list[tuple[list[str], str | None]] = []

    def run(self, argv, *, user=None, timeout=300, env=None, cwd=None, check=True, stdin=None):
        from pgupgrade.commands import Result

        self.calls.append((argv, user))
        out = ""
        if argv[0].endswith("/postgres"):
            out = "postgres (PostgreSQL) 16.2\n"
        elif argv[0].endswith("/pg_config"):
            out = "/opt/pg/share\n/opt/pg/lib\n"
        elif argv[0] == "find":
            out = "".join(f"{f}\n" for f in self.files)
        return Result(argv, 0, out, "", 0.0, user)


def test_copy_installs_scripts_and_libraries_as_root():
    from pgupgrade.cluster import Cluster

    cluster = Cluster("c", "/tmp/sock", 5432, "postgres", "postgres", "/opt/pg/bin", "/var/lib/pg/data")
    host = FakeHost(["pg_tviews.control", "pg_tviews--0.1.5--0.2.0.sql", "pg_tviews--0.2.0.sql", "pg_tviews.so"])
    src = source.resolve_source("copy", lambda _: "/srv/pg_tviews/{version}")
    out = source.install_files(cluster, host, src, "0.2.0", "pg_tviews")
    installs = [(argv, user) for argv, user in host.calls if argv[0] == "install"]
    d = "/srv/pg_tviews/0.2.0"
    scripts = [f"{d}/pg_tviews--0.1.5--0.2.0.sql", f"{d}/pg_tviews--0.2.0.sql", f"{d}/pg_tviews.control"]
    assert installs == [
        (["install", "-m", "0644", "-t", "/opt/pg/share/extension", "--", *scripts], "root"),
        (["install", "-m", "0755", "-t", "/opt/pg/lib", "--", f"{d}/pg_tviews.so"], "root"),
    ]
    assert out["from"] == "/srv/pg_tviews/0.2.0"
    with pytest.raises(Exception, match="control"):
        source.install_files(cluster, FakeHost(["pg_tviews--0.2.0.sql"]), src, "0.2.0", "pg_tviews")
