"""pgupgrade.major.standbys without servers: WAL file names, the rsync command line, the standby's SSH
destination."""

from __future__ import annotations

import pytest

from pgupgrade.cluster import Cluster
from pgupgrade.errors import ConfigError
from pgupgrade.major.standbys import PG_ENTRIES, Route, rsync_argv, wal_file

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("lsn", "segment_mb", "name"),
    [
        ("0/6000150", 16, "000000010000000000000006"),
        ("0/FFFFFFFF", 16, "0000000100000000000000FF"),
        ("1/0", 16, "000000010000000100000000"),
        ("0/6000150", 64, "000000010000000000000001"),
        ("1/4000000", 64, "000000010000000100000001"),
    ],
)
def test_wal_file_names_as_pg_walfile_name(lsn: str, segment_mb: int, name: str) -> None:
    assert wal_file(1, lsn, segment_mb * MB) == name


def _route(**over: object) -> Route:
    base = dict(name="s1", how="rsync", why="", streams_as="s1", datadir="/srv/pg/15/main",
                new_datadir="/srv/pg/16/main", root="/srv/pg")  # fmt: skip
    return Route(**{**base, **over})  # type: ignore[arg-type]


def test_rsync_is_the_documented_one_relative_to_the_common_parent_over_ssh() -> None:
    argv = rsync_argv("/var/lib/postgresql/15/main", "/var/lib/postgresql/16/main",
                      _route(ssh="postgres@db2", ssh_port=2222))  # fmt: skip
    assert argv[:7] == ["rsync", "--archive", "--delete", "--hard-links", "--size-only", "--no-inc-recursive",
                        "--relative"]  # fmt: skip
    assert argv[-3:] == ["/var/lib/postgresql/./15/main", "/var/lib/postgresql/./16/main", "postgres@db2:/srv/pg/"]
    assert argv[argv.index("-e") + 1] == "ssh -p 2222 -o BatchMode=yes -o ConnectTimeout=15"
    filters = [a for a in argv if a.startswith(("--include=", "--exclude="))]
    # PostgreSQL's entries of the old directory are synchronised; then its slots and everything else of the old
    # directory (the standby's own files) are left alone; the new directory is taken whole but for its slots
    assert filters[: len(PG_ENTRIES) - 1] == [f"--include=/15/main/{e}" for e in PG_ENTRIES if e != "postmaster.pid"]
    assert filters[len(PG_ENTRIES) - 1 :] == [
        "--exclude=/15/main/pg_replslot/*", "--exclude=/15/main/*", "--exclude=/16/main/pg_replslot/*",
    ]  # fmt: skip


def test_rsync_on_the_same_host_is_local() -> None:
    argv = rsync_argv("/d/p/data", "/d/p/data16", _route(root="/d/s"))
    assert "-e" not in argv and argv[-1] == "/d/s/"
    assert argv[-3:-1] == ["/d/p/./data", "/d/p/./data16"]


def _standby(extra: dict[str, object]) -> Cluster:
    return Cluster.from_connection(
        "s1", host="db2", port=5432, schema=None, login=None, password=None,
        extra={"pg_bindir": "/usr/lib/postgresql/15/bin", "pg_datadir": "/srv/pg/15/main", **extra},
    )  # fmt: skip


def test_ssh_from_primary_parsed_and_validated() -> None:
    assert _standby({"ssh_from_primary": "db2.example"}).ssh_destination() == ("postgres@db2.example", 22)
    assert _standby({"ssh_from_primary": "dba@10.0.0.2:2222"}).ssh_destination() == ("dba@10.0.0.2", 2222)
    assert _standby({"ssh_from_primary": "db2"}).to_extra()["ssh_from_primary"] == "db2"
    for bad in ("-oProxyCommand=x", "db2 true", "user@", "db2:22:1", ["db2"]):
        with pytest.raises(ConfigError, match="ssh_from_primary"):
            _standby({"ssh_from_primary": bad})
    with pytest.raises(ConfigError, match="is required"):
        _standby({}).ssh_destination()
