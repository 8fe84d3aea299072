"""Minor upgrade without servers: params, apt-cache policy / pg_lsclusters / ps parsing, the admin command."""

from __future__ import annotations

import pytest

from pgupgrade import installers, minor
from pgupgrade.errors import ConfigError

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
    argv = installers.parse_install_command('["/usr/local/sbin/pg-install", "{major}", "{version}"]', "Variable v")
    assert installers.render_command(argv, "15.20") == ["/usr/local/sbin/pg-install", "15", "15.20"]
    for bad in ('"yum install postgresql"', "[]", '["/bin/true"]', "[1]", "not json"):
        with pytest.raises(ConfigError):
            installers.parse_install_command(bad, "Variable v")
    with pytest.raises(ConfigError):
        installers.render_command(argv, "15.20; rm -rf /")


def test_params() -> None:
    p = minor.validate_params({"target_version": "15.20", "new_bindir": "/opt/pg/15.20/bin"})
    assert p["installer"] == "bindir" and p["min_free_gb"] == 20 and p["allow_downgrade"] is False
    assert p["ack_other_clusters"] is False and p["dry_run"] is False
    assert minor.validate_params({"target_version": "15.20", "installer": "apt"})["new_bindir"] == ""
    with pytest.raises(ConfigError) as err:
        minor.validate_params({"target_version": "15.20", "new_bindir": "/opt/../etc"})
    assert err.value.field == "new_bindir"
    with pytest.raises(ConfigError) as err:
        minor.validate_params({"target_version": "15.20", "installer": "apt", "min_free_gb": -1})
    assert err.value.field == "min_free_gb"
    rollback_fields = {f.name: f for f in minor.ROLLBACK_FIELDS}
    assert rollback_fields["upgrade_dag_id"].default == minor.DAG_ID
