"""Where PostgreSQL installations are, and what each one is.

An installation is a bin directory with ``postgres`` and ``pg_config`` in it. Found in Debian's
``/usr/lib/postgresql/N/bin`` and in extra directories named by ``PGUPGRADE_BINDIRS`` (``os.pathsep``-separated)
or passed in. (The test and demo installations of the PostgreSQL wheels are copied out of the virtualenv by
``install.sh`` and named there: the ``postgres`` OS user must be able to run them.)
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pgupgrade.commands import Host, LocalHost
from pgupgrade.errors import ConfigError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        m = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?\s*", text)
        if not m:
            raise ValueError(f"not a PostgreSQL version: {text!r} (expected e.g. '15.20')")
        return cls(int(m.group(1)), int(m.group(2) or 0))

    @classmethod
    def from_num(cls, server_version_num: int) -> Version:
        return cls(server_version_num // 10000, server_version_num % 10000)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True)
class Installation:
    bindir: str
    version: Version
    sharedir: str
    pkglibdir: str

    @property
    def major(self) -> int:
        return self.version.major

    def bin(self, program: str) -> str:
        return str(Path(self.bindir) / program)

    @property
    def extension_dir(self) -> str:
        return str(Path(self.sharedir) / "extension")


def inspect(bindir: str, host: Host | None = None) -> Installation:
    """Asks the binaries themselves: ``postgres --version`` and ``pg_config``."""
    host = host or LocalHost()
    if not os.path.isabs(bindir):
        raise ConfigError("bindir", f"must be an absolute path, got {bindir!r}")
    out = host.run([str(Path(bindir) / "postgres"), "--version"], timeout=30).stdout
    m = _VERSION_RE.search(out)
    if not m:
        raise ConfigError("bindir", f"{bindir}/postgres --version printed no version: {out!r}")
    version = Version(int(m.group(1)), int(m.group(2) or 0))
    cfg = host.run([str(Path(bindir) / "pg_config"), "--sharedir", "--pkglibdir"], timeout=30).stdout.split()
    if len(cfg) != 2:
        raise ConfigError("bindir", f"{bindir}/pg_config gave no sharedir/pkglibdir")
    return Installation(bindir=bindir, version=version, sharedir=cfg[0], pkglibdir=cfg[1])


def candidate_bindirs(extra: list[str] | None = None) -> list[str]:
    dirs: list[str] = []
    env_dirs = os.environ.get("PGUPGRADE_BINDIRS", "")
    dirs += [d for d in env_dirs.split(os.pathsep) if d]
    dirs += list(extra or [])
    dirs += sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    seen: list[str] = []
    for d in dirs:
        if d not in seen and Path(d, "postgres").exists() and Path(d, "pg_config").exists():
            seen.append(d)
    return seen


def discover(extra: list[str] | None = None, host: Host | None = None) -> list[Installation]:
    """Every installation found, newest version first."""
    found = [inspect(d, host) for d in candidate_bindirs(extra)]
    return sorted(found, key=lambda i: i.version, reverse=True)


def for_major(major: int, extra: list[str] | None = None, host: Host | None = None) -> Installation:
    """The newest installation of one major version."""
    for inst in discover(extra, host):
        if inst.major == major:
            return inst
    raise ConfigError("bindir", f"no PostgreSQL {major} installation found (add it to PGUPGRADE_BINDIRS)")
