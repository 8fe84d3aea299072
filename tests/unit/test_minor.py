"""Minor upgrade without servers: params, apt-cache policy / pg_lsclusters / ps parsing, the admin command, plans
recorded before MinorPlan."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgupgrade import plans
from pgupgrade.errors import ConfigError, UnsafeState
from pgupgrade.install_command import parse_install_command
from pgupgrade.minor import fields, installers
from pgupgrade.minor.fields import Installer
from pgupgrade.minor.plan import MinorPlan

POLICY = """\
postgresql-15:
  Installed: 15.18-0+deb12u1
  Candidate: 15.20-0+deb12u1
  Version table:
     15.20-0+deb12u1 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 15.18-0+deb12u1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
     15.17-0+deb12u1 100
        100 /var/lib/dpkg/status
"""


def test_apt_policy_parsing() -> None:
    pol = installers.parse_apt_policy("postgresql-15", POLICY)
    assert pol.installed == "15.18-0+deb12u1" and pol.candidate == "15.20-0+deb12u1"
    assert list(pol.versions) == ["15.20-0+deb12u1", "15.18-0+deb12u1", "15.17-0+deb12u1"]
    assert pol.matching("15.20") == ["15.20-0+deb12u1"] and pol.matching("15.2") == []
    assert pol.downloadable("15.18-0+deb12u1") and not pol.downloadable("15.17-0+deb12u1")
    none = installers.parse_apt_policy("x", "x:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n")
    assert none.installed is None and none.candidate is None and none.versions == {}


@pytest.mark.parametrize(
    ("debian", "upstream"),
    [("15.20-0+deb12u1", "15.20"), ("1:15.5-1.pgdg22.04+1", "15.5"), ("15.4", "15.4")],
)
def test_upstream_version(debian: str, upstream: str) -> None:
    assert installers.upstream_version(debian) == upstream


def test_apt_argv_pins_exact_versions() -> None:
    argv = installers.apt_install_argv(
        {"postgresql-15": "15.20-0+deb12u1", "postgresql-client-15": "15.20-0+deb12u1"}, allow_downgrades=True
    )
    assert argv[:3] == ["apt-get", "install", "-y"] and "--allow-downgrades" in argv
    assert argv[-2:] == ["postgresql-15=15.20-0+deb12u1", "postgresql-client-15=15.20-0+deb12u1"]
    assert "--allow-downgrades" not in installers.apt_install_argv({"p": "1"}, allow_downgrades=False)
    assert installers.apt_install_argv({"p": "1"}, allow_downgrades=False, download_only=True)[:3] == [
        "apt-get",
        "install",
        "--download-only",
    ]


def test_lsclusters_and_postmasters() -> None:
    ls = (
        "15 main 5432 down postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log\n"
        "15 other 5433 online postgres /var/lib/postgresql/15/other/ /var/log/postgresql/x.log\n"
    )
    got = installers.parse_lsclusters(ls)
    assert [(c["name"], c["status"], c["port"], c["datadir"]) for c in got] == [
        ("main", "down", 5432, "/var/lib/postgresql/15/main"),
        ("other", "online", 5433, "/var/lib/postgresql/15/other"),
    ]
    ps = (
        "  101 /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/other -c config_file=/etc/x\n"
        "  102 postgres: 15/other: checkpointer\n"
        "  103 /opt/pgbin/15.18/usr/lib/postgresql/15/bin/postgres -D /tmp/x/data\n"
        "  104 /usr/lib/postgresql/15/bin/postgres -D/srv/pg\n"
    )
    assert installers.parse_postmasters(ps, "/usr/lib/postgresql/15/bin/") == [
        {"pid": 101, "pgdata": "/var/lib/postgresql/15/other"},
        {"pid": 104, "pgdata": "/srv/pg"},
    ]


def test_install_command_comes_from_admin_config_with_version() -> None:
    argv = parse_install_command('["/usr/local/sbin/pg-install", "{major}", "{version}"]', "Variable v")
    assert installers.render_command(argv, "15.20") == ["/usr/local/sbin/pg-install", "15", "15.20"]
    for bad in ('"yum install postgresql"', "[]", '["/bin/true"]', "[1]", "not json"):
        with pytest.raises(ConfigError):
            parse_install_command(bad, "Variable v")
    with pytest.raises(ConfigError):
        installers.render_command(argv, "15.20; rm -rf /")


def test_params() -> None:
    p = fields.validate_params({"target_version": "15.20", "new_bindir": "/opt/pg/15.20/bin"})
    assert p["installer"] == "bindir" and p["min_free_gb"] == 20 and p["allow_downgrade"] is False
    assert p["ack_other_clusters"] is False and p["dry_run"] is False
    assert fields.validate_params({"target_version": "15.20", "installer": "apt"})["new_bindir"] == ""
    with pytest.raises(ConfigError) as err:
        fields.validate_params({"target_version": "15.20", "new_bindir": "/opt/../etc"})
    assert err.value.field == "new_bindir"
    with pytest.raises(ConfigError) as err:
        fields.validate_params({"target_version": "15.20", "installer": "apt", "min_free_gb": -1})
    assert err.value.field == "min_free_gb"
    rollback_fields = {f.name: f for f in fields.ROLLBACK_FIELDS}
    assert rollback_fields["upgrade_dag_id"].default == fields.DAG_ID


def _recorded_by_the_dict_code(installer: str) -> dict[str, Any]:
    """A plan as minor.plan wrote it before MinorPlan (no schema_version), one per installer."""
    return {
        "already_upgraded": False,
        "installer": installer,
        "old": {
            "version": "15.18",
            "version_num": 150018,
            "version_text": "PostgreSQL 15.18 on x86_64-pc-linux-gnu",
            "bindir": "/usr/lib/postgresql/15/bin",
            "datadir": "/var/lib/postgresql/15/main",
        },
        "new": {
            "version": "15.20",
            "version_num": 150020,
            "bindir": "/opt/pg/15.20/bin" if installer == "bindir" else "/usr/lib/postgresql/15/bin",
            "datadir": "/var/lib/postgresql/15/main",
        },
        "connection_bindir": "/usr/lib/postgresql/15/bin",
        "method": f"minor upgrade ({installer})",
        "transfer_mode": None,
        "method_reason": "why",
        "apt": {
            "packages": {"postgresql-15": "15.20-0+deb12u1", "postgresql-client-15": "15.20-0+deb12u1"},
            "previous_packages": {"postgresql-15": "15.18-0+deb12u1", "postgresql-client-15": "15.18-0+deb12u1"},
            "installed_before": {"postgresql-15": "15.18-0+deb12u1", "postgresql-client-15": None},
        }
        if installer == "apt"
        else None,
        "command": {
            "argv": ["/usr/local/sbin/pg-switch", "{major}", "{version}"],
            "install": ["/usr/local/sbin/pg-switch", "15", "15.20"],
            "rollback": ["/usr/local/sbin/pg-switch", "15", "15.18"],
        }
        if installer == "command"
        else None,
        "other_clusters": [] if installer == "bindir" else ["15/other (online, port 5433, /srv/pg/other)"],
        "databases": ["app", "postgres"],
        "data_bytes": 123456789,
        "initdb": {
            "encoding": "UTF8",
            "locale": "C.UTF-8",
            "checksums": True,
            "wal_segsize_mb": 16,
            "superuser": "postgres",
            "auth": "trust",
        },
        "backup_dir": "/var/backups/pg/run1",
        "space": {
            "free_data": 10 * 2**30,
            "free_backup": 10 * 2**30,
            "need_backup": 135802467,
            "min_free": 2**30,
            "same_filesystem": True,
        },
        "warnings": [],
        "outage_estimate_s": {"bindir": 10.0, "apt": 90.0, "command": 60.0}[installer],
    }


@pytest.mark.parametrize("installer", ["bindir", "apt", "command"])
def test_a_plan_recorded_before_minor_plan_reads_and_writes_the_same_json(installer: str) -> None:
    old = _recorded_by_the_dict_code(installer)
    got = plans.recorded(MinorPlan, json.loads(json.dumps(old)))
    assert isinstance(got, MinorPlan)
    assert got.installer is Installer(installer) and got.installer == installer
    assert got.old.version_text == old["old"]["version_text"] and got.initdb.locale == "C.UTF-8"
    assert (got.apt is None) == (installer != "apt") and (got.command is None) == (installer != "command")
    # the same keys in the same order, then the ones added since with their defaults (topology: no standbys listed)
    assert plans.to_json(got) == {**old, "topology": {}, "schema_version": plans.SCHEMA_VERSION}
    assert list(plans.to_json(got))[:-2] == list(old)
    assert plans.from_json(MinorPlan, plans.to_json(got)) == got


def test_a_plan_with_nothing_to_do_or_none_is_not_a_minor_plan() -> None:
    already = {"already_upgraded": True, "running": "15.20", "reason": "the cluster already runs 15.20"}
    assert plans.recorded(MinorPlan, already) == plans.AlreadyThere(running="15.20", reason=already["reason"])
    assert plans.recorded(MinorPlan, None) is None and plans.recorded(MinorPlan, {}) is None
    with pytest.raises(UnsafeState):  # a plan of other code is refused, not half-read
        plans.recorded(MinorPlan, {**_recorded_by_the_dict_code("bindir"), "rehearsal": True})
