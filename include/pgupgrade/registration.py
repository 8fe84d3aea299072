"""The new cluster of a major upgrade registered with the platform's service manager when it opens, and the
registration undone by a rollback.

What the new cluster becomes follows from the old cluster's ``service`` (``target``):

- ``pg_ctl``: nothing to register; the new cluster runs from its data directory.
- ``pg_ctlcluster <old> <name>`` (Debian's postgresql-common): what ``pg_upgradecluster`` leaves behind. The new
  cluster gets the layout ``pg_createcluster`` gives: ``/etc/postgresql/<new>/<name>/`` with the configuration
  the run carried into its data directory (postgresql.conf with every included file and directory, pg_hba.conf,
  pg_ident.conf: ``config.CarriedConfig.files``/``dirs``, moved there together so relative includes stay true),
  postgresql.conf pointing at the data directory and the configuration files, ``external_pid_file``
  ``/var/run/postgresql/<new>-<name>.pid``, ``cluster_name`` ``<new>/<name>``, the old port and socket
  directories; the old cluster's ``start.conf``, ``pg_ctl.conf`` and ``environment`` copied. The old cluster moves
  to the next free port (postgresql-common's own ``next_free_port``) and its ``start.conf`` says ``manual``:
  ``pg_lsclusters`` shows the new cluster on the old port, the old one down on another. The new cluster is then
  ``pg_ctlcluster <new> <name>``.
- ``systemd:postgresql@<old>-<name>.service`` (Debian's template): the same layout; the new cluster runs under
  ``postgresql@<new>-<name>.service``.
- ``systemd:<unit>`` (an admin's unit): the connection extra ``new_service`` names the new cluster's unit (the plan
  refuses without it).

For a unit, the old one is disabled (and stopped: it already is) and the new one enabled; the caller starts the
new cluster through its service. Every change is journaled in the upgrade run before it is made
(``debian_registered``, ``debian_old_moved``, ``systemd_switched``), with what it replaces; ``unregister`` reverses
exactly what the journal says happened: the new cluster stopped by its own service, the units switched back, the
new configuration directory moved aside into the run's work directory (never deleted), the old cluster's
postgresql.conf and start.conf as they were. The caller then starts the old cluster by its own service.

Configuration files under /etc/postgresql belong to the cluster's OS user (as pg_createcluster leaves them) and are
written as that user; only ``systemctl`` and ``pg_ctlcluster`` run as root.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
from dataclasses import dataclass, replace
from typing import Any

from pgupgrade.cluster import Cluster, debian_unit, parse_service, service_for
from pgupgrade.commands import Host
from pgupgrade.errors import ConfigError, PlanError, UnsafeState
from pgupgrade.scratch import exists, write_settings
from pgupgrade.state import RunJournal

log = logging.getLogger(__name__)

CONF_ROOT = "/etc/postgresql"  # postgresql-common's confroot
BIN_ROOT = "/usr/lib/postgresql"  # postgresql-common's binroot: pg_ctlcluster runs <BIN_ROOT>/<major>/bin
PID_DIR = "/var/run/postgresql"
COPIED_FROM_OLD = ("start.conf", "pg_ctl.conf", "environment")  # as pg_upgradecluster (and pg_createcluster's)
# what pg_upgradecluster writes into the old cluster's start.conf
MANUAL_START_CONF = (
    "# This cluster was upgraded to a newer major version. The old\n"
    "# cluster has been preserved for backup purposes, but is not started\n"
    "# automatically.\n\nmanual\n"
)
# postgresql-common's next_free_port: configured ports of every cluster, and ports something listens on
_NEXT_FREE_PORT = ["perl", "-MPgCommon", "-e", "print PgCommon::next_free_port()"]


@dataclass(frozen=True)
class Target:
    """How a major upgrade's new cluster runs: its service string, its configuration directory (None: its data
    directory), the Debian registration (old version, new version, cluster name) and the units switched."""

    service: str
    confdir: str | None = None
    debian: tuple[str, str, str] | None = None
    old_unit: str | None = None
    new_unit: str | None = None

    @property
    def registers(self) -> bool:
        return self.debian is not None or self.new_unit is not None


def target(old: Cluster, new_major: int) -> Target:
    """The new cluster's service, from the old cluster's (connection extra ``service``, ``new_service``)."""
    spec = parse_service(old.service)
    if spec.kind == "pg_ctlcluster":
        name = str(spec.name)
        return Target(
            f"pg_ctlcluster {new_major} {name}",
            f"{CONF_ROOT}/{new_major}/{name}",
            debian=(str(spec.version), str(new_major), name),
        )
    if spec.kind == "systemd":
        unit = str(spec.unit)
        deb = debian_unit(unit)
        if deb:
            version, name = deb
            suffix = ".service" if unit.endswith(".service") else ""  # named as the admin names it (sudoers)
            new_unit = f"postgresql@{new_major}-{name}{suffix}"
            return Target(
                f"systemd:{new_unit}",
                f"{CONF_ROOT}/{new_major}/{name}",
                debian=(version, str(new_major), name),
                old_unit=unit,
                new_unit=new_unit,
            )
        field_name = f"{old.name}.extra.new_service"
        if not old.new_service:
            raise ConfigError(
                field_name,
                f"the cluster runs under the systemd unit {unit}, which the new major cannot reuse: name the unit "
                "the upgraded cluster runs under (e.g. 'systemd:postgresql17.service')",
            )
        new = parse_service(old.new_service, field_name)
        if new.kind != "systemd" or new.unit == unit:
            raise ConfigError(field_name, f"must name another systemd unit than {unit}, got {old.new_service!r}")
        return Target(old.new_service, None, old_unit=unit, new_unit=new.unit)
    return Target("pg_ctl")


def _realpath(host: Host, path: str) -> str:
    return host.run(["readlink", "-f", "--", path], check=False, timeout=30).stdout.strip()


def check(old: Cluster, new_major: int, new_bindir: str, host: Host) -> Target:
    """The plan's view, without side effects: the new cluster's service can be set up. Refuses (PlanError or
    ConfigError) a Debian cluster whose connection does not name its configuration directory, an
    /etc/postgresql/<new>/<name> that exists already (another cluster is registered there), a new installation
    pg_ctlcluster would not run, a unit systemd does not know."""
    t = target(old, new_major)
    if t.debian:
        old_v, new_v, name = t.debian
        old_dir = f"{CONF_ROOT}/{old_v}/{name}"
        if old.confdir != old_dir or not exists(host, f"{old_dir}/postgresql.conf"):
            raise ConfigError(
                f"{old.name}.extra.pg_confdir",
                f"must be {old_dir} (where postgresql-common keeps cluster {old_v}/{name}'s postgresql.conf), got "
                f"{old.confdir!r}",
            )
        new_dir = f"{CONF_ROOT}/{new_v}/{name}"
        if exists(host, new_dir):
            raise PlanError(
                f"{new_dir} exists: a PostgreSQL {new_v} cluster named {name} is registered already (pg_lsclusters); "
                f"the upgraded cluster is registered there. Drop it (pg_dropcluster {new_v} {name}) or move it "
                "away first"
            )
        debian_bin = f"{BIN_ROOT}/{new_v}/bin"
        if _realpath(host, debian_bin) != _realpath(host, new_bindir) or not exists(host, f"{debian_bin}/postgres"):
            raise PlanError(
                f"pg_ctlcluster runs the new cluster from {debian_bin}, but new_bindir is {new_bindir}: install "
                f"postgresql-{new_v} (or set new_bindir to {debian_bin})"
            )
    if t.new_unit is not None:
        res = host.run(["systemctl", "cat", "--", t.new_unit], check=False, timeout=30)
        if res.exit_code != 0:
            raise PlanError(
                f"systemd does not know the unit {t.new_unit} the new cluster would run under: {res.stderr}"
            )
    return t


def register(
    state: RunJournal,
    old: Cluster,
    host: Host,
    *,
    new_major: int,
    new_datadir: str,
    old_port: int,
    socket_dirs: str,
    work_dir: str,
    carried: dict[str, Any],
) -> Target:
    """Registers the stopped new cluster as its service expects (module docstring), journaling each change before
    it is made; returns the target. ``carried``: the ``config_carried`` journal event (``files``, ``dirs``
    relative to the new data directory). The caller starts the new cluster through ``target.service``."""
    t = target(old, new_major)
    if t.debian:
        _register_debian(state, old, host, t, new_datadir, old_port, socket_dirs, work_dir, carried)
    if t.old_unit and t.new_unit and not state.happened("systemd_switched"):
        state.record("systemd_switched", old_unit=t.old_unit, new_unit=t.new_unit)
        _systemctl(host, "disable", t.old_unit)
        _systemctl(host, "stop", t.old_unit)  # stopped by the cutover already: the unit must not restart it
        _systemctl(host, "enable", t.new_unit)
    return t


def _register_debian(
    state: RunJournal,
    old: Cluster,
    host: Host,
    t: Target,
    new_datadir: str,
    old_port: int,
    socket_dirs: str,
    work_dir: str,
    carried: dict[str, Any],
) -> None:
    from pgupgrade.config import quote  # the carry-over's quoting of configuration values

    assert t.debian is not None and t.confdir is not None
    old_v, new_v, name = t.debian
    old_dir, new_dir, user = f"{CONF_ROOT}/{old_v}/{name}", t.confdir, old.os_user
    if not state.happened("debian_registered"):
        if exists(host, new_dir):
            raise UnsafeState(
                f"{new_dir} exists and this run did not create it: another PostgreSQL {new_v} cluster named {name} is "
                "registered; nothing was changed, the new cluster stays stopped"
            )
        saved = {n: _read(host, f"{old_dir}/{n}", user) for n in ("postgresql.conf", *COPIED_FROM_OLD)}
        state.save("debian_old_config", saved)
        state.record(
            "debian_registered",
            new_confdir=new_dir,
            old_confdir=old_dir,
            new_service=t.service,
            new_datadir=new_datadir,
            old_port=old_port,
            moved_port=_next_free_port(host),
            work_dir=work_dir,
            version_dir_existed=exists(host, f"{CONF_ROOT}/{new_v}"),
        )
        files = list(carried.get("files") or ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"])
        dirs = sorted({*(carried.get("dirs") or []), *(posixpath.dirname(f) for f in files if "/" in f)})
        host.run(["mkdir", "-p", "-m", "0755", "--", new_dir], user=user)
        for rel in dirs:
            host.run(["mkdir", "-p", "-m", "0755", "--", f"{new_dir}/{rel}"], user=user)
        for rel in files:
            host.run(["cp", "-p", "--", f"{new_datadir}/{rel}", f"{new_dir}/{rel}"], user=user)
        for n in COPIED_FROM_OLD:
            if saved[n] is not None:  # start.conf as it was before the old cluster became manual
                host.run(["tee", f"{new_dir}/{n}"], user=user, stdin=saved[n])
        write_settings(
            host,
            f"{new_dir}/postgresql.conf",
            {
                "data_directory": quote(new_datadir),
                "hba_file": quote(f"{new_dir}/pg_hba.conf"),
                "ident_file": quote(f"{new_dir}/pg_ident.conf"),
                "external_pid_file": quote(f"{PID_DIR}/{new_v}-{name}.pid"),
                "cluster_name": quote(f"{new_v}/{name}"),
                "port": str(int(old_port)),
                "unix_socket_directories": quote(socket_dirs),
            },
            user,
        )
        # the configuration lives in /etc now: no second copy in the data directory to edit by mistake
        host.run(["rm", "-f", "--", *(f"{new_datadir}/{rel}" for rel in files)], user=user)
        for rel in dirs:  # include directories, once empty
            _remove_empty_dirs(host, f"{new_datadir}/{rel}", user)
    if not state.happened("debian_old_moved"):
        moved_port = int((state.first("debian_registered") or {})["moved_port"])
        state.record("debian_old_moved", port=moved_port, start_conf="manual")
        write_settings(host, f"{old_dir}/postgresql.conf", {"port": str(moved_port)}, user)
        host.run(["tee", f"{old_dir}/start.conf"], user=user, stdin=MANUAL_START_CONF)
        _daemon_reload(host)
        log.info("registered %s/%s; the old cluster %s/%s is manual on port %d", new_v, name, old_v, name, moved_port)


def _remove_empty_dirs(host: Host, path: str, user: str) -> None:
    """path and the directories below it, those that are empty (nothing else is removed)."""
    host.run(["find", path, "-depth", "-type", "d", "-empty", "-delete"], user=user, check=False, timeout=60)


def _read(host: Host, path: str, user: str) -> str | None:
    res = host.run(["cat", "--", path], user=user, check=False, timeout=30)
    return res.stdout if res.exit_code == 0 else None


def _next_free_port(host: Host) -> int:
    out = host.run(_NEXT_FREE_PORT, timeout=60).stdout.strip()
    if not out.isdigit():
        raise UnsafeState(f"postgresql-common's next_free_port answered {out!r}, not a port")
    return int(out)


def _systemctl(host: Host, verb: str, unit: str) -> None:
    host.run(["systemctl", verb, unit], user="root", timeout=120)


def _daemon_reload(host: Host) -> None:
    """As pg_upgradecluster: systemd's postgresql generator reads start.conf."""
    if exists(host, "/run/systemd/system"):
        host.run(["systemctl", "daemon-reload"], user="root", timeout=120)


