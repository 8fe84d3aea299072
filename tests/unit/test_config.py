"""pgupgrade.config: the postgresql.conf parser, include resolution (relative/absolute, include_dir order,
include_if_exists, cycles), the filtered carry-over of included files, the client gate's pg_hba.conf lines. Real files
in a temporary directory read through the real LocalHost; only the new installation's list of settings is given."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from pgupgrade import config, plans
from pgupgrade.cluster import Cluster
from pgupgrade.commands import LocalHost
from pgupgrade.errors import PlanError
from pgupgrade.gates import GATE_MARK
from pgupgrade.major.model import MajorPlan
from pgupgrade.versions import Installation, Version

KNOWN = {"work_mem", "log_min_duration_statement", "shared_buffers", "cluster_name", "temp_buffers", "max_connections"}
NEW17 = Installation("/nowhere/17/bin", Version(17, 2), "/nowhere/share", "/nowhere/lib")


@pytest.fixture(autouse=True)
def _known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "known_settings", lambda inst, host, user: KNOWN)


def cluster(datadir: Path, confdir: Path | None = None) -> Cluster:
    return Cluster(
        name="c",
        host="/tmp",
        port=5432,
        dbname="postgres",
        user="postgres",
        bindir="/nowhere/15/bin",
        datadir=str(datadir),
        os_user=getpass.getuser(),
        confdir=str(confdir) if confdir else None,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def old_cluster(tmp_path: Path, conf: str, *, confdir: bool = False) -> Cluster:
    data = tmp_path / "old"
    cdir = tmp_path / "etc" if confdir else data
    write(cdir / "postgresql.conf", conf)
    write(cdir / "pg_hba.conf", "local all all trust\n")
    write(cdir / "pg_ident.conf", "")
    data.mkdir(parents=True, exist_ok=True)
    return cluster(data, tmp_path / "etc" if confdir else None)


def new_datadir(tmp_path: Path) -> Path:
    new = tmp_path / "new"
    write(new / "postgresql.conf", "max_connections = 100\n")
    return new


def carry(old: Cluster, new: Path, *, old_major: int = 15, write: bool = True) -> config.CarriedConfig:
    return config.carry_config(old, old_major, NEW17, str(new), LocalHost(), write=write)


def test_parse_quoting_comments_case_and_bad_lines() -> None:
    text = (
        "Work_Mem = '4MB'   # trailing comment\n"
        "search_path = 'it''s # not a comment'  # but this is\n"
        "escaped = 'a\\'b\\n\\101'\n"
        "include 'no-equals.conf'\n"
        "pg_stat_statements.max=5000\n"
        "   # just a comment\n"
        "\n"
        "work_mem = 4 MB\n"
    )
    lines, bad = config.parse_lines(text)
    assert [(ln.name, ln.value) for ln in lines] == [
        ("work_mem", "'4MB'"),
        ("search_path", "'it''s # not a comment'"),
        ("escaped", "'a\\'b\\n\\101'"),
        ("include", "'no-equals.conf'"),
        ("pg_stat_statements.max", "5000"),
    ]
    assert bad == [7]
    assert config.unquote("'it''s # not a comment'") == "it's # not a comment"
    assert config.unquote("'a\\'b\\n\\101'") == "a'b\nA"
    assert config.unquote("5000") == "5000"
    assert config.unquote(config.quote("it's a\\b")) == "it's a\\b"


def test_include_paths_resolve_against_the_containing_file() -> None:
    assert config.resolve("conf.d", "/etc/pg/postgresql.conf") == "/etc/pg/conf.d"
    assert config.resolve("../shared/x.conf", "/etc/pg/conf.d/a.conf") == "/etc/pg/shared/x.conf"
    assert config.resolve("/abs/x.conf", "/etc/pg/conf.d/a.conf") == "/abs/x.conf"


def test_includes_carried_in_place_filtered_and_in_order(tmp_path: Path) -> None:
    outside = tmp_path / "shared"
    write(outside / "extra.conf", "temp_buffers = '12MB'\ninclude 'nested.conf'\n")
    write(outside / "nested.conf", "shared_buffers = '64MB'\nold_snapshot_threshold = 5  # gone in 17\n")
    old = old_cluster(
        tmp_path,
        "work_mem = '4MB'\n"
        "include_dir = 'conf.d'\n"
        "log_min_duration_statement = 250\n"
        "include_if_exists = 'missing.conf'\n"
        f"include = '{outside}/extra.conf'\n"
        "vacuum_defer_cleanup_age = 10\n",
        confdir=True,
    )
    cdir = Path(str(old.confdir))
    write(cdir / "conf.d/9-z.conf", "old_snapshot_threshold = 1\n")
    write(cdir / "conf.d/10-a.conf", "# tuning\nwork_mem = '13MB'\ndb_user_namespace = off\n")
    write(cdir / "conf.d/A.conf", "stats_temp_directory = 'x'\n")
    write(cdir / "conf.d/.hidden.conf", "hidden_setting = 1\n")
    write(cdir / "conf.d/notes.txt", "not_a_conf = 1\n")
    (cdir / "conf.d/sub.conf").mkdir()
    new = new_datadir(tmp_path)

    dry = carry(old, new, write=False)
    assert sorted(p.name for p in new.iterdir()) == ["postgresql.conf"]  # the plan's view writes nothing
    done = carry(old, new)
    assert dry == done

    # include_dir takes *.conf not starting with '.', in byte order of the names
    assert [d.split(":")[0] for d in done.dropped] == [
        "conf.d/10-a.conf",
        "conf.d/9-z.conf",
        "conf.d/A.conf",
        f"{outside}/nested.conf",
        "postgresql.conf",
    ]
    assert done.files == [
        "conf.d/10-a.conf",
        "conf.d/9-z.conf",
        "conf.d/A.conf",
        "pg_hba.conf",
        "pg_ident.conf",
        "pgupgrade-included/extra.conf",
        "pgupgrade-included/nested.conf",
        "postgresql.conf",
    ]
    assert done.dirs == ["conf.d"]
    assert any("missing.conf" in s for s in done.skipped)
    assert any("extra.conf" in r and "pgupgrade-included/extra.conf" in r for r in done.rewritten)
    # the directives stay where they were among the settings (a later setting wins), relative
    assert done.settings == [
        ("work_mem", "'4MB'"),
        ("include_dir", "'conf.d'"),
        ("log_min_duration_statement", "250"),
        ("include_if_exists", "'missing.conf'"),
        ("include", "'pgupgrade-included/extra.conf'"),
    ]
    conf = (new / "postgresql.conf").read_text()
    assert conf.startswith("max_connections = 100\n")
    assert conf.index("work_mem = '4MB'") < conf.index("include_dir = 'conf.d'") < conf.index("log_min_duration")
    tuning = (new / "conf.d/10-a.conf").read_text()
    assert "\nwork_mem = '13MB'\n" in tuning and "# tuning" in tuning
    assert "# pgupgrade: not carried: db_user_namespace = off" in tuning
    assert not (new / "conf.d/.hidden.conf").exists() and not (new / "conf.d/notes.txt").exists()
    extra = (new / "pgupgrade-included/extra.conf").read_text()
    assert "\ninclude 'nested.conf'\n" in extra  # kept as written: its target sits next to it again
    assert "# pgupgrade: not carried: old_snapshot_threshold" in (new / "pgupgrade-included/nested.conf").read_text()
    # idempotent: a second carry-over replaces its own block
    carry(old, new)
    assert (new / "postgresql.conf").read_text() == conf


def test_config_in_the_data_directory_and_absolute_includes_under_it(tmp_path: Path) -> None:
    data = tmp_path / "old"
    old = old_cluster(tmp_path, f"include_dir = '{data}/conf.d'\ninclude = 'sub/one.conf'\n")
    write(data / "conf.d/a.conf", "work_mem = '2MB'\n")
    write(data / "sub/one.conf", "include '../sub/two.conf'\n")
    write(data / "sub/two.conf", "temp_buffers = 1000\n")
    new = new_datadir(tmp_path)
    done = carry(old, new)
    assert ("include_dir", "'conf.d'") in done.settings  # an absolute path into the old directory: made relative
    assert any(f"{data}/conf.d" in r for r in done.rewritten)
    assert ("include", "'sub/one.conf'") in done.settings
    assert "include '../sub/two.conf'" in (new / "sub/one.conf").read_text()
    assert (new / "sub/two.conf").exists() and (new / "conf.d/a.conf").exists()


def test_same_name_outside_files_do_not_collide(tmp_path: Path) -> None:
    write(tmp_path / "x/extra.conf", "work_mem = '1MB'\n")
    write(tmp_path / "y/extra.conf", "work_mem = '2MB'\n")
    old = old_cluster(tmp_path, f"include '{tmp_path}/x/extra.conf'\ninclude '{tmp_path}/y/extra.conf'\n")
    new = new_datadir(tmp_path)
    done = carry(old, new)
    assert done.settings == [
        ("include", "'pgupgrade-included/extra.conf'"),
        ("include", "'pgupgrade-included/extra-2.conf'"),
    ]
    assert "2MB" in (new / "pgupgrade-included/extra-2.conf").read_text()


def test_missing_include_is_a_plan_error_naming_the_file(tmp_path: Path) -> None:
    old = old_cluster(tmp_path, "work_mem = '4MB'\ninclude 'gone.conf'\n")
    new = new_datadir(tmp_path)
    with pytest.raises(PlanError, match=r"old/gone\.conf does not exist"):
        carry(old, new, write=False)
    old = old_cluster(tmp_path, "include_dir 'conf.missing'\n")
    with pytest.raises(PlanError, match=r"include_dir .*conf\.missing does not exist"):
        carry(old, new)
    assert (new / "postgresql.conf").read_text() == "max_connections = 100\n"  # nothing written


def test_include_cycle_and_depth_are_refused(tmp_path: Path) -> None:
    old = old_cluster(tmp_path, "include 'a.conf'\n")
    write(tmp_path / "old/a.conf", "include 'b.conf'\n")
    write(tmp_path / "old/b.conf", "work_mem = '1MB'\ninclude 'a.conf'\n")
    with pytest.raises(PlanError, match=r"cycle: .*a\.conf -> .*b\.conf -> .*a\.conf"):
        carry(old, new_datadir(tmp_path), write=False)
    old = old_cluster(tmp_path, "include 'd0.conf'\n")
    for i in range(12):
        write(tmp_path / f"old/d{i}.conf", f"include 'd{i + 1}.conf'\n")
    write(tmp_path / "old/d12.conf", "work_mem = '1MB'\n")
    with pytest.raises(PlanError, match="nested deeper than 10"):
        carry(old, new_datadir(tmp_path), write=False)


def test_same_file_included_twice_is_carried_once(tmp_path: Path) -> None:
    old = old_cluster(tmp_path, "include 'a.conf'\nwork_mem = '2MB'\ninclude 'a.conf'\n")
    write(tmp_path / "old/a.conf", "work_mem = '1MB'\n")
    done = carry(old, new_datadir(tmp_path))
    assert done.files.count("a.conf") == 1
    assert [k for k, _ in done.settings] == ["include", "work_mem", "include"]


def test_gate_lines_never_carried_and_hba_includes_from_16(tmp_path: Path) -> None:
    old = old_cluster(tmp_path, "work_mem = '4MB'\n", confdir=True)
    cdir = Path(str(old.confdir))
    gate = f"host all all 0.0.0.0/0 reject {GATE_MARK}"
    write(cdir / "pg_hba.conf", f'local all all trust\n{gate}\ninclude_dir hba.d\ninclude "{tmp_path}/o/x.conf"\n')
    write(cdir / "hba.d/10.conf", f"host app app 10.0.0.0/8 scram-sha-256\n{gate}   \n")
    write(tmp_path / "o/x.conf", "host all all 192.168.0.0/16 reject\n")
    new = new_datadir(tmp_path)
    done = carry(old, new, old_major=16)
    hba = (new / "pg_hba.conf").read_text()
    assert GATE_MARK not in hba and "local all all trust" in hba
    assert "include_dir hba.d" in hba and 'include "pgupgrade-included/x.conf"' in hba
    assert (new / "hba.d/10.conf").read_text() == "host app app 10.0.0.0/8 scram-sha-256\n"
    assert "192.168.0.0/16" in (new / "pgupgrade-included/x.conf").read_text()
    assert {"hba.d/10.conf", "pgupgrade-included/x.conf", "pg_hba.conf"} <= set(done.files)
    assert sum("1 client gate line(s) left out" in r for r in done.rewritten) == 2
    # before 16 pg_hba.conf has no includes: lines copied as they are, gate lines still left out
    new15 = tmp_path / "new15"
    write(new15 / "postgresql.conf", "")
    carry(old, new15, old_major=15)
    assert (new15 / "pg_hba.conf").read_text() == (
        f'local all all trust\ninclude_dir hba.d\ninclude "{tmp_path}/o/x.conf"\n'
    )
    assert not (new15 / "hba.d").exists()


def test_hba_file_setting_in_an_included_file_is_where_pg_hba_is_read(tmp_path: Path) -> None:
    old = old_cluster(tmp_path, "include_dir 'conf.d'\n")
    write(tmp_path / "old/conf.d/paths.conf", f"hba_file = '{tmp_path}/elsewhere/hba.conf'\n")
    write(tmp_path / "elsewhere/hba.conf", "local all all peer\n")
    new = new_datadir(tmp_path)
    done = carry(old, new)
    assert (new / "pg_hba.conf").read_text() == "local all all peer\n"
    assert any("hba_file" in r for r in done.rewritten)
    assert "# pgupgrade: not carried: hba_file" in (new / "conf.d/paths.conf").read_text()


def test_plans_recorded_before_the_config_field_still_load() -> None:
    plan = MajorPlan(
        old=None,  # type: ignore[arg-type]
        new=None,  # type: ignore[arg-type]
        databases=[],
        data_bytes=0,
        relations=0,
        initdb=None,  # type: ignore[arg-type]
        shared_preload_libraries="",
        method="pg_upgrade",  # type: ignore[arg-type]
        transfer_mode=None,
        method_reason="",
        check_output_tail="",
        blockers_acknowledged=[],
        warnings=[],
        backup_dir="/b",
        work_dir="/w",
        outage_estimate_s=1.0,
        space={},
        config={"dropped": ["postgresql.conf: x = 1"], "files": ["postgresql.conf"]},
    )
    data = plans.to_json(plan)
    assert plans.from_json(MajorPlan, data).config == plan.config
    del data["config"]
    assert plans.from_json(MajorPlan, data).config == {}
