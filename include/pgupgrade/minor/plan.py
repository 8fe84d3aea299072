"""The minor upgrade's plan, with no side effects, and its typed record ``MinorPlan``.

The plan records the release the cluster runs before the upgrade — version, ``version()`` text, the bin
directory the postmaster really runs from, the Debian package versions, the rendered install command — and the
rollback goes back to exactly that, reading it from the run's state: never from the Airflow connection (whose
``pg_bindir`` still names the old bin directory after a minor upgrade by bin directory) nor from the trigger
conf. ``MinorPlan`` is stored (``plans.to_json``) as the same JSON document the plan always was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from pgupgrade import backup, checks, facts, plans, scratch, topology, versions
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.context import RunContext
from pgupgrade.errors import CheckFailed, CommandError, ConfigError, PlanError, UnsafeState
from pgupgrade.install_command import parse_install_command
from pgupgrade.minor import installers
from pgupgrade.minor.fields import INSTALL_COMMAND_VARIABLE, Installer
from pgupgrade.scratch import InitdbOptions, exists
from pgupgrade.sql import connect, scalar_named

log = logging.getLogger(__name__)

# stop, install, start, validate: the data directory is reused, no term grows with the data
OUTAGE_ESTIMATE_S = {Installer.BINDIR: 10.0, Installer.APT: 90.0, Installer.COMMAND: 60.0}


# -- the plan's record -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OldRelease:
    """The release the cluster runs before the upgrade: what the rollback goes back to."""

    version: str
    version_num: int
    version_text: str  # version(), compared in full by the rollback
    bindir: str  # where the postmaster really runs from
    datadir: str


@dataclass(frozen=True)
class NewRelease:
    """The target release."""

    version: str
    version_num: int
    bindir: str  # for apt and command the same bin directory as before, new binaries
    datadir: str


@dataclass(frozen=True)
class AptPins:
    """Installer apt: the exact package versions there and back."""

    packages: dict[str, str]  # the target release
    previous_packages: dict[str, str]  # the running release, reinstalled by the rollback
    installed_before: dict[str, str | None]


@dataclass(frozen=True)
class InstallCommand:
    """Installer command: the admin's argv, rendered for the target and for the running release."""

    argv: list[str]
    install: list[str]
    rollback: list[str]


@dataclass(frozen=True)
class Space:
    """Free bytes on the data and the backup filesystems, and what the backup and min_free_gb take."""

    free_data: int
    free_backup: int
    need_backup: int
    min_free: int
    same_filesystem: bool


@dataclass(frozen=True, kw_only=True)
class MinorPlan:
    """What a minor upgrade run does, recorded before it changes anything (the run's plan.json).

    Every version of the minor plan since the runbook exists wrote every one of these keys, so a plan recorded
    before ``schema_version`` reads complete; the defaults are the values such a plan always carried."""

    already_upgraded: bool = False  # a run with nothing to do records plans.AlreadyThere instead
    installer: Installer
    old: OldRelease
    new: NewRelease
    connection_bindir: str  # the Airflow connection's pg_bindir, which may lag behind old.bindir
    method: str
    transfer_mode: str | None = None  # no pg_upgrade: the key the shared readers of a plan expect
    method_reason: str
    apt: AptPins | None = None
    command: InstallCommand | None = None
    other_clusters: list[str]
    databases: list[str]
    data_bytes: int
    initdb: InitdbOptions  # for a restore from the backup by the rollback
    backup_dir: str
    space: Space
    warnings: list[str]
    outage_estimate_s: float
    # the primary and its listed standbys as proven by the plan (pgupgrade.topology.Topology); empty without them
    topology: dict[str, Any] = field(default_factory=dict)

    @property
    def rolls_standbys(self) -> bool:
        """Whether the run upgrades the listed standbys first (pgupgrade.minor.standbys): installer bindir."""
        return bool(self.topology) and self.installer is Installer.BINDIR

    def apt_pins(self) -> AptPins:
        """The package versions of installer apt (its plan always has them)."""
        if self.apt is None:
            raise UnsafeState(f"the plan of installer {self.installer} records no apt package versions")
        return self.apt

    def install_command(self) -> InstallCommand:
        """The rendered argv of installer command (its plan always has it)."""
        if self.command is None:
            raise UnsafeState(f"the plan of installer {self.installer} records no install command")
        return self.command


def with_bindir(ctx: RunContext, bindir: str) -> RunContext:
    """The same run context with the cluster's binaries taken from bindir."""
    return replace(ctx, cluster=ctx.cluster.with_installation(bindir))