def unregister(upgrade_state: RunJournal, old: Cluster, host: Host) -> dict[str, Any]:
    """Reverses what ``register`` journaled (nothing when it never began): the new cluster stopped by its own
    service, its units switched back, its /etc directory moved aside into the run's work directory, the old
    cluster's postgresql.conf (port) and start.conf as they were. Leaves the old cluster stopped; the caller
    starts it by its own service. Returns what it did."""
    reg = upgrade_state.first("debian_registered")
    switched = upgrade_state.first("systemd_switched")
    plan = upgrade_state.load("plan") or {}
    new_datadir = (reg or {}).get("new_datadir") or (plan.get("new") or {}).get("datadir")
    done: dict[str, Any] = {}
    if not (reg or switched):
        return done
    if not upgrade_state.happened("registration_reversed"):  # every step below may run again: idempotent
        upgrade_state.record("registration_reversed")
    if new_datadir and exists(host, f"{new_datadir}/PG_VERSION"):
        new = replace(old, datadir=new_datadir, bindir=(plan.get("new") or {}).get("bindir", old.bindir))
        service, confdir = "pg_ctl", None
        if switched:
            service = f"systemd:{switched['new_unit']}"
        elif reg and exists(host, f"{reg['new_confdir']}/postgresql.conf"):
            service, confdir = reg["new_service"], reg["new_confdir"]
        svc = service_for(replace(new, service=service, confdir=confdir), host)
        if svc.is_running():
            svc.stop("fast")
            done["new_stopped_by"] = service
    if switched:
        _systemctl(host, "disable", switched["new_unit"])
        _systemctl(host, "enable", switched["old_unit"])
        done["units"] = {"disabled": switched["new_unit"], "enabled": switched["old_unit"]}
    if reg:
        done.update(_unregister_debian(upgrade_state, reg, old, host))
    log.info("registration of the new cluster reversed: %s", done)
    return done


