"""Every command the library runs as another user, and the sudoers file that allows exactly those.

Workers run as an unprivileged user (the official Airflow image's ``airflow``) and reach a database host either
locally (``LocalHost``) or by SSH (``SSHHost``), ideally logged in as the cluster's OS user (``postgres``). A few
commands need another user: root for packages (``apt-get install``), extension files (``install`` into the
installation), service units (``systemctl``, ``pg_ctlcluster``) and the admin's install command; the cluster's OS
user for everything that touches the data directory when the login user is someone else (the worker itself, or an
SSH login such as ``deploy``). As root the runner switches user with ``runuser``; otherwise it runs exactly::

    sudo -n -u <user> [-D <dir>] -- <program> <args...>

never a shell, never ``--preserve-env``: a sudoers rule can allow each program by name, and nothing needs ``ALL``
or ``SETENV``. The environment a command needs (``LC_ALL``, ``LANG``, libpq's ``PG*`` including ``PGPASSWORD``,
apt's ``DEBIAN_FRONTEND``) reaches it through ``env_keep`` (``ENV_KEEP``); ``PATH`` is sudo's ``secure_path``.
Over SSH the runner's constant wrapper (``commands._REMOTE_WRAPPER``) runs as the login user *before* sudo: it
reads secrets from stdin into the environment and execs sudo, so no secret is ever on a command line ``ps`` shows.
``-D <dir>`` (a working directory the login user may not enter) needs ``CWD=*`` in the rule; only the programs
whose entry says ``cwd=True`` get it.

``INVENTORY`` lists each such program, the user it runs as (``RunsAs.OS_USER``: the cluster's ``os_user``;
``RunsAs.ROOT``) and, where the library's arguments have a fixed shape, a sudoers argument pattern (root rules
only: they are the privilege boundary). The runner consults it before running anything with ``user=``
(``require``): a program missing here raises ``NotInInventory`` naming it, before it runs, as root too — so
every test that runs a step (as root, with ``runuser``) also proves the inventory complete for that step.
``tests/unit/test_privileges.py`` adds a static scan of every ``.run(..., user=...)`` call for the paths no test
runs. The admin's install command (Variables ``pgupgrade_minor_install_command``,
``pgupgrade_extension_install_command``) is the one root program the library cannot know: pass its absolute path
to the generator with ``--install-command``.

Generate the sudoers file on the database host (program paths are resolved with sudo's ``secure_path``) and check
it before installing::

    python -m pgupgrade.privileges --login airflow --os-user postgres \\
        --bindir /usr/lib/postgresql/16/bin --bindir /usr/lib/postgresql/17/bin > pgupgrade.sudoers
    visudo -cf pgupgrade.sudoers && install -m 0440 pgupgrade.sudoers /etc/sudoers.d/pgupgrade

With an SSH login that *is* the cluster's OS user (``--login postgres --os-user postgres``, the recommended
set-up) only the root rules are written. A command sudo refuses raises ``SudoRefused`` naming the program, the
user and the rule to add. What the rules for the OS user are worth: psql, ``tee`` and ``pg_ctl -o`` as
``postgres`` already give everything ``postgres`` can do, so they only make the account's use explicit and
auditable (sudo logs every command); the boundary that matters is root, where each rule names one program and,
where the library's arguments are fixed, their shape (``apt-get install`` of ``postgresql-N`` packages,
``install`` into the installations' extension and library directories, ``systemctl start|stop|enable|disable`` of
the named units). ``apt-get install`` and an install command are root-equivalent by nature: allow them only where the
runbooks that need them (minor upgrade by apt or by command, extension files by command) are used.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pgupgrade.errors import PgUpgradeError

# The environment the library gives commands run as another user (commands.BASE_ENV, Cluster.libpq_env,
# minor.installers.APT_ENV); sudo keeps exactly these (PATH: sudo's secure_path replaces it).
ENV_KEEP = (
    "DEBIAN_FRONTEND",
    "LANG",
    "LC_ALL",
    "NEEDRESTART_MODE",
    "PGDATABASE",
    "PGHOST",
    "PGPASSWORD",
    "PGPORT",
    "PGUSER",
)
ENV_SET_BY_SUDO = frozenset({"PATH"})
# sudo's default secure_path on Debian: where it looks a bare program name up (and so where the rules point)
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_DIRS = frozenset(SECURE_PATH.split(":"))
DEBIAN_BINDIR = "/usr/lib/postgresql/*/bin"
DEBIAN_EXTENSION_DIR = "/usr/share/postgresql/[0-9]+/extension"
DEBIAN_PKGLIBDIR = "/usr/lib/postgresql/[0-9]+/lib"
BINDIR = "{bindir}/"  # prefix of a PostgreSQL program's entry: it runs from an installation's bin directory


class RunsAs(StrEnum):
    OS_USER = "os_user"  # the cluster's OS user (connection extra os_user, usually postgres)
    ROOT = "root"


@dataclass(frozen=True)
class Privilege:
    """One program the library runs as another user.

    ``program``: a system program's bare name (resolved on the host through sudo's ``secure_path``), or
    ``{bindir}/<name>`` for a PostgreSQL program of any configured installation. ``args``: a sudoers regular
    expression for the arguments (``None``: any), with ``{extension_dir}`` / ``{pkglibdir}`` filled in by the
    generator. ``cwd``: the library runs it with a working directory (``sudo -D``, ``CWD=*``)."""

    program: str
    runs_as: RunsAs
    why: str
    args: str | None = None
    cwd: bool = False

    @property
    def name(self) -> str:
        return self.program.removeprefix(BINDIR)

    @property
    def postgres_program(self) -> bool:
        return self.program.startswith(BINDIR)


def _os(program: str, why: str, **kw: bool) -> Privilege:
    return Privilege(program, RunsAs.OS_USER, why, **kw)  # type: ignore[arg-type]


_APT_PREFIX = (
    r"install( --download-only)? -y -q -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef"
    r" -o DPkg::Lock::Timeout=300( --allow-downgrades)?"
)
_DEB_VERSION = r"[0-9][A-Za-z0-9.+~:-]*"
_FILES = r"( /[^ ]+)+"

INVENTORY: tuple[Privilege, ...] = (
    # -- as the cluster's OS user: the data directory, backups, scratch clusters -------------------------------
    _os("cat", "read configuration files, backup_label (backup, scratch, major.transfer)"),
    _os("cp", "copy configuration, backups, WAL back (backup, recovery, major.transfer)"),
    _os("du", "size of a base backup (backup)"),
    _os(
        "find",
        "list and checksum backups, empty-directory checks, pg_upgrade logs, tablespace links"
        " (backup, scratch, major, recovery)",
    ),
    _os("head", "postmaster.pid's first line (minor.installers)"),
    _os("kill", "kill -0: is the postmaster alive (minor.rollback)"),
    _os("ln", "point a rebuilt data directory's pg_tblspc link at its tablespace again (backup)"),
    _os("ls", "list WAL set aside (recovery); a standby's own top-level files (major.standbys)"),
    _os("mkdir", "backup, socket, log and work directories (backup, services, scratch, cluster, major.transfer)"),
    _os(
        "mv",
        "set the old data directory and rolled-back tablespace directories aside, pg_control.old back"
        " (recovery, services.restore_pg_control, major.standbys)",
    ),
    _os("pgbackrest", "version, stanza-upgrade, check and full backup of the new cluster (archiving)"),
    _os("rmdir", "the emptied directory a re-cloned standby's own files waited in (major.standbys)"),
    _os(
        "rsync",
        "a major upgrade's old and new data directories from the primary's host to a standby's (major.standbys)",
    ),
    _os("readlink", "/proc/<pid>/exe of the postmaster (minor.installers)"),
    _os("rm", "work directories, dumps, leftovers of a failed initdb, the old cluster (major, recovery)"),
    _os("ssh", "the primary's host logs in to a standby's host: the plan's check, rsync's transport (major.standbys)"),
    _os("sha256sum", "backup checksums, run in the backup directory (backup)", cwd=True),
    _os("stat", "owner and mode of a socket directory (services)"),
    _os("sync", "journal lines spooled on the database host reach the disk (state.spool)"),
    _os("tail", "end of a server log, pg_upgrade logs (scratch, major.transfer)"),
    _os("tee", "write postgresql.conf / postgresql.auto.conf (scratch, major.transfer)"),
    _os("test", "does a file exist (scratch, services, cleanup)"),
    _os("touch", "standby.signal of a standby's new data directory (major.standbys)"),
    Privilege(
        "sh",
        RunsAs.OS_USER,
        "pg_upgrade's own delete_old_cluster.sh (major.cleanup)",
        args=r"^/[^ ]*/delete_old_cluster\.sh$",
        cwd=True,  # harmless with these arguments; lets tests run their probes as the OS user in a directory
    ),
    _os(f"{BINDIR}initdb", "new and scratch clusters (scratch, major.transfer, recovery)"),
    _os(
        f"{BINDIR}pg_basebackup",
        "the base backup link mode comes back from (backup); standbys re-cloned (major.standbys)",
    ),
    _os(f"{BINDIR}pg_controldata", "checkpoint location of a stopped cluster (services)"),
    _os(f"{BINDIR}pg_ctl", "start (in the data directory), stop, status (cluster.Service)", cwd=True),
    _os(f"{BINDIR}pg_dump", "logical backup, dump/restore (backup)"),
    _os(f"{BINDIR}pg_dumpall", "globals of the logical backup (backup)"),
    _os(f"{BINDIR}pg_restore", "backup check (-l), restore (backup)"),
    _os(f"{BINDIR}pg_upgrade", "--check and the upgrade, in its work directory (major)", cwd=True),
    _os(f"{BINDIR}pg_verifybackup", "check the base backup (backup)"),
    _os(
        f"{BINDIR}postgres",
        "--describe-config of the new installation (major.transfer); -C primary_conninfo (major.standbys)",
    ),
    _os(f"{BINDIR}psql", "restore globals, update_extensions.sql (backup, major.cutover)"),
    _os(f"{BINDIR}vacuumdb", "analyze after a major upgrade (major.after)"),
    # -- as root: packages, extension files, service units -----------------------------------------------------
    Privilege(
        "apt-get",
        RunsAs.ROOT,
        "minor upgrade by apt: install exact postgresql-N / postgresql-client-N versions (minor.installers)",
        args=rf"^{_APT_PREFIX}( postgresql-(client-)?[0-9]+={_DEB_VERSION})+$",
    ),
    Privilege(
        "install",
        RunsAs.ROOT,
        "extension files copied into the installation (extension.source)",
        args=rf"^-m (0644 -t {{extension_dir}}|0755 -t {{pkglibdir}}) --{_FILES}$",
    ),
    Privilege(
        "systemctl",
        RunsAs.ROOT,
        "service systemd:<unit>: start and stop the unit (cluster.Systemd); at opening and in the rollback, enable "
        "one cluster's unit and disable the other's, and reload units after a Debian registration (registration)",
        args=r"^((start|stop|enable|disable) {unit}|daemon-reload)$",
    ),
    Privilege("pg_ctlcluster", RunsAs.ROOT, "service 'pg_ctlcluster N name' (cluster.Service)"),
)
ADMIN_COMMAND = "the admin's install command"


class PrivilegeError(PgUpgradeError):
    """A command cannot run as the user asked: the inventory or the host's sudoers rules lack it."""