def on_old(ctx: RunContext, plan_: MinorPlan) -> RunContext:
    """The cluster as it runs before the upgrade: the bin directory the plan found the postmaster running from."""
    return with_bindir(ctx, plan_.old.bindir)


def on_new(ctx: RunContext, plan_: MinorPlan) -> RunContext:
    """The cluster on the target release (for apt and command the same bin directory, new binaries)."""
    return with_bindir(ctx, plan_.new.bindir)


def server_version(ctx: RunContext) -> tuple[int, str]:
    """``server_version_num`` and ``version()`` of the running server."""
    with connect(ctx.cluster) as conn:
        return int(scalar_named(conn, "server-version-num")), str(scalar_named(conn, "server-version-string"))


# -- plan -----------------------------------------------------------------------------------------------


def plan(ctx: RunContext, install_command: Any = None) -> MinorPlan | plans.AlreadyThere:
    """No side effects: the target is the same major and newer (older only with allow_downgrade); the
    installer can deliver exactly the target (and the rollback the running release); space; other clusters.

    install_command: the admin's configuration for installer command (the Airflow Variable's JSON)."""
    p, c = ctx.params, ctx.cluster
    target, new_inst = _target(ctx)
    num, version_text = server_version(ctx)
    running = versions.Version.from_num(num)
    _check_target(running, target, allow_downgrade=p["allow_downgrade"])
    if running == target:
        return plans.AlreadyThere(running=str(running), reason=f"the cluster already runs {running}")
    installer = Installer(p["installer"])
    bindir_now, warnings = _bindir_now(ctx)
    dbs = facts.user_databases(c)
    new_bindir, apt, command = bindir_now, None, None
    if installer is Installer.BINDIR:
        new_bindir = _plan_bindir(ctx, new_inst, dbs)
    elif installer is Installer.APT:
        apt = _plan_apt(ctx, bindir_now, running, target)
    else:
        command = _plan_command(install_command, running, target)
    others = _other_clusters(ctx, installer, running, bindir_now)
    data_bytes = _data_bytes(ctx, dbs)
    backup_dir = p["backup_dir"] or backup.default_dir(ctx)
    space = _check_space(ctx, backup_dir, data_bytes)
    nodes = ctx.standbys()  # resolved once: each may open an SSH connection
    topo = topology.planned(c, nodes, p["max_standby_lag_mb"])
    if topo and installer is Installer.BINDIR:
        _check_standby_binaries(nodes, new_bindir, target)
    elif topo:
        warnings.append(
            f"{len(topo['standbys'])} standby(s) keep running {running}: installer {installer} upgrades the "
            "primary's host only; upgrade their binaries too (the release notes advise standbys first)"
        )
    return MinorPlan(
        installer=installer,
        old=OldRelease(str(running), num, version_text, bindir_now, c.datadir),
        new=NewRelease(str(target), _num(target), new_bindir, c.datadir),
        connection_bindir=c.bindir,
        method=f"minor {'downgrade' if target < running else 'upgrade'} ({installer})",
        method_reason=_method_reason(installer, running, target, new_bindir),
        apt=apt,
        command=command,
        other_clusters=others,
        databases=dbs,
        data_bytes=data_bytes,
        initdb=scratch.matching_options(c),
        backup_dir=backup_dir,
        space=space,
        warnings=warnings,
        outage_estimate_s=OUTAGE_ESTIMATE_S[installer],
        topology=topo,
    )


def _check_standby_binaries(nodes: list[tuple[Cluster, Host]], new_bindir: str, target: versions.Version) -> None:
    """The rolling upgrade restarts each standby from new_bindir on its own host, by pg_ctl: refused unless it
    can (every standby named)."""
    problems = []
    for standby, host in nodes:
        if standby.service != "pg_ctl":
            problems.append(f"standby {standby.name}: service {standby.service} (installer bindir needs pg_ctl)")
            continue
        try:
            got = versions.inspect(new_bindir, host).version
        except (CommandError, CheckFailed, ConfigError) as exc:
            problems.append(f"standby {standby.name}: no PostgreSQL in {new_bindir} on {host.name}: {exc}")
            continue
        if got != target:
            problems.append(f"standby {standby.name}: {new_bindir} on {host.name} is PostgreSQL {got}, not {target}")
    if problems:
        raise PlanError("; ".join(problems) + ". Nothing was stopped.")