def _unregister_debian(upgrade_state: RunJournal, reg: dict[str, Any], old: Cluster, host: Host) -> dict[str, Any]:
    user, done = old.os_user, dict[str, Any]()
    new_dir, old_dir = reg["new_confdir"], reg["old_confdir"]
    if exists(host, new_dir):
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        aside = f"{reg['work_dir']}/etc-{posixpath.basename(posixpath.dirname(new_dir))}-"
        aside += f"{posixpath.basename(new_dir)}.rolled-back-{stamp}"
        host.run(["mkdir", "-p", "--", reg["work_dir"]], user=user)
        host.run(["mv", "--", new_dir, aside], user=user)
        done["new_confdir_moved_to"] = aside
        if not reg.get("version_dir_existed"):
            _remove_empty_dirs(host, posixpath.dirname(new_dir), user)
    if upgrade_state.happened("debian_old_moved"):
        saved = upgrade_state.load("debian_old_config") or {}
        conf = f"{old_dir}/postgresql.conf"
        current, before = _read(host, conf, user) or "", saved.get("postgresql.conf")
        if before is not None and current.startswith(before.rstrip("\n")):
            host.run(["tee", conf], user=user, stdin=before)  # only the port line this run appended goes
        else:  # edited since: the port set back, the rest left as it is
            write_settings(host, conf, {"port": str(int(reg["old_port"]))}, user)
        start_conf = saved.get("start.conf")
        if start_conf is None:
            host.run(["rm", "-f", "--", f"{old_dir}/start.conf"], user=user)  # absent means auto
        else:
            host.run(["tee", f"{old_dir}/start.conf"], user=user, stdin=start_conf)
        _daemon_reload(host)
        done["old_restored"] = {"port": reg["old_port"], "confdir": old_dir}
    return done
