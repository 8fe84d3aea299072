"""The validation every DAG runs first: hostile and malformed confs are refused with the field named."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgupgrade.errors import ConfigError
from pgupgrade.major import fields
from pgupgrade.params import validate

F = fields.FIELDS


def test_defaults_are_valid():
    p = validate(F, {})
    assert p["method"] == "auto" and p["transfer_mode"] == "link" and p["dry_run"] is False


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({"new_datadir": "relative/path"}, "new_datadir"),
        ({"new_datadir": "/var/lib/../etc"}, "new_datadir"),
        ({"backup_dir": "/tmp/x; rm -rf /"}, "backup_dir"),
        ({"backup_dir": "/tmp/$(id)"}, "backup_dir"),
        ({"new_bindir": "/usr/lib/postgresql/16/bin\x00"}, "new_bindir"),
        ({"method": "rsync"}, "method"),
        ({"jobs": 0}, "jobs"),
        ({"jobs": True}, "jobs"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"postgres_conn_id": "pg main; drop"}, "postgres_conn_id"),
        ({"hook_command": ["rm", "-rf", "/"]}, "hook_command"),
    ],
)
def test_bad_values_name_the_field(conf, field):
    with pytest.raises(ConfigError) as err:
        validate(F, conf)
    assert err.value.field == field


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="transfer_mode"):
        fields.cross_checks(validate(F, {"method": "dump_restore", "transfer_mode": "swap"}))
    with pytest.raises(ConfigError, match="backup_dir"):
        fields.cross_checks(validate(F, {"new_datadir": "/d/16", "backup_dir": "/d/16/backup"}))


hostile_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            "..",
            "../etc",
            "/a/../b",
            "/x;id",
            "/x`id`",
            "/x$(id)",
            "/x\nid",
            "'; DROP TABLE x; --",
            "/" + "a" * 5000,
            "\x00",
            "/tmp/ok",
        ]
    ),
)
values = st.one_of(
    hostile_text,
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.floats(allow_nan=True),
)


@settings(max_examples=1200, deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in F] + ["unknown", "sql", "command"]), values, max_size=6))
def test_generated_confs_are_accepted_only_when_safe(conf):
    try:
        p = validate(F, conf)
    except ConfigError as err:
        assert err.field in conf  # the error names a field the user gave
        return
    for f in F:
        v = p[f.name]
        if f.kind == "abs_path" and v:
            assert v.startswith("/") and ".." not in v.split("/") and "\x00" not in v
            assert not set(v) & set(";|&`$<>\n\"'\\*?")
        if f.enum:
            assert v in f.enum
        if f.type == "integer":
            assert isinstance(v, int) and not isinstance(v, bool)
        if f.kind == "conn_id":
            assert set(v) <= set(string.ascii_letters + string.digits + "_.-")