class NotInInventory(PrivilegeError):
    """The library asked to run a program as another user that ``INVENTORY`` does not list (a bug here)."""


class SudoRefused(PrivilegeError):
    """sudo on the host refused the command: its sudoers file lacks the rule."""

    def __init__(self, argv: Sequence[str], user: str, login: str | None, where: str, detail: str) -> None:
        self.argv = list(argv)
        self.user = user
        rule = sudoers_hint(argv[0], user, login)
        super().__init__(
            f"sudo on {where} refused to run {argv[0]!r} as {user!r}"
            f"{f' for login {login!r}' if login else ''}: {detail.strip()}. The sudoers file needs {rule} "
            "(generate it with `python -m pgupgrade.privileges`, see that module's docstring)"
        )


def sudoers_hint(program: str, user: str, login: str | None) -> str:
    role = RunsAs.ROOT if user == "root" else RunsAs.OS_USER
    entry = lookup(program, role)
    cwd = "CWD=* " if entry and entry.cwd else ""
    path = program if program.startswith("/") else f"/usr/bin/{program} (its path on the host)"
    return f"a rule like `{login or '<login>'} ALL = ({user}) NOPASSWD: {cwd}{path}`"


def lookup(program: str, role: RunsAs) -> Privilege | None:
    """The inventory entry for argv[0] run as role (None: not listed)."""
    if "/" not in program:
        candidates = [p for p in INVENTORY if not p.postgres_program and p.program == program]
    else:
        base, parent = os.path.basename(program), os.path.dirname(program)
        candidates = [
            p
            for p in INVENTORY
            if (p.postgres_program and p.name == base)
            or (not p.postgres_program and p.program == base and parent in SYSTEM_DIRS)
        ]
    return next((p for p in candidates if p.runs_as == role), None)


