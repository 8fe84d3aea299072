"""Minor upgrades through Airflow (dag.test) on real clusters: bindir, command and apt installers, the automatic
rollback after a failure past the stop, the restore path, and refusals before anything stops."""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pgupgrade import facts, plans, versions
from pgupgrade.cluster import Cluster, Service
from pgupgrade.errors import ConfigError, PlanError
from pgupgrade.minor import fields, installers
from pgupgrade.minor import plan as minor_plan
from pgupgrade.sql import connect
from pgupgrade.state import RunState, state_root

import pgharness
from airflow_helpers import (
    ROLLBACK,
    UPGRADE,
    minor_conf,
    minor_plan_context,
    report_of,
    run,
    run_triggered_rollback,
    run_under_writes,
)
from conftest import register_connection
from pgharness import APP_DB, HOST, OS_USER, Pool, data_checks_out, installation, lock_of, same_rows, seed_data, served

pytestmark = pytest.mark.usefixtures("airflow_home")
OK = {"success", "skipped"}


def real(path: str) -> str:
    return os.path.realpath(path)


def ustate(run_id: str, dag_id: str = UPGRADE) -> RunState:
    return RunState.for_run(dag_id, run_id, state_root())


# -- bindir installer: success, then a rollback by hand after clients wrote --------------------------------------


def test_bindir_upgrade_15_18_to_15_20_then_manual_rollback(pool: Pool) -> None:
    """With an application that never stops: it is cut off by the cutover and loses no acknowledged write."""
    old = pool.new("15.18")
    conf = minor_conf(old, terminate_after_s=0)
    probe, dr, states = run_under_writes(old, UPGRADE, conf)
    assert dr.state == "success", states
    assert len(probe.acked) > 10 and probe.errors > 0 and probe.lost(old) == []
    assert {s for t, s in states.items() if t not in ("handover_lock", "trigger_rollback")} <= OK, states
    assert states["trigger_rollback"] == "skipped"
    num, text = served(old)
    assert num == 150020 and text.startswith("PostgreSQL 15.20")
    assert real(installers.running_bindir(HOST, old) or "") == real(conf["new_bindir"])
    data_checks_out(old)
    state = ustate(dr.run_id)
    same_rows(state.load("facts_before"), state.load("facts_after"))
    assert state.load("versions_before")["version"].startswith("PostgreSQL 15.18")
    journal = [e["event"] for e in state.events() if e["event"] != "step"]
    assert journal.index("logins_blocked") < journal.index("old_stop_requested") < journal.index("bindir_switch")
    assert journal.index("bindir_switch") < journal.index("new_start_requested") < journal.index("opened")
    assert state.first("bindir_switch")["previous"] == old.bindir
    rep = report_of(state_root(), UPGRADE, dr.run_id)
    steps = {s["step"]: s for s in rep["steps"]}
    assert {
        "plan",
        "backup",
        "pre_checks",
        "stop_server",
        "install",
        "start_new",
        "validate_facts",
        "smoke_test",
        "open_to_clients",
    } <= set(steps)
    assert all(s["seconds"] is not None for s in rep["steps"])
    assert rep["outage"]["seconds"] > 0 and rep["server_down_seconds"] > 0
    assert conf["new_bindir"] in rep["next_steps"]
    md = Path(state.load("report")["markdown"]).read_text()
    assert "Measured outage" in md
    assert lock_of(old).holder() is None
    print(f"minor bindir 15.18→15.20: outage {rep['outage']['seconds']}s, server down {rep['server_down_seconds']}s")

    # Clients write on 15.20; a person asks for the rollback. The connection still names the 15.18 bindir while
    # the cluster runs from 15.20's: the rollback goes by the recorded release and keeps the clients' writes.
    with connect(old, APP_DB) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders (customer, amount) VALUES ('c1', 5)")
        cur.execute("SELECT pg_tviews_drain_queue()")
    rb, rb_states = run(ROLLBACK, {"postgres_conn_id": conf["postgres_conn_id"], "upgrade_run_id": dr.run_id})
    assert rb.state == "success", rb_states
    assert rb_states["restore_from_backup"] == "skipped"
    num, text = served(old)
    assert num == 150018 and text == state.load("plan")["old"]["version_text"]
    assert real(installers.running_bindir(HOST, old) or "") == real(old.bindir)
    data_checks_out(old, orders=1001)
    rb_state = ustate(rb.run_id, ROLLBACK)
    assert rb_state.load("decision")["path"] == "previous_release"
    assert rb_state.has("facts_before_rollback")


