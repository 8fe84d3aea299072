"""Service managers per kind (pg_ctl, Debian's pg_ctlcluster, systemd units) and the registration of a major
upgrade's new cluster with them, with its exact reversal. The host runner is a fake: file commands run for real
in a temporary /etc/postgresql (as the current user), systemctl / pg_ctlcluster / pg_ctl / perl are answered and
recorded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pgupgrade import registration
from pgupgrade.cluster import Cluster, PgCtl, PgCtlCluster, Systemd, service_for
from pgupgrade.commands import Redactor, Result
from pgupgrade.errors import ConfigError, PlanError, UnsafeState
from pgupgrade.state import RunState

ANSWERED = ("systemctl", "pg_ctlcluster", "perl")


class FakeHost:
    name = "fake"

    def __init__(self, *, running: set[str] | None = None, systemd: bool = False, free_port: int = 5433) -> None:
        self.redactor = Redactor()
        self.calls: list[tuple[list[str], str | None]] = []
        self.running = running if running is not None else set()  # data directories with a postmaster
        self.systemd = systemd
        self.free_port = free_port

    def run(self, argv, *, user=None, timeout=300, env=None, cwd=None, check=True, stdin=None):
        self.calls.append((list(argv), user))
        code, out = 0, ""
        if argv[0] == "perl":
            out = str(self.free_port)
        elif argv[0] in ("systemctl", "pg_ctlcluster"):
            if (argv[0] == "pg_ctlcluster" and argv[3] == "stop") or argv[:2] == ["systemctl", "stop"]:
                self.running.clear()
        elif argv[0].endswith("/pg_ctl"):
            code = 0 if argv[2] in self.running else 3
        elif argv[0].endswith("/pg_isready"):
            code = 0
        elif argv[:3] == ["test", "-e", "/run/systemd/system"]:
            code = 0 if self.systemd else 1
        else:  # file commands, for real
            res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
            code, out = res.returncode, res.stdout
            if check and code:
                raise AssertionError(f"{argv} failed: {res.stderr}")
        return Result(list(argv), code, out, "", 0.0, user)


def _cluster(service: str = "pg_ctl", **kw) -> Cluster:
    base = dict(
        name="main", host="/var/run/postgresql", port=5432, dbname="postgres", user="postgres",
        bindir="/usr/lib/postgresql/15/bin", datadir="/var/lib/postgresql/15/main", service=service,
    )  # fmt: skip
    return Cluster(**{**base, **kw})


# -- the managers ---------------------------------------------------------------------------------------------


def test_service_for_picks_the_manager_of_the_declared_kind():
    assert isinstance(service_for(_cluster()), PgCtl)
    assert isinstance(service_for(_cluster("pg_ctlcluster 15 main")), PgCtlCluster)
    assert isinstance(service_for(_cluster("systemd:postgresql@15-main.service")), Systemd)


@pytest.mark.parametrize(
    ("service", "start", "stop"),
    [
        ("pg_ctlcluster 15 main", ["pg_ctlcluster", "15", "main", "start"],
         ["pg_ctlcluster", "15", "main", "stop", "-m", "fast"]),
        ("systemd:pg15.service", ["systemctl", "start", "pg15.service"], ["systemctl", "stop", "pg15.service"]),
    ],
)  # fmt: skip
def test_platform_managers_start_and_stop_as_root_and_watch_the_data_directory(service, start, stop):
    c = _cluster(service)
    host = FakeHost()
    svc = service_for(c, host)
    svc.start()
    assert (start, "root") in host.calls
    host.running.add(c.datadir)
    svc.stop("fast")
    assert (stop, "root") in host.calls
    status = [(a, u) for a, u in host.calls if a[0].endswith("/pg_ctl")]
    assert status and all(a[1:] == ["-D", c.datadir, "status"] and u == "postgres" for a, u in status)
    n = len(host.calls)
    svc.stop("fast")  # already stopped: nothing sent to the platform
    assert not [a for a, _ in host.calls[n:] if a[0] in ("systemctl", "pg_ctlcluster")]


def test_private_options_only_through_pg_ctl():
    for service in ("pg_ctlcluster 15 main", "systemd:pg15.service"):
        with pytest.raises(ConfigError, match="takes no server options"):
            service_for(_cluster(service), FakeHost()).start(options="-c port=1")
    host = FakeHost()
    service_for(_cluster(confdir="/etc/postgresql/15/main"), host).start(options="-c port=1")
    pg_ctl = next(a for a, _ in host.calls if a[0].endswith("/pg_ctl"))
    assert pg_ctl[1:3] == ["-D", "/etc/postgresql/15/main"] and ["-o", "-c port=1"] == pg_ctl[-3:-1]


def test_log_file_is_where_the_platform_writes_it():
    assert service_for(_cluster("pg_ctlcluster 15 main")).log_file == "/var/log/postgresql/postgresql-15-main.log"
    assert service_for(_cluster("systemd:postgresql@15-main.service")).log_file.endswith("postgresql-15-main.log")
    assert service_for(_cluster("systemd:pg15.service")).log_file == ""  # the journal


def test_new_service_is_validated_and_carried_in_the_extra():
    extra = {"pg_bindir": "/b", "pg_datadir": "/d", "service": "systemd:pg15.service", "new_service": "pg17"}
    with pytest.raises(ConfigError, match=r"c\.extra\.new_service"):
        Cluster.from_connection("c", host="/s", port=5432, schema=None, login=None, password=None, extra=extra)
    extra["new_service"] = "systemd:pg17.service"
    c = Cluster.from_connection("c", host="/s", port=5432, schema=None, login=None, password=None, extra=extra)
    assert c.new_service == "systemd:pg17.service" and c.to_extra()["new_service"] == "systemd:pg17.service"


# -- what the new cluster becomes -----------------------------------------------------------------------------


def test_target_follows_the_old_service():
    t = registration.target(_cluster("pg_ctlcluster 15 main"), 17)
    assert (t.service, t.confdir, t.debian, t.new_unit) == (
        "pg_ctlcluster 17 main", "/etc/postgresql/17/main", ("15", "17", "main"), None,
    )  # fmt: skip
    t = registration.target(_cluster("systemd:postgresql@15-main.service"), 18)
    assert (t.service, t.old_unit, t.debian) == (
        "systemd:postgresql@18-main.service", "postgresql@15-main.service", ("15", "18", "main"),
    )  # fmt: skip
    assert not registration.target(_cluster(), 17).registers
    with pytest.raises(ConfigError, match="new_service"):
        registration.target(_cluster("systemd:pg15.service"), 17)
    with pytest.raises(ConfigError, match="another systemd unit"):
        registration.target(_cluster("systemd:pg15.service", new_service="systemd:pg15.service"), 17)
    t = registration.target(_cluster("systemd:pg15.service", new_service="systemd:pg17.service"), 17)
    assert (t.service, t.confdir, t.debian, t.old_unit, t.new_unit) == (
        "systemd:pg17.service", None, None, "pg15.service", "pg17.service",
    )  # fmt: skip


# -- Debian registration, for real in a temporary /etc/postgresql --------------------------------------------

OLD_CONF = "data_directory = '/var/lib/postgresql/15/main'\nport = 5432\ninclude_dir = 'conf.d'\n"


@pytest.fixture
def debian(tmp_path, monkeypatch):
    root = tmp_path / "etc"
    monkeypatch.setattr(registration, "CONF_ROOT", str(root))
    monkeypatch.setattr(registration, "BIN_ROOT", str(tmp_path / "lib"))
    old_dir = root / "15" / "main"
    old_dir.mkdir(parents=True)
    (old_dir / "postgresql.conf").write_text(OLD_CONF)
    (old_dir / "start.conf").write_text("# comment kept\nauto\n")
    (old_dir / "pg_ctl.conf").write_text("pg_ctl_options = ''\n")
    (old_dir / "environment").write_text("TZ=UTC\n")
    new = tmp_path / "data17"
    (new / "conf.d").mkdir(parents=True)
    (new / "PG_VERSION").write_text("17\n")
    for name, text in {
        "postgresql.conf": "include_dir = 'conf.d'\nport = 5432\n",
        "pg_hba.conf": "local all all trust\n",
        "pg_ident.conf": "",
        "conf.d/tuning.conf": "work_mem = '9MB'\n",
        "postgresql.auto.conf": "# ALTER SYSTEM\n",
    }.items():
        (new / name).write_text(text)
    state = RunState.for_run("pg15_to_pg17_upgrade", "r1", tmp_path / "state")
    state.save("plan", {"new": {"datadir": str(new), "bindir": "/usr/lib/postgresql/17/bin"}})
    return root, new, state, tmp_path


def _register(state, old, host, new, tmp_path):
    return registration.register(
        state, old, host, new_major=17, new_datadir=str(new), old_port=5432, socket_dirs="/var/run/postgresql",
        work_dir=str(tmp_path / "work"),
        carried={"files": ["conf.d/tuning.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.conf"],
                 "dirs": ["conf.d"]},
    )  # fmt: skip


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


def test_debian_registration_gives_the_pg_createcluster_layout_and_is_undone_exactly(debian):
    root, new, state, tmp_path = debian
    old = _cluster("pg_ctlcluster 15 main", confdir=f"{root}/15/main")
    before = _snapshot(root / "15" / "main")
    host = FakeHost()
    t = _register(state, old, host, new, tmp_path)
    assert t.service == "pg_ctlcluster 17 main"
    new_dir = root / "17" / "main"
    conf = (new_dir / "postgresql.conf").read_text()
    for line in (
        f"data_directory = '{new}'",
        f"hba_file = '{new_dir}/pg_hba.conf'",
        f"ident_file = '{new_dir}/pg_ident.conf'",
        "external_pid_file = '/var/run/postgresql/17-main.pid'",
        "cluster_name = '17/main'",
        "port = 5432",
        "unix_socket_directories = '/var/run/postgresql'",
    ):
        assert line in conf.splitlines(), (line, conf)
    assert conf.startswith("include_dir = 'conf.d'")  # relative: conf.d moved along
    assert (new_dir / "conf.d" / "tuning.conf").read_text() == "work_mem = '9MB'\n"
    assert (new_dir / "start.conf").read_text() == "# comment kept\nauto\n"  # the old one's, before it went manual
    assert (new_dir / "pg_ctl.conf").exists() and (new_dir / "environment").read_text() == "TZ=UTC\n"
    # the configuration left the data directory (postgresql.auto.conf stays, as with pg_createcluster)
    assert sorted(p.name for p in new.iterdir()) == ["PG_VERSION", "postgresql.auto.conf"]
    old_conf = (root / "15" / "main" / "postgresql.conf").read_text()
    assert old_conf.splitlines()[-1] == "port = 5433"  # postgresql-common's next free port
    assert "manual" in (root / "15" / "main" / "start.conf").read_text().split()
    events = [e["event"] for e in state.events()]
    assert events == ["debian_registered", "debian_old_moved"]
    assert state.first("debian_registered")["moved_port"] == 5433
    assert not [a for a, _ in host.calls if a[0] == "systemctl"]  # no systemd here: no daemon-reload

    host.running.add(str(new))  # it opened
    done = registration.unregister(state, old, host)
    assert (["pg_ctlcluster", "17", "main", "stop", "-m", "fast"], "root") in host.calls  # by its own service
    assert _snapshot(root / "15" / "main") == before  # port and start.conf exactly as they were
    assert not (root / "17").exists()  # this run created /etc/postgresql/17: gone again
    aside = Path(done["new_confdir_moved_to"])
    assert aside.parent == tmp_path / "work" and (aside / "conf.d" / "tuning.conf").exists()  # kept, not deleted
    again = registration.unregister(state, old, host)  # idempotent: nothing left to do
    assert "new_confdir_moved_to" not in again and _snapshot(root / "15" / "main") == before


def test_old_configuration_edited_since_gets_its_port_back_and_keeps_the_edit(debian):
    root, new, state, tmp_path = debian
    old = _cluster("pg_ctlcluster 15 main", confdir=f"{root}/15/main")
    _register(state, old, FakeHost(), new, tmp_path)
    conf = root / "15" / "main" / "postgresql.conf"
    conf.write_text("# edited by an admin\n" + conf.read_text())
    registration.unregister(state, old, FakeHost())
    lines = conf.read_text().splitlines()
    assert lines[0] == "# edited by an admin" and lines[-1] == "port = 5432"


def test_a_cluster_registered_by_someone_else_is_refused_before_any_change(debian):
    root, new, state, tmp_path = debian
    old = _cluster("pg_ctlcluster 15 main", confdir=f"{root}/15/main")
    (root / "17" / "main").mkdir(parents=True)
    before = _snapshot(root)
    with pytest.raises(UnsafeState, match="this run did not create it"):
        _register(state, old, FakeHost(), new, tmp_path)
    assert _snapshot(root) == before and state.events() == []
    assert registration.unregister(state, old, FakeHost()) == {}  # nothing of this run's to undo
    assert (root / "17" / "main").is_dir()


def test_plan_check_refuses_what_registration_could_not_do(debian):
    root, _, _, tmp_path = debian
    lib = tmp_path / "lib" / "17" / "bin"
    lib.mkdir(parents=True)
    (lib / "postgres").write_text("")
    old = _cluster("pg_ctlcluster 15 main", confdir=f"{root}/15/main")
    assert registration.check(old, 17, str(lib), FakeHost()).service == "pg_ctlcluster 17 main"
    with pytest.raises(ConfigError, match="pg_confdir"):
        registration.check(_cluster("pg_ctlcluster 15 main"), 17, str(lib), FakeHost())
    with pytest.raises(PlanError, match="new_bindir"):
        registration.check(old, 17, "/opt/pg17/bin", FakeHost())
    (root / "17" / "main").mkdir(parents=True)
    with pytest.raises(PlanError, match="registered already"):
        registration.check(old, 17, str(lib), FakeHost())


# -- systemd ----------------------------------------------------------------------------------------------------


def test_admin_units_are_switched_and_switched_back(tmp_path):
    state = RunState.for_run("pg15_to_pg17_upgrade", "r2", tmp_path / "state")
    new = tmp_path / "data17"
    new.mkdir()
    (new / "PG_VERSION").write_text("17\n")
    state.save("plan", {"new": {"datadir": str(new), "bindir": "/usr/lib/postgresql/17/bin"}})
    old = _cluster("systemd:pg15.service", new_service="systemd:pg17.service")
    host = FakeHost()
    t = registration.register(
        state, old, host, new_major=17, new_datadir=str(new), old_port=5432, socket_dirs="/tmp",
        work_dir=str(tmp_path / "work"), carried={},
    )  # fmt: skip
    assert t.service == "systemd:pg17.service" and t.confdir is None
    assert [(a, u) for a, u in host.calls if a[0] == "systemctl"] == [
        (["systemctl", "disable", "pg15.service"], "root"),
        (["systemctl", "stop", "pg15.service"], "root"),
        (["systemctl", "enable", "pg17.service"], "root"),
    ]
    assert [e["event"] for e in state.events()] == ["systemd_switched"]
    host = FakeHost(running={str(new)})
    registration.unregister(state, old, host)
    assert [(a, u) for a, u in host.calls if a[0] == "systemctl"] == [
        (["systemctl", "stop", "pg17.service"], "root"),
        (["systemctl", "disable", "pg17.service"], "root"),
        (["systemctl", "enable", "pg15.service"], "root"),
    ]


def test_debian_template_unit_gets_the_layout_the_unit_and_a_daemon_reload(debian):
    root, new, state, tmp_path = debian
    old = _cluster("systemd:postgresql@15-main.service", confdir=f"{root}/15/main")
    host = FakeHost(systemd=True)
    t = _register(state, old, host, new, tmp_path)
    assert t.service == "systemd:postgresql@17-main.service" and t.confdir == f"{root}/17/main"
    assert (root / "17" / "main" / "postgresql.conf").exists()
    assert [a for a, _ in host.calls if a[0] == "systemctl"] == [
        ["systemctl", "daemon-reload"],  # after start.conf changed: the generator reads it
        ["systemctl", "disable", "postgresql@15-main.service"],
        ["systemctl", "stop", "postgresql@15-main.service"],
        ["systemctl", "enable", "postgresql@17-main.service"],
    ]
    host = FakeHost(systemd=True, running={str(new)})
    registration.unregister(state, old, host)
    assert [a for a, _ in host.calls if a[0] == "systemctl"] == [
        ["systemctl", "stop", "postgresql@17-main.service"],
        ["systemctl", "disable", "postgresql@17-main.service"],
        ["systemctl", "enable", "postgresql@15-main.service"],
        ["systemctl", "daemon-reload"],
    ]
    assert not (root / "17").exists() and "manual" not in (root / "15" / "main" / "start.conf").read_text()
