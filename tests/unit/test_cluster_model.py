import pytest

from pgupgrade.cluster import Cluster
from pgupgrade.errors import ConfigError

EXTRA = {"pg_bindir": "/usr/lib/postgresql/15/bin", "pg_datadir": "/var/lib/postgresql/15/main"}


def build(**extra_over):
    return Cluster.from_connection(
        "pg_main", host="db1", port=5433, schema="app", login="dba", password="s3cret", extra={**EXTRA, **extra_over}
    )


def test_defaults_and_round_trip():
    c = build()
    assert (c.os_user, c.service, c.ssh_conn_id, c.confdir) == ("postgres", "pg_ctl", None, None)
    again = Cluster.from_connection(
        c.name, host=c.host, port=c.port, schema=c.dbname, login=c.user, password=c.password, extra=c.to_extra()
    )
    assert again == c and again.password == "s3cret"


def test_password_not_in_repr():
    assert "s3cret" not in repr(build())


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"pg_bindir": None}, "pg_main.extra.pg_bindir"),
        ({"pg_datadir": "relative/data"}, "pg_main.extra.pg_datadir"),
        ({"pg_datadir": "/var/lib/../etc"}, "pg_main.extra.pg_datadir"),
        ({"service": "systemd:pg; rm -rf /"}, "pg_main.extra.service"),
        ({"os_user": "postgres; id"}, "pg_main.extra.os_user"),
        ({"standbys": "pg_s1"}, "pg_main.extra.standbys"),
        ({"standbys": ["pg_s1", "pg s2"]}, "pg_main.extra.standbys"),
        ({"standbys": ["pg_s1", "pg_s1"]}, "pg_main.extra.standbys"),
        ({"standbys": ["pg_main"]}, "pg_main.extra.standbys"),
    ],
)
def test_bad_extra_names_the_field(extra, field):
    with pytest.raises(ConfigError) as err:
        build(**extra)
    assert err.value.field == field


def test_service_kinds_accepted():
    assert build(service="systemd:postgresql@15-main").service == "systemd:postgresql@15-main"
    assert build(service="pg_ctlcluster 15 main").service == "pg_ctlcluster 15 main"


def test_extra_as_json_string_and_missing_bindir():
    with pytest.raises(ConfigError, match="pg_bindir"):
        Cluster.from_connection("x", host="h", port=1, schema=None, login=None, password=None, extra='{"a": 1}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        Cluster.from_connection("x", host="h", port=1, schema=None, login=None, password=None, extra="{")


def test_standbys_listed_and_round_trip():
    c = build(standbys=["pg_s1", "pg_s2"])
    assert c.standbys == ("pg_s1", "pg_s2") and c.to_extra()["standbys"] == ["pg_s1", "pg_s2"]
    assert "standbys" not in build().to_extra()