def require(argv: Sequence[str], user: str, *, cwd: str | None = None, env_keys: Iterable[str] = ()) -> Privilege:
    """The inventory entry allowing argv to run as user, or NotInInventory naming what is missing. A program run
    as root that the library does not know is the admin's install command (its rule comes from
    ``--install-command``); it must be named by absolute path or by a program in ``secure_path``."""
    role = RunsAs.ROOT if user == "root" else RunsAs.OS_USER
    entry = lookup(argv[0], role)
    if entry is None and role == RunsAs.ROOT:
        entry = Privilege(argv[0], RunsAs.ROOT, ADMIN_COMMAND, cwd=False)
    if entry is None:
        raise NotInInventory(
            f"pgupgrade runs {argv[0]!r} as {user!r} ({role.value}), but pgupgrade.privileges.INVENTORY does not list "
            f"{os.path.basename(argv[0])!r} for {role.value}: add it there (the sudoers file is generated from it)"
        )
    if cwd is not None and not entry.cwd:
        raise NotInInventory(
            f"pgupgrade runs {argv[0]!r} as {user!r} in the working directory {cwd!r}, but its inventory entry has "
            "cwd=False (sudo -D needs CWD=* in its rule): set cwd=True in pgupgrade.privileges.INVENTORY"
        )
    unkept = sorted(set(env_keys) - set(ENV_KEEP) - ENV_SET_BY_SUDO)
    if unkept:
        raise NotInInventory(
            f"pgupgrade runs {argv[0]!r} as {user!r} with environment variables sudo would drop: {', '.join(unkept)}; "
            "add them to pgupgrade.privileges.ENV_KEEP (the sudoers env_keep list)"
        )
    return entry