# -- a failure after the stop: the new release cannot start -----------------------------------------------------


def broken_bindir(root: Path, inst: versions.Installation) -> str:
    """A copy of inst's bin directory whose postgres answers --version and --describe-config like the real one
    but exits 1 when asked to run a server. pg_ctl is copied (not linked): it looks for postgres next to its
    own resolved path."""
    bindir = root / "broken-15.20" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for src in Path(inst.bindir).iterdir():
        dst = bindir / src.name
        if dst.exists() or dst.is_symlink():
            continue
        if src.name == "pg_ctl":
            shutil.copy2(src, dst)
        elif src.name != "postgres":
            dst.symlink_to(src)
    wrapper = bindir / "postgres"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  -V|--version|--describe-config|-C) exec {inst.bin("postgres")} "$@" ;;\n'
        "esac\n"
        'echo "FATAL:  simulated: this PostgreSQL 15.20 build cannot start" >&2\n'
        "exit 1\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    for d in (bindir, bindir.parent):
        d.chmod(0o755)
    return str(bindir)


@pytest.mark.parametrize("data_dir_lost", [False, True], ids=["previous_release", "restore_backup"])
def test_failed_start_rolls_back_to_15_18(pool: Pool, data_dir_lost: bool) -> None:
    old = pool.new("15.18")
    conf = minor_conf(old, new_bindir=broken_bindir(Path(old.datadir).parent, installation("15.20")))
    dr, states = run(UPGRADE, conf)
    assert dr.state == "failed", states
    assert states["cutover"] == "failed", states
    assert states["handover_lock"] == "success" and states["trigger_rollback"] == "success", states
    state = ustate(dr.run_id)
    assert state.happened("old_stopped") and state.happened("new_start_requested")
    failed = [e for e in state.events() if e["event"] == "step" and e["status"] == "failed"]
    assert failed[0]["step"] == "start_new" and "simulated" in failed[0]["error"], failed
    assert not Service(old).is_running()
    rep = report_of(state_root(), UPGRADE, dr.run_id)  # a failed run has its report too
    assert rep["status"] == "failed" and "simulated" in json.dumps(rep)
    if data_dir_lost:  # the data directory no longer starts on any release: only the backup is left
        HOST.run(["rm", "-f", f"{old.datadir}/global/pg_control"], user=OS_USER)

    rb, rb_states = run_triggered_rollback(ROLLBACK, dr.run_id)
    assert rb.state == "success", rb_states
    path = "restore_from_backup" if data_dir_lost else "verify_previous"
    assert rb_states[path] == "success" and rb_states["finish"] == "success", rb_states
    if not data_dir_lost:
        assert rb_states["restore_from_backup"] == "skipped", rb_states
    num, text = served(old)
    assert num == 150018 and text == state.load("plan")["old"]["version_text"]
    assert real(installers.running_bindir(HOST, old) or "") == real(old.bindir)
    data_checks_out(old)
    same_rows(state.load("facts_before"), facts.snapshot(old))
    assert lock_of(old).holder() is None
    rb_rep = report_of(state_root(), ROLLBACK, rb.run_id)
    assert rb_rep["status"] == "success" and rb_rep["rollback_path"] == "previous_release"
    if data_dir_lost:
        aside = state.first("old_moved_aside")["to"]
        assert Path(aside, "PG_VERSION").exists()  # moved aside, never deleted


# -- the command installer, both ways ----------------------------------------------------------------------------


