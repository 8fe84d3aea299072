"""Carrying a cluster's configuration over to a new major, as written: postgresql.conf with every file it includes
(``include``, ``include_if_exists``, ``include_dir``, followed as PostgreSQL follows them), postgresql.auto.conf,
pg_hba.conf and pg_ident.conf (with their own includes from PostgreSQL 16 on).

Every file is filtered the same way: settings that name files of the old cluster are left out (the new cluster uses
its own), ``cluster_name`` follows the new major, settings the new major does not know are dropped (and reported),
the client gate's temporary pg_hba.conf lines are never carried. Included files under the old configuration
directory keep their relative place under the new data directory (``conf.d/tuning.conf``), files elsewhere are
copied into ``pgupgrade-included/``; directives stay relative, so the new cluster's configuration can be moved as
one directory (``CarriedConfig.files``, ``CarriedConfig.dirs``). The same code runs without writing for the plan
(``write=False``)."""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.errors import PlanError
from pgupgrade.gates import without_gate
from pgupgrade.scratch import exists
from pgupgrade.versions import Installation

log = logging.getLogger(__name__)

# Settings that name files or identify the cluster: rewritten, never copied verbatim between majors.
PATH_SETTINGS = ("data_directory", "hba_file", "ident_file", "external_pid_file", "config_file")
INCLUDE_DIRECTIVES = ("include", "include_if_exists", "include_dir")
INCLUDED_DIR = "pgupgrade-included"  # under the new data directory: included files from outside the config dir
MAX_DEPTH = 10  # PostgreSQL's CONF_FILE_MAX_DEPTH
CARRIED_HEADER = "# carried over from "

_NAME = r"[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*(?:\.[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?"
_LINE_RE = re.compile(
    rf"""^\s*(?P<name>{_NAME})\s*=?\s*
    (?P<value>'(?:\\.|''|[^'\\\n])*'|[^\s#']+)
    \s*(?:\#.*)?$""",
    re.VERBOSE,
)
_BLANK_RE = re.compile(r"^\s*(?:#.*)?$")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Line:
    """One setting (or include directive) of a configuration file: its line index, lower-case name, raw value."""

    index: int
    name: str
    value: str


def parse_lines(text: str) -> tuple[list[Line], list[int]]:
    """The settings of a postgresql.conf-style file in order, and the indexes of lines that are neither a setting,
    a comment nor blank (PostgreSQL refuses such a file)."""
    found, bad = [], []
    for i, raw in enumerate(text.splitlines()):
        m = _LINE_RE.match(raw)
        if m:
            found.append(Line(i, m.group("name").lower(), m.group("value")))
        elif not _BLANK_RE.match(raw):
            bad.append(i)
    return found, bad


def parse_conf(text: str) -> list[tuple[str, str]]:
    """(name, raw value) pairs of a postgresql.conf, in order; comments and blank lines dropped."""
    return [(ln.name, ln.value) for ln in parse_lines(text)[0]]


def unquote(value: str) -> str:
    """A raw value as PostgreSQL reads it: a quoted string de-escaped (``''``, ``\\'``, ``\\n``, octal), else as is."""
    if not (len(value) >= 2 and value[0] == value[-1] == "'"):
        return value
    s, out, i = value[1:-1], [], 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            octal = re.match(r"[0-7]{1,3}", s[i + 1 :])
            if octal:
                out.append(chr(int(octal.group(0), 8)))
                i += 1 + len(octal.group(0))
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        elif ch == "'" and s[i + 1 : i + 2] == "'":
            out.append("'")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def known_settings(inst: Installation, host: Host, user: str) -> set[str]:
    out = host.run([inst.bin("postgres"), "--describe-config"], user=user, timeout=60).stdout
    return {line.split("\t", 1)[0].lower() for line in out.splitlines() if line.strip()}


@dataclass(frozen=True)
class CarriedConfig:
    """What the carry-over wrote (or, for the plan, would write). ``files`` and ``dirs``: the configuration files and
    include directories under the new data directory, relative to it (postgresql.conf, pg_hba.conf, pg_ident.conf,
    included files and directories; not postgresql.auto.conf, which stays in the data directory) — what moves
    together when the configuration leaves the data directory."""

    settings: list[tuple[str, str]]
    auto_settings: list[tuple[str, str]]
    dropped: list[str]
    rewritten: list[str]
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "auto_settings": self.auto_settings,
            "dropped": self.dropped,
            "rewritten": self.rewritten,
            "files": self.files,
            "dirs": self.dirs,
            "skipped": self.skipped,
        }

    def for_plan(self) -> dict[str, list[str]]:
        """The plan's ``config`` field."""
        return {
            "dropped": self.dropped,
            "rewritten": self.rewritten,
            "skipped": self.skipped,
            "files": self.files,
            "dirs": self.dirs,
        }