def _target(ctx: RunContext) -> tuple[versions.Version, versions.Installation | None]:
    """The release to run — target_version, or for installer bindir without it new_bindir's ``postgres --version``
    (asked through the host runner) — and for installer bindir new_bindir's installation. A target_version that
    disagrees with new_bindir is refused, naming both."""
    p = ctx.params
    if p["installer"] != Installer.BINDIR:
        return versions.Version.parse(p["target_version"]), None  # validate_params: required by apt and command
    new_bindir = p["new_bindir"]
    if not exists(ctx.host, f"{new_bindir}/postgres"):
        what = f"PostgreSQL {p['target_version']}" if p["target_version"] else "the target release"
        raise PlanError(f"new_bindir {new_bindir} has no postgres program: {what} is not installed there")
    new_inst = versions.inspect(new_bindir, ctx.host)
    found = new_inst.version
    if not p["target_version"]:
        log.info("target_version not given: new_bindir %s is PostgreSQL %s, the target", new_bindir, found)
        return found, new_inst
    target = versions.Version.parse(p["target_version"])
    if found.major != target.major:
        raise PlanError(
            f"new_bindir {new_bindir} is PostgreSQL {found}, another major than the target_version {target}: a "
            f"major upgrade needs pg_upgrade (pg{target.major}_to_pg{found.major}_upgrade)"
        )
    if found != target:
        raise PlanError(
            f"target_version {target} disagrees with new_bindir {new_bindir}, which is PostgreSQL {found}: name the "
            f"bin directory of {target}, or leave target_version empty to run {found}"
        )
    return target, new_inst


def _check_target(running: versions.Version, target: versions.Version, *, allow_downgrade: bool) -> None:
    """The same major; older only with allow_downgrade."""
    if running.major != target.major:
        raise PlanError(
            f"a minor upgrade stays within one major: the server runs {running}, the target is {target}"
            f" (use the pg{running.major}_to_pg{target.major}_upgrade DAG for a major upgrade)"
        )
    if target < running and not allow_downgrade:
        raise PlanError(
            f"the target {target} is older than the running {running}: set allow_downgrade=true to go "
            "back to an earlier minor release"
        )


def _bindir_now(ctx: RunContext) -> tuple[str, list[str]]:
    """The bin directory the server runs from, and a warning when the connection names another one."""
    c = ctx.cluster
    bindir_now = installers.current_bindir(ctx.host, c)
    if bindir_now == c.bindir:
        return bindir_now, []
    return bindir_now, [
        f"the connection's pg_bindir is {c.bindir}, but the server runs from {bindir_now}: this run "
        "uses the latter; update the connection"
    ]


def _num(v: versions.Version) -> int:
    return int(v.major) * 10000 + int(v.minor)


def _method_reason(installer: Installer, running: versions.Version, target: versions.Version, bindir: str) -> str:
    if installer is Installer.BINDIR:
        return f"restart the data directory from {bindir} ({target}); the {running} installation stays for a rollback"
    if installer is Installer.APT:
        return f"Debian packages {running} → {target} in place; the rollback reinstalls {running}"
    return f"the admin's install command for {target}; the rollback runs it for {running}"


def _plan_bindir(ctx: RunContext, new_inst: versions.Installation | None, dbs: list[str]) -> str:
    """Installer bindir: new_bindir (exactly the target, checked by ``_target``) has every extension the cluster
    uses."""
    c, host = ctx.cluster, ctx.host
    if new_inst is None:
        raise UnsafeState("installer bindir planned without new_bindir's installation")
    if c.service != "pg_ctl":
        raise PlanError(
            f"installer bindir restarts the cluster with pg_ctl from another bin directory; service "
            f"{c.service!r} decides the binaries itself: use installer apt or command"
        )
    missing = checks.missing_extensions(c, dbs, new_inst, host)
    if missing:
        raise PlanError(f"the {new_inst.version} installation lacks extensions the cluster uses: " + "; ".join(missing))
    return str(new_inst.bindir)