def test_command_installer_switches_a_symlinked_installation(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin's command flips /…/pg15 (the connection's bin directory is /…/pg15/bin) between the unpacked
    releases; the rollback runs the same command for the previous version."""
    base = pool.new("15.18")
    home = Path(base.datadir).parent
    link = home / "pg15"
    old_root = Path(installation("15.18").bindir).parent
    template = str(Path(installation("15.20").bindir).parent).replace("15.20", "{version}")
    assert template.replace("{version}", "15.18") == str(old_root)
    link.symlink_to(old_root)
    Service(base).stop("fast")
    old = replace(base, bindir=str(link / "bin"))
    Service(old).start()
    monkeypatch.setenv(
        "AIRFLOW_VAR_" + fields.INSTALL_COMMAND_VARIABLE.upper(), json.dumps(["ln", "-sfn", "--", template, str(link)])
    )
    # other 15.18 clusters of this test session run from the resolved bin directory
    conf = minor_conf(old, installer="command", new_bindir="", ack_other_clusters=True)
    dr, states = run(UPGRADE, conf)
    assert dr.state == "success", states
    assert served(old)[0] == 150020 and os.readlink(link).endswith("15.20/usr/lib/postgresql/15")
    data_checks_out(old)
    state = ustate(dr.run_id)
    assert state.first("install_started")["argv"][-2:] == [template.replace("{version}", "15.20"), str(link)]

    rb, rb_states = run(ROLLBACK, {"postgres_conn_id": conf["postgres_conn_id"], "upgrade_run_id": dr.run_id})
    assert rb.state == "success", rb_states
    assert served(old)[0] == 150018 and real(str(link)) == str(old_root)
    data_checks_out(old)


def test_bindir_target_version_from_new_bindir(pool: Pool) -> None:
    """Installer bindir without target_version: the plan takes new_bindir's postgres --version (15.20) as the
    target; a dry run plans 15.18 → 15.20 and succeeds, the cluster untouched."""
    old = pool.new("15.18", seed=False)
    conf = minor_conf(old, dry_run=True)
    del conf["target_version"]
    assert fields.validate_params(conf)["target_version"] == ""
    dr, states = run(UPGRADE, conf)
    assert dr.state == "success", states
    assert states["plan.plan"] == "success" and states["plan.dry_run_gate"] == "success", states
    assert states["pre_upgrade.backup"] == "skipped", states
    plan = ustate(dr.run_id).load("plan")
    assert (plan["old"]["version"], plan["new"]["version"], plan["new"]["version_num"]) == ("15.18", "15.20", 150020)
    assert real(plan["new"]["bindir"]) == real(conf["new_bindir"])
    assert Service(old).is_running() and served(old)[0] == 150018


# -- refusals before anything stops ------------------------------------------------------------------------------


# Through Airflow: the run fails in its plan, the cluster keeps running, nothing was journaled as stopped.
REFUSED_RUNS = {
    "another_major": ({"new_bindir": "@17"}, "another major"),
    "not_installed": ({"target_version": "15.19", "new_bindir": "/opt/no-such/15.19/bin"}, "has no postgres program"),
    "disk_space": ({"min_free_gb": 1_000_000}, "not enough free space"),
}


@pytest.mark.parametrize(
    "case", [c if c == "not_installed" else pytest.param(c, marks=pytest.mark.full) for c in REFUSED_RUNS]
)  # CI runs one case through a whole DAG run, the full tier the others
def test_refused_before_anything_stops(pool: Pool, case: str) -> None:
    over, message = REFUSED_RUNS[case]
    cluster = pool.new("15.18", seed=False)
    dr, states = run(UPGRADE, minor_conf(cluster, **resolve(over)))
    assert dr.state == "failed", states
    assert states["plan.plan"] == "failed", states
    assert states["pre_upgrade.backup"] == "upstream_failed", states
    state = ustate(dr.run_id)
    assert not state.happened("old_stop_requested") and not state.happened("logins_blocked")
    errors = [e["error"] for e in state.events() if e["event"] == "step" and e["status"] == "failed"]
    assert message in errors[0], errors
    assert Service(cluster).is_running() and served(cluster)[0] == 150018


def resolve(over: dict[str, Any]) -> dict[str, Any]:
    """ "@17" → the bin directory of that installation."""
    return {k: installation(v[1:]).bindir if isinstance(v, str) and v.startswith("@") else v for k, v in over.items()}


# The same plan step called directly (a dag.test run of a refusal costs ~25 s, most of it Airflow marking the
# ~20 downstream tasks upstream_failed one per second).
REFUSED_PLANS = {
    "target_of_another_major": ("15.18", {"target_version": "17.10", "new_bindir": "@17"}, "stays within one major"),
    "wrong_minor_in_bindir": (
        "15.18",
        {"target_version": "15.19"},
        f"target_version 15.19 disagrees with new_bindir {installation('15.20').bindir}, which is PostgreSQL 15.20",
    ),
    "no_target_and_another_major_in_bindir": ("15.18", {"target_version": "", "new_bindir": "@17"}, "one major"),
    "downgrade_not_allowed": ("15.20", {"target_version": "15.18", "new_bindir": "@15.18"}, "allow_downgrade"),
    "apt_on_another_bindir": ("15.18", {"installer": "apt", "new_bindir": ""}, "installer apt replaces"),
    "command_without_admin_config": (
        "15.18",
        {"installer": "command", "new_bindir": ""},
        fields.INSTALL_COMMAND_VARIABLE,
    ),
    "command_without_version": (
        "15.18",
        {"installer": "command", "new_bindir": "", "@command": ["/usr/bin/true"]},
        "must contain {version}",
    ),
}


def test_plan_refusals_and_a_plan(pool: Pool) -> None:
    clusters = {v: pool.new(v, seed=False) for v in ("15.18", "15.20")}
    for case, (version, over, message) in REFUSED_PLANS.items():
        over = resolve(over)
        command = over.pop("@command", None)
        with pytest.raises((PlanError, ConfigError)) as err:
            minor_plan.plan(minor_plan_context(clusters[version], **over), install_command=command)
        assert message in str(err.value), (case, err.value)
    for cluster in clusters.values():
        assert Service(cluster).is_running()
    # a plan that goes ahead: what the rollback will need is recorded
    p = plans.to_json(minor_plan.plan(minor_plan_context(clusters["15.18"])))
    assert p["old"]["version"] == "15.18" and p["old"]["version_text"].startswith("PostgreSQL 15.18")
    assert p["old"]["bindir"] == clusters["15.18"].bindir and p["new"]["version_num"] == 150020
    assert p["initdb"]["locale"] and p["space"]["free_data"] > 0
    # downgrade allowed; the command installer renders both ways
    argv = ["/usr/local/sbin/pg-switch", "{major}", "{version}"]
    p = plans.to_json(
        minor_plan.plan(
            minor_plan_context(
                clusters["15.20"],
                target_version="15.18",
                allow_downgrade=True,
                installer="command",
                new_bindir="",
                ack_other_clusters=True,
            ),
            install_command=argv,
        )
    )
    assert p["command"]["install"] == ["/usr/local/sbin/pg-switch", "15", "15.18"]
    assert p["command"]["rollback"] == ["/usr/local/sbin/pg-switch", "15", "15.20"]
    assert p["method"] == "minor downgrade (command)"
    # already there: the DAG's gate ends the run green and untouched
    assert plans.to_json(minor_plan.plan(minor_plan_context(clusters["15.20"])))["already_upgraded"] is True


def test_validate_params_refuses_bad_conf() -> None:
    for conf, field in [
        ({}, "new_bindir"),  # installer bindir: target_version may be left to new_bindir, new_bindir may not
        ({"installer": "apt"}, "target_version"),
        ({"installer": "command"}, "target_version"),
        ({"target_version": "15"}, "target_version"),
        ({"target_version": "15.20"}, "new_bindir"),
        ({"target_version": "15.20", "installer": "apt", "new_bindir": "/x/bin"}, "new_bindir"),
        ({"target_version": "15.20", "installer": "yum"}, "installer"),
        ({"target_version": "15.20", "new_bindir": "/x/bin", "install_command": ["rm", "-rf", "/"]}, "install_command"),
    ]:
        with pytest.raises(ConfigError) as err:
            fields.validate_params(conf)
        assert err.value.field == field, (conf, err.value)


# -- the apt installer for real ----------------------------------------------------------------------------------

PKGS = installers.debian_packages(15)
DEB_BINDIR = installers.debian_bindir(15)


def _apt_skip_reason() -> str | None:
    if not (os.environ.get("PGUPGRADE_APT_TESTS") == "1" or os.environ.get("CI") == "true"):
        return "changes the machine's postgresql-15 packages: runs in CI, or with PGUPGRADE_APT_TESTS=1"
    if os.geteuid() != 0 or not shutil.which("pg_createcluster") or not shutil.which("apt-get"):
        return "needs root on Debian with postgresql-common"
    if not Path(DEB_BINDIR, "postgres").exists():
        return f"no {DEB_BINDIR}"
    online = [c for c in installers.debian_clusters(HOST) if c["version"] == "15" and "online" in c["status"]]
    if online:
        return f"a PostgreSQL 15 cluster of this machine is online ({online[0]['name']}): not touching its binaries"
    return None


def _other_release() -> tuple[str, str, dict[str, str]] | None:
    """(installed upstream version, another downloadable one, installed package versions)."""
    pols = [installers.apt_policy(HOST, p) for p in PKGS]
    if any(p.installed is None for p in pols):
        return None
    installed = versions.Version.parse(installers.upstream_version(pols[0].installed or ""))
    others = sorted(
        {
            installers.upstream_version(v)
            for v in pols[0].versions
            if pols[0].downloadable(v)
            and installers.upstream_version(v) != str(installed)
            and all(p.matching(installers.upstream_version(v)) for p in pols)
        },
        key=versions.Version.parse,
    )
    if not others or not all(p.downloadable(p.installed or "") for p in pols):
        return None
    newer = [o for o in others if versions.Version.parse(o) > installed]
    return str(installed), (newer or others)[-1], {p.package: p.installed or "" for p in pols}


@pytest.mark.apt
def test_apt_installer_upgrade_and_rollback(pool: Pool) -> None:
    reason = _apt_skip_reason()
    if reason:
        pytest.skip(reason)
    release = _other_release()
    if release is None:
        pytest.skip("apt offers no second release of postgresql-15 and postgresql-client-15 (and the installed one)")
    installed, target, pins = release
    download = HOST.run(
        ["apt-get", "install", "--download-only", "-y", "-q", "--allow-downgrades",
         *[f"{p}={installers.apt_policy(HOST, p).matching(target)[0]}" for p in PKGS]],
        check=False, env=installers.APT_ENV, timeout=600,
    )  # fmt: skip
    if download.exit_code != 0:
        pytest.skip(f"cannot download postgresql-15 {target}: {download.stderr[-300:]}")

    name = f"pgupg_apt_{os.getpid()}"
    port = pgharness.server_port()
    ext_dir = Path("/usr/share/postgresql/15/extension")
    added = [ext_dir / f.name for f in pgharness.EXT_SRC.glob("pg_tviews*") if not (ext_dir / f.name).exists()]
    before_clusters = {c["name"]: c["status"] for c in installers.debian_clusters(HOST)}
    try:
        HOST.run(["pg_createcluster", "15", name, "--port", str(port), "--", "--locale=C", "--encoding=UTF8"])
        Path(f"/etc/postgresql/15/{name}/pg_hba.conf").write_text("local all all trust\n")
        HOST.run(["pg_ctlcluster", "15", name, "start"])
        cluster = Cluster(
            name=name,
            host="/var/run/postgresql",
            port=port,
            dbname="postgres",
            user="postgres",
            bindir=DEB_BINDIR,
            datadir=f"/var/lib/postgresql/15/{name}",
            confdir=f"/etc/postgresql/15/{name}",
            service=f"pg_ctlcluster 15 {name}",
        )
        for f in pgharness.EXT_SRC.glob("pg_tviews*"):
            shutil.copy2(f, ext_dir / f.name)
        seed_data(cluster)
        backup_dir = pool.root / f"{name}-backup"
        conf = {
            "postgres_conn_id": register_connection(cluster),
            "installer": "apt",
            "target_version": target,
            "backup_dir": str(backup_dir),
            "min_free_gb": 1,
            "ack_other_clusters": True,  # Debian's default 15/main exists (down)
            "allow_downgrade": versions.Version.parse(target) < versions.Version.parse(installed),
        }
        dr, states = run(UPGRADE, conf)
        assert dr.state == "success", states
        assert versions.Version.from_num(served(cluster)[0]) == versions.Version.parse(target)
        assert installers.installed_package_versions(HOST, PKGS) != pins
        data_checks_out(cluster)
        rep = report_of(state_root(), UPGRADE, dr.run_id)
        print(
            f"apt {installed}→{target}: outage {rep['outage']['seconds']}s, server down {rep['server_down_seconds']}s"
        )

        rb, rb_states = run(ROLLBACK, {"postgres_conn_id": conf["postgres_conn_id"], "upgrade_run_id": dr.run_id})
        assert rb.state == "success", rb_states
        assert versions.Version.from_num(served(cluster)[0]) == versions.Version.parse(installed)
        assert installers.installed_package_versions(HOST, PKGS) == pins
        data_checks_out(cluster)
    finally:
        HOST.run(["pg_dropcluster", "--stop", "15", name], check=False)
        if installers.installed_package_versions(HOST, PKGS) != pins:
            installers.apt_install(HOST, pins, allow_downgrades=True)
        for c in installers.debian_clusters(HOST):  # package scripts may have started clusters that were down
            if "online" in c["status"] and before_clusters.get(c["name"], "down") == "down" and c["name"] != name:
                HOST.run(["pg_ctlcluster", c["version"], c["name"], "stop"], check=False)
        for f in added:
            f.unlink(missing_ok=True)