@dataclass
class _Walk:
    """One carry-over: reads the old files, follows includes, renders the new files (new-datadir-relative path →
    text), records what it dropped and rewrote. Writes nothing."""

    host: Host
    user: str
    config_dir: str  # the old cluster's configuration directory
    new_major: int
    old_major: int
    known: set[str]
    texts: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    placed: dict[str, str] = field(default_factory=dict)  # old absolute path → new relative path
    dropped: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    path_settings: dict[str, str] = field(default_factory=dict)  # last value of each path setting, unquoted
    stack: list[str] = field(default_factory=list)

    def label(self, path: str) -> str:
        rel = _under(path, self.config_dir)
        return rel if rel is not None else path

    def read(self, path: str) -> str | None:
        res = self.host.run(["cat", "--", path], user=self.user, check=False, timeout=60)
        if res.exit_code == 0:
            return res.stdout
        if not exists(self.host, path, self.user):
            return None
        raise PlanError(f"cannot read the configuration file {path}: {res.stderr.strip()}")

    def list_dir(self, path: str) -> list[str] | None:
        """The files PostgreSQL's include_dir takes: regular files (symbolic links followed) ending in ``.conf``, not
        starting with ``.``, in byte order of their names; None for a missing directory."""
        res = self.host.run(
            ["find", "-L", path, "-mindepth", "1", "-maxdepth", "1", "-type", "f", "-name", "*.conf", "-print0"],
            user=self.user,
            check=False,
            timeout=60,
        )
        if res.exit_code != 0:
            if not exists(self.host, path, self.user):
                return None
            raise PlanError(f"cannot list the configuration directory {path}: {res.stderr.strip()}")
        names = {posixpath.basename(p) for p in res.stdout.split("\0") if p}
        return sorted((n for n in names if not n.startswith(".")), key=lambda n: n.encode())

    def place(self, old_path: str, *, parent: str | None = None) -> str:
        """Where an old file (or directory) goes, relative to the new data directory: its relative place when it
        is under the old configuration directory, else ``pgupgrade-included/<name>`` (``parent``: the new place of
        the include_dir that holds it)."""
        if parent is not None:
            return f"{parent}/{posixpath.basename(old_path)}"
        if old_path in self.placed:
            return self.placed[old_path]
        rel = _under(old_path, self.config_dir)
        if rel is None:
            stem, ext = posixpath.splitext(posixpath.basename(old_path))
            rel, n = f"{INCLUDED_DIR}/{stem}{ext}", 1
            while rel in self.placed.values():
                n += 1
                rel = f"{INCLUDED_DIR}/{stem}-{n}{ext}"
        self.placed[old_path] = rel
        return rel

    def enter(self, path: str) -> None:
        if path in self.stack:
            raise PlanError("configuration include cycle: " + " -> ".join([*self.stack, path]))
        if len(self.stack) >= MAX_DEPTH:
            raise PlanError(f"configuration includes nested deeper than {MAX_DEPTH}: " + " -> ".join(self.stack))
        self.stack.append(path)

    def conf_file(self, old_path: str, new_rel: str, text: str) -> tuple[list[tuple[str, str]], str]:
        """A postgresql.conf-style file filtered for the new major, its includes followed (carried into
        ``texts``): the (name, value) entries kept in order, and the file's new text (comments kept, what is not
        carried commented out)."""
        self.enter(old_path)
        where = self.label(old_path)
        lines = text.splitlines()
        parsed, bad = parse_lines(text)
        for i in bad:
            self.dropped.append(f"{where}: line {i + 1} not understood: {lines[i].strip()}")
            lines[i] = f"# pgupgrade: not understood, not carried: {lines[i]}"
        kept: list[tuple[str, str]] = []
        for ln in parsed:
            value: str | None = ln.value
            if ln.name in INCLUDE_DIRECTIVES:
                value = self.include(ln.name, ln.value, old_path, new_rel, where)
            elif ln.name in PATH_SETTINGS:
                self.path_settings[ln.name] = unquote(ln.value)
                self.rewritten.append(f"{where}: {ln.name} = {ln.value} (the new cluster uses its own files)")
                value = None
            elif ln.name not in self.known and "." not in ln.name:
                self.dropped.append(f"{where}: {ln.name} = {ln.value} (unknown to PostgreSQL {self.new_major})")
                value = None
            elif ln.name == "cluster_name":
                value = ln.value.replace(f"{self.old_major}/", f"{self.new_major}/")
                if value != ln.value:
                    self.rewritten.append(f"{where}: cluster_name {ln.value} -> {value}")
            if value is None:
                lines[ln.index] = f"# pgupgrade: not carried: {lines[ln.index]}"
                continue
            if value != ln.value:
                lines[ln.index] = f"{ln.name} = {value}"
            kept.append((ln.name, value))
        self.stack.pop()
        return kept, "\n".join(lines) + "\n"

    def include(self, directive: str, raw: str, old_path: str, new_rel: str, where: str) -> str:
        """Follows one include directive of the file at ``old_path`` (carried to ``new_rel``); the directive's new
        value: as written when the layout keeps it true, else relative to the new place of the containing file."""
        written = unquote(raw)
        if not written:
            raise PlanError(f"{where}: {directive} with an empty file name")
        target = resolve(written, old_path)
        if directive == "include_dir":
            new_target = self.carry_dir(target, where, self.carry_included)
        else:
            text = self.read(target)
            if text is None:
                if directive == "include":
                    raise PlanError(f"{where}: included configuration file {target} does not exist")
                self.skipped.append(f"{where}: include_if_exists {target} is absent: skipped (directive kept)")
                return raw
            new_target = self.place(target)
            self.carry_included(target, new_target, text)
        if _still_true(written, new_rel, new_target):
            return raw
        new_value = posixpath.relpath(new_target, posixpath.dirname(new_rel) or ".")
        self.rewritten.append(f"{where}: {directive} = {raw} -> {quote(new_value)} (carried as {new_target})")
        return quote(new_value)

    def carry_dir(self, target: str, where: str, carry: Callable[[str, str], None]) -> str:
        """An include_dir (postgresql.conf or pg_hba/pg_ident): each of its files carried by ``carry`` into the
        directory's new place, which is returned."""
        names = self.list_dir(target)
        if names is None:
            raise PlanError(f"{where}: include_dir {target} does not exist (PostgreSQL refuses to start)")
        new_target = self.place(target)
        if new_target not in self.dirs:
            self.dirs.append(new_target)
        for name in names:
            path = f"{target}/{name}"
            carry(path, self.place(path, parent=new_target))
        return new_target

    def carry_included(self, old_path: str, new_rel: str, text: str | None = None) -> None:
        if new_rel in self.texts:  # included twice: carried once (a cycle never gets here: its file is unfinished)
            return
        if text is None:
            text = self.read(old_path)
            if text is None:  # removed between the listing and the read
                raise PlanError(f"included configuration file {old_path} disappeared while it was read")
        self.texts[new_rel] = (
            f"# carried over from {old_path} by pgupgrade\n" + self.conf_file(old_path, new_rel, text)[1]
        )

    def auth_file(self, old_path: str, new_rel: str) -> None:
        """pg_hba.conf or pg_ident.conf: the gate's lines left out; from PostgreSQL 16 on, its include directives
        followed (files carried like postgresql.conf's)."""
        text = self.read(old_path)
        if text is None:
            raise PlanError(f"the configuration file {old_path} does not exist")
        self.enter(old_path)
        where = self.label(old_path)
        kept = without_gate(text)
        gone = len(text.splitlines()) - len(kept.splitlines())
        if gone:
            self.rewritten.append(f"{where}: {gone} client gate line(s) left out")
        out = []
        for raw in kept.splitlines():
            words = raw.split("#", 1)[0].split()
            if self.old_major >= 16 and len(words) == 2 and words[0] in INCLUDE_DIRECTIVES:
                raw = self.auth_include(words[0], words[1], old_path, new_rel, where, raw)
            out.append(raw)
        self.stack.pop()
        self.texts[new_rel] = "\n".join(out) + "\n"

    def auth_include(self, directive: str, token: str, old_path: str, new_rel: str, where: str, raw: str) -> str:
        written = token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token
        target = resolve(written, old_path)
        if directive == "include_dir":
            new_target = self.carry_dir(target, where, self.auth_file)
        else:
            if not exists(self.host, target, self.user):
                if directive == "include":
                    raise PlanError(f"{where}: included file {target} does not exist")
                self.skipped.append(f"{where}: include_if_exists {target} is absent: skipped (line kept)")
                return raw
            new_target = self.place(target)
            self.auth_file(target, new_target)
        if _still_true(written, new_rel, new_target):
            return raw
        new_value = posixpath.relpath(new_target, posixpath.dirname(new_rel) or ".")
        self.rewritten.append(f"{where}: {directive} {token} -> {new_value} (carried as {new_target})")
        return f'{directive} "{new_value}"'