# -- the sudoers file -----------------------------------------------------------------------------------------

_REGEX_META = re.compile(r"([.\[\]()*+?{}|^$\\])")
_SUDOERS_SPECIAL = re.compile(r"([\\,:=()!#\"])")


def _escape(text: str) -> str:
    """A word of a sudoers command specification, its special characters backslash-escaped."""
    return _SUDOERS_SPECIAL.sub(r"\\\1", text)


def _alias(entry: Privilege) -> str:
    return (
        "PGUPGRADE_" + ("ROOT_" if entry.runs_as == RunsAs.ROOT else "") + re.sub(r"[^A-Z0-9]", "_", entry.name.upper())
    )


def system_path(name: str, search: str = SECURE_PATH) -> str:
    """Where sudo finds a bare program name on this host (the first match in secure_path)."""
    return shutil.which(name, path=search) or f"/usr/bin/{name}"


def installation_dirs(bindir: str) -> tuple[str, str] | None:
    """(extension directory, library directory) of the installation in bindir, from its pg_config; None when
    bindir is a pattern or has no pg_config here."""
    pg_config = Path(bindir) / "pg_config"
    if any(c in bindir for c in "*?[") or not os.access(pg_config, os.X_OK):
        return None
    out = subprocess.run(
        [str(pg_config), "--sharedir", "--pkglibdir"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    return f"{out[0]}/extension", out[1]


def _regex_alternatives(paths: Iterable[str]) -> str:
    items = sorted(set(paths))
    escaped = [p if p in (DEBIAN_EXTENSION_DIR, DEBIAN_PKGLIBDIR) else _REGEX_META.sub(r"\\\1", p) for p in items]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def sudoers(
    login: str,
    os_user: str = "postgres",
    *,
    bindirs: Sequence[str] = (DEBIAN_BINDIR,),
    extension_dirs: Sequence[str] = (),
    pkglibdirs: Sequence[str] = (),
    units: Sequence[str] = (),
    install_commands: Sequence[str] = (),
    root: bool = True,
    search: str = SECURE_PATH,
) -> str:
    """The sudoers file allowing login exactly the inventory's programs: as os_user (unless login is os_user)
    and, with root, as root. Extension and library directories default to those of the bindirs' installations
    (pg_config) plus Debian's; systemctl is allowed only for the named units."""
    for name, value in (("login", login), ("os_user", os_user)):
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
            raise ValueError(f"{name} is not a user name: {value!r}")
    ext_dirs, lib_dirs = list(extension_dirs), list(pkglibdirs)
    for b in bindirs:
        dirs = installation_dirs(b)
        if dirs:
            ext_dirs.append(dirs[0])
            lib_dirs.append(dirs[1])
    if DEBIAN_BINDIR in bindirs:
        ext_dirs.append(DEBIAN_EXTENSION_DIR)
        lib_dirs.append(DEBIAN_PKGLIBDIR)
    lines = [
        f"# /etc/sudoers.d/pgupgrade: what pgupgrade's workers (login {login}) may run as {os_user} and as root.",
        "# Generated by `python -m pgupgrade.privileges`; check with `visudo -cf <file>`, install with mode 0440.",
        "# Each rule allows one program (pgupgrade never runs a shell under sudo); remove a rule to forbid it.",
        f'Defaults:{login} env_keep += "{" ".join(ENV_KEEP)}"',
    ]
    targets = []
    if login != os_user:
        targets.append((RunsAs.OS_USER, os_user))
    if root:
        targets.append((RunsAs.ROOT, "root"))
    for role, user in targets:
        lines += ["", f"# as {user}" + (" (the cluster's OS user)" if role == RunsAs.OS_USER else "")]
        for entry in (p for p in INVENTORY if p.runs_as == role):
            if entry.postgres_program:
                paths = [f"{b.rstrip('/')}/{entry.name}" for b in bindirs]
            else:
                paths = [system_path(entry.program, search)]
            args = entry.args
            if args is not None:
                if "{unit}" in args:
                    if not units:
                        continue  # no systemd units named: systemctl not allowed
                    args = args.replace("{unit}", _regex_alternatives(units))
                if "{extension_dir}" in args:
                    if not ext_dirs:
                        continue
                    args = args.replace("{extension_dir}", _regex_alternatives(ext_dirs))
                    args = args.replace("{pkglibdir}", _regex_alternatives(lib_dirs or ext_dirs))
            specs = ", ".join(_escape(p) + (f" {args.replace(',', chr(92) + ',')}" if args else "") for p in paths)
            lines.append(f"# {entry.why}")
            lines.append(f"Cmnd_Alias {_alias(entry)} = {specs}")
            cwd = "CWD=* " if entry.cwd else ""
            lines.append(f"{login} ALL = ({user}) {cwd}NOPASSWD: {_alias(entry)}")
        if role == RunsAs.ROOT:
            for i, command in enumerate(install_commands, 1):
                if not os.path.isabs(command):
                    raise ValueError(f"an install command must be an absolute path, got {command!r}")
                lines.append(f"# {ADMIN_COMMAND} ({command})")
                lines.append(f"Cmnd_Alias PGUPGRADE_ROOT_INSTALL_COMMAND_{i} = {_escape(command)}")
                lines.append(f"{login} ALL = (root) NOPASSWD: PGUPGRADE_ROOT_INSTALL_COMMAND_{i}")
    return "\n".join(lines) + "\n"


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgupgrade.privileges", description="Prints the sudoers file pgupgrade's workers need."
    )
    parser.add_argument("--login", required=True, help="the user the worker runs or logs in by SSH as")
    parser.add_argument("--os-user", default="postgres", help="the clusters' OS user (connection extra os_user)")
    parser.add_argument(
        "--bindir",
        action="append",
        help=f"a PostgreSQL bin directory (repeat; sudoers wildcards allowed; default {DEBIAN_BINDIR} and "
        "$PGUPGRADE_BINDIRS)",
    )
    parser.add_argument("--extension-dir", action="append", default=[], help="extension files' target (repeat)")
    parser.add_argument("--pkglibdir", action="append", default=[], help="extension libraries' target (repeat)")
    parser.add_argument("--unit", action="append", default=[], help="a systemd unit of service systemd:<unit>")
    parser.add_argument("--install-command", action="append", default=[], help="the admin's install command path")
    parser.add_argument("--no-root", action="store_true", help="no root rules (no apt, extension files, units)")
    parser.add_argument("--check", action="store_true", help="validate the output with visudo -cf")
    ns = parser.parse_args(args)
    bindirs = ns.bindir or [DEBIAN_BINDIR, *filter(None, os.environ.get("PGUPGRADE_BINDIRS", "").split(":"))]
    text = sudoers(
        ns.login,
        ns.os_user,
        bindirs=bindirs,
        extension_dirs=ns.extension_dir,
        pkglibdirs=ns.pkglibdir,
        units=ns.unit,
        install_commands=ns.install_command,
        root=not ns.no_root,
    )
    if ns.check:
        check(text)
    sys.stdout.write(text)
    return 0


def check(text: str) -> None:
    """visudo -cf on text; raises ValueError with visudo's message when it is not a valid sudoers file."""
    res = subprocess.run(["visudo", "-cf", "-"], input=text, capture_output=True, text=True, check=False, timeout=30)
    if res.returncode != 0:
        raise ValueError(f"visudo rejects the sudoers file: {res.stdout}{res.stderr}")


if __name__ == "__main__":
    raise SystemExit(main())