def _plan_apt(ctx: RunContext, bindir_now: str, running: versions.Version, target: versions.Version) -> AptPins:
    """Installer apt: the cluster runs from Debian's bin directory, and a repository offers every package in
    the target release and still in the running one (for the rollback)."""
    host = ctx.host
    deb_bindir = installers.debian_bindir(running.major)
    if installers.realpath(host, bindir_now) != installers.realpath(host, deb_bindir):
        raise PlanError(
            f"installer apt replaces {deb_bindir}; this cluster runs from {bindir_now}: use installer bindir or command"
        )
    to: dict[str, str] = {}
    back: dict[str, str] = {}
    installed: dict[str, str | None] = {}
    for pkg in installers.debian_packages(running.major):
        pol = installers.apt_policy(host, pkg)
        installed[pkg] = pol.installed
        if pol.installed is None:
            raise PlanError(
                f"package {pkg} is not installed: installer apt upgrades the packages the cluster runs from"
            )
        wanted = pol.matching(str(target))
        if not wanted:
            raise PlanError(
                f"apt-cache policy {pkg} lists no {target} (it knows {', '.join(pol.versions) or 'none'}):"
                " run apt-get update, or add the repository that has it"
            )
        to_v = pol.candidate if pol.candidate in wanted else wanted[0]
        if to_v != pol.installed and not pol.downloadable(to_v):
            raise PlanError(f"no repository offers {pkg} {to_v}")
        prev = pol.matching(str(running))
        back_v = pol.installed if pol.installed in prev else (prev[0] if prev else None)
        if back_v is None or not pol.downloadable(back_v):
            raise PlanError(
                f"the rollback could not reinstall {pkg} {running}: no repository offers it any more "
                f"(apt-cache policy {pkg}); keep its .deb files in a local repository first"
            )
        to[pkg], back[pkg] = to_v, back_v
    return AptPins(packages=to, previous_packages=back, installed_before=installed)


def _plan_command(install_command: Any, running: versions.Version, target: versions.Version) -> InstallCommand:
    """Installer command: the admin's argv (never the trigger conf's), rendered both ways."""
    if install_command is None:
        raise ConfigError(
            "installer",
            f"installer command needs the Airflow Variable {INSTALL_COMMAND_VARIABLE}: "
            "a JSON argv list naming {version}, set by an admin",
        )
    argv = parse_install_command(install_command, f"Variable {INSTALL_COMMAND_VARIABLE}")
    return InstallCommand(
        argv=argv,
        install=installers.render_command(argv, str(target)),
        rollback=installers.render_command(argv, str(running)),
    )


def _other_clusters(ctx: RunContext, installer: Installer, running: versions.Version, bindir_now: str) -> list[str]:
    """apt and command replace the binaries in place: the other clusters that use them, refused unless
    acknowledged (ack_other_clusters)."""
    if installer is Installer.BINDIR:
        return []
    others = installers.other_clusters(ctx.host, ctx.cluster, running.major, bindir_now)
    if others and not ctx.params["ack_other_clusters"]:
        raise PlanError(
            "other clusters on this host use the same binaries, which the upgrade replaces: "
            + "; ".join(others)
            + " (they run the new release after their next restart; Debian's "
            "package scripts restart them on systemd hosts): set ack_other_clusters=true to go ahead"
        )
    return others


def _data_bytes(ctx: RunContext, dbs: list[str]) -> int:
    with connect(ctx.cluster) as conn:
        return sum(int(scalar_named(conn, "database-size", {"datname": d})) for d in dbs)


def _check_space(ctx: RunContext, backup_dir: str, data_bytes: int) -> Space:
    """The data and the backup filesystems each keep min_free_gb after a backup of up to 1.1 times the data."""
    host, datadir = ctx.host, ctx.cluster.datadir
    min_free = ctx.params["min_free_gb"] * 2**30
    need_backup = int(data_bytes * 1.1)  # a compressed directory dump is smaller: an upper bound
    free_data = checks.free_bytes(host, datadir)
    free_backup = checks.free_bytes(host, backup_dir)
    same = checks.same_filesystem(host, datadir, backup_dir)
    gb = 2**30
    short: list[str] = []
    if same:
        if free_data - need_backup < min_free:
            short.append(
                f"the data directory and the backup share a filesystem with {free_data / gb:.1f} GB free; "
                f"after a backup of up to {need_backup / gb:.2f} GB it must keep {min_free / gb:.0f} GB"
            )
    else:
        if free_data < min_free:
            short.append(
                f"{free_data / gb:.1f} GB free for the data directory {datadir}, min_free_gb is {min_free / gb:.0f}"
            )
        if free_backup - need_backup < min_free:
            short.append(
                f"{free_backup / gb:.1f} GB free for the backup in {backup_dir}; after a backup of up to "
                f"{need_backup / gb:.2f} GB it must keep {min_free / gb:.0f} GB"
            )
    if short:
        raise PlanError("not enough free space: " + "; ".join(short) + " (min_free_gb)")
    return Space(
        free_data=free_data, free_backup=free_backup, need_backup=need_backup, min_free=min_free, same_filesystem=same
    )