def resolve(written: str, containing_file: str) -> str:
    """An include's path as PostgreSQL resolves it: relative paths against the containing file's directory."""
    path = written if posixpath.isabs(written) else posixpath.join(posixpath.dirname(containing_file), written)
    return posixpath.normpath(path)


def _still_true(written: str, new_rel: str, new_target: str) -> bool:
    """A relative directive, as written, names the carried target from the carried file's new place."""
    return not posixpath.isabs(written) and resolve(written, new_rel) == new_target


def _under(path: str, directory: str) -> str | None:
    """``path`` relative to ``directory`` when it lies beneath it, else None."""
    rel = posixpath.relpath(posixpath.normpath(path), posixpath.normpath(directory))
    return None if rel == "." or rel == ".." or rel.startswith("../") else rel


def _auth_source(old: Cluster, walk: _Walk, setting: str, default: str) -> str:
    """Where the old cluster reads pg_hba.conf / pg_ident.conf: the setting (relative to the data directory, as
    the server resolves it), else the configuration directory."""
    value = walk.path_settings.get(setting)
    if not value:
        return f"{old.config_dir}/{default}"
    return posixpath.normpath(posixpath.join(old.datadir, value))


def carry_config(
    old: Cluster, old_major: int, new: Installation, new_datadir: str, host: Host, *, write: bool = True
) -> CarriedConfig:
    """Writes the old configuration into the new data directory, correctly for the new major: the settings of
    postgresql.conf appended to the new one in their order, include directives in place and the included files
    carried (filtered the same way); path settings left to the new cluster's own files, settings the new major
    does not know dropped (logged, and listed for the plan), ``postgresql.auto.conf`` merged, pg_hba.conf (without
    the client gate's lines) and pg_ident.conf copied, port and socket directories kept so applications reconnect
    unchanged. ``write=False``: the same, without writing anything (the plan's view); a missing ``include`` file
    or directory is a PlanError either way, before anything is written."""
    user = old.os_user
    walk = _Walk(host, user, old.config_dir, new.major, old_major, known_settings(new, host, user))
    conf_path = f"{old.config_dir}/postgresql.conf"
    conf_text = walk.read(conf_path)
    if conf_text is None:
        raise PlanError(f"the configuration file {conf_path} does not exist")
    settings, _ = walk.conf_file(conf_path, "postgresql.conf", conf_text)
    auto_path = f"{old.datadir}/postgresql.auto.conf"
    auto_settings, _ = walk.conf_file(auto_path, "postgresql.auto.conf", walk.read(auto_path) or "")
    walk.auth_file(_auth_source(old, walk, "hba_file", "pg_hba.conf"), "pg_hba.conf")
    walk.auth_file(_auth_source(old, walk, "ident_file", "pg_ident.conf"), "pg_ident.conf")
    files = sorted({"postgresql.conf", *walk.texts})
    carried = CarriedConfig(settings, auto_settings, walk.dropped, walk.rewritten, files, walk.dirs, walk.skipped)
    if write:
        for line in walk.dropped:
            log.warning("configuration not carried over: %s", line)
        _write(host, user, new_datadir, old.config_dir, walk, carried)
    return carried


def _write(host: Host, user: str, new_datadir: str, old_dir: str, walk: _Walk, carried: CarriedConfig) -> None:
    for rel in walk.dirs:
        host.run(["mkdir", "-p", "-m", "0700", "--", f"{new_datadir}/{rel}"], user=user)
    for rel, text in sorted(walk.texts.items()):
        parent = posixpath.dirname(rel)
        if parent:
            host.run(["mkdir", "-p", "-m", "0700", "--", f"{new_datadir}/{parent}"], user=user)
        host.run(["tee", f"{new_datadir}/{rel}"], user=user, stdin=text)
    new_conf = f"{new_datadir}/postgresql.conf"
    # idempotent: a repeated carry-over replaces its own block
    base = host.run(["cat", new_conf], user=user).stdout.split(f"\n\n{CARRIED_HEADER}", 1)[0]
    block = "\n".join(f"{k} = {v}" for k, v in carried.settings)
    host.run(
        ["tee", new_conf],
        user=user,
        stdin=f"{base.rstrip()}\n\n{CARRIED_HEADER}{old_dir}/postgresql.conf by pgupgrade\n{block}\n",
    )
    if carried.auto_settings:
        auto_block = "\n".join(f"{k} = {v}" for k, v in carried.auto_settings)
        host.run(
            ["tee", f"{new_datadir}/postgresql.auto.conf"],
            user=user,
            stdin=f"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
            f"{auto_block}\n",
        )
