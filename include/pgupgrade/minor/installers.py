"""Minor-upgrade mechanics: which binaries a cluster runs from, Debian packages (apt), the admin's install
command, and the other clusters that share a cluster's binaries.

A minor release changes only the binaries; the data directory stays. Three ways to change the binaries:

- ``bindir``: another installation of the same major sits beside the current one; the cluster is restarted
  from it (``pg_ctl`` service only: systemd units and ``pg_ctlcluster`` fix the bin directory themselves).
- ``apt``: ``apt-get install postgresql-N=<version> postgresql-client-N=<version>`` replaces
  ``/usr/lib/postgresql/N/bin`` in place, for every cluster of that major on the host.
- ``command``: an argv list from admin configuration (never from the trigger conf; checked by
  ``pgupgrade.install_command``), with ``{version}`` and ``{major}`` filled in; it too replaces the binaries in
  place.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host, Result
from pgupgrade.errors import CommandError, ConfigError

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l"}
DPKG_STATUS = "/var/lib/dpkg/status"
_VERSION_TEXT_RE = re.compile(r"^\d+\.\d+$")


def debian_bindir(major: int) -> str:
    return f"/usr/lib/postgresql/{major}/bin"


def debian_packages(major: int) -> list[str]:
    """The packages that carry the server and the client programs of one major (Debian/Ubuntu, PGDG)."""
    return [f"postgresql-{major}", f"postgresql-client-{major}"]


# -- what the cluster runs from -----------------------------------------------------------------------


def realpath(host: Host, path: str, user: str | None = None) -> str:
    return host.run(["readlink", "-f", "--", path], user=user, timeout=30).stdout.strip() or path


def postmaster_pid(host: Host, cluster: Cluster) -> int | None:
    res = host.run(
        ["head", "-n", "1", f"{cluster.datadir}/postmaster.pid"], user=cluster.os_user, check=False, timeout=30
    )
    first = res.stdout.strip()
    return int(first) if res.exit_code == 0 and first.isdigit() else None


def running_bindir(host: Host, cluster: Cluster) -> str | None:
    """The bin directory of the running postmaster (``/proc/<pid>/exe``), symlinks resolved; None when no
    postmaster runs. Binaries replaced by a package upgrade show as ``... (deleted)``; the suffix is dropped."""
    pid = postmaster_pid(host, cluster)
    if pid is None:
        return None
    res = host.run(["readlink", f"/proc/{pid}/exe"], user=cluster.os_user, check=False, timeout=30)
    exe = res.stdout.strip().removesuffix(" (deleted)")
    return os.path.dirname(exe) if res.exit_code == 0 and exe else None


def current_bindir(host: Host, cluster: Cluster) -> str:
    """Where the cluster's binaries are: the connection's pg_bindir when the postmaster runs from it (maybe
    through a symlink), else the directory the postmaster really runs from (a connection not yet updated
    after an earlier minor upgrade by bin directory)."""
    running = running_bindir(host, cluster)
    if running is None or realpath(host, cluster.bindir) == realpath(host, running):
        return str(cluster.bindir)
    return running


# -- apt ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AptPolicy:
    """``apt-cache policy <package>``: installed and candidate version, every known version and its sources."""

    package: str
    installed: str | None
    candidate: str | None
    versions: dict[str, list[str]] = field(default_factory=dict)

    def matching(self, upstream: str) -> list[str]:
        """Package versions whose upstream part is upstream (15.20 → 15.20-0+deb12u1, 15.20-1.pgdg120+1)."""
        return [v for v in self.versions if upstream_version(v) == upstream]

    def downloadable(self, version: str) -> bool:
        """Whether a repository still offers version (the dpkg status file alone cannot reinstall it)."""
        return any(src != DPKG_STATUS for src in self.versions.get(version, []))


def upstream_version(debian_version: str) -> str:
    """``1:15.20-0+deb12u1`` → ``15.20``: epoch and Debian revision removed."""
    v = debian_version.split(":", 1)[-1]
    return v.rsplit("-", 1)[0] if "-" in v else v


def parse_apt_policy(package: str, text: str) -> AptPolicy:
    installed = candidate = None
    versions: dict[str, list[str]] = {}
    current: str | None = None
    in_table = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            value = stripped.split(":", 1)[1].strip()
            installed = None if value == "(none)" else value
        elif stripped.startswith("Candidate:"):
            value = stripped.split(":", 1)[1].strip()
            candidate = None if value == "(none)" else value
        elif stripped.startswith("Version table:"):
            in_table = True
        elif in_table and stripped:
            words = stripped.split()
            if words[0] == "***":
                words = words[1:]
            if len(words) == 2 and _is_int(words[1]) and not _is_int(words[0]):
                current = words[0]
                versions.setdefault(current, [])
            elif _is_int(words[0]) and current is not None and len(words) >= 2:
                versions[current].append(" ".join(words[1:]))
    return AptPolicy(package, installed, candidate, versions)


def _is_int(word: str) -> bool:
    return word.lstrip("-").isdigit()


def apt_policy(host: Host, package: str) -> AptPolicy:
    res = host.run(["apt-cache", "policy", package], timeout=120, env=APT_ENV)
    return parse_apt_policy(package, res.stdout)


def apt_install_argv(pins: dict[str, str], *, allow_downgrades: bool, download_only: bool = False) -> list[str]:
    """apt-get install of exact versions: no prompts, configuration files kept, waiting for the dpkg lock."""
    argv = ["apt-get", "install", "--download-only"] if download_only else ["apt-get", "install"]
    argv += [
        "-y",
        "-q",
        "-o",
        "Dpkg::Options::=--force-confold",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "DPkg::Lock::Timeout=300",
    ]
    if allow_downgrades:
        argv.append("--allow-downgrades")
    return argv + [f"{pkg}={version}" for pkg, version in sorted(pins.items())]


def apt_install(
    host: Host, pins: dict[str, str], *, allow_downgrades: bool, download_only: bool = False, timeout: float = 3600
) -> Result:
    argv = apt_install_argv(pins, allow_downgrades=allow_downgrades, download_only=download_only)
    return host.run(argv, user="root", env=APT_ENV, timeout=timeout)


def installed_package_versions(host: Host, packages: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in packages:
        res = host.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Version}", pkg], check=False, timeout=60)
        status, _, version = res.stdout.partition("\t")
        out[pkg] = version.strip() if res.exit_code == 0 and status.startswith("ii") else None
    return out


# -- the admin's install command ----------------------------------------------------------------------


def render_command(argv: list[str], version: str) -> list[str]:
    """Fills in {version} (e.g. 15.20) and {major}; the version is checked to be digits and one dot."""
    if not _VERSION_TEXT_RE.match(version):
        raise ConfigError("target_version", f"not a minor version like 15.20: {version!r}")
    major = version.split(".", 1)[0]
    return [a.replace("{version}", version).replace("{major}", major) for a in argv]


def run_install_command(host: Host, argv: list[str], version: str, timeout: float = 3600) -> Result:
    return host.run(render_command(argv, version), user="root", timeout=timeout)


# -- other clusters on the same binaries ---------------------------------------------------------------


def debian_clusters(host: Host) -> list[dict[str, Any]]:
    """``pg_lsclusters -h`` (postgresql-common); empty where it is not installed."""
    try:
        res = host.run(["pg_lsclusters", "-h"], check=False, timeout=60)
    except CommandError:  # not installed
        return []
    if res.exit_code != 0:
        return []
    return parse_lsclusters(res.stdout)


def parse_lsclusters(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 6 or not words[0].isdigit():
            continue
        out.append(
            {
                "version": words[0],
                "name": words[1],
                "port": int(words[2]) if words[2].isdigit() else None,
                "status": words[3],
                "owner": words[4],
                "datadir": os.path.normpath(words[5]),
            }
        )
    return out


def postmasters_from(host: Host, bindir: str) -> list[dict[str, Any]]:
    """Running postmasters started from bindir: pid and the -D directory of each (from ``ps``)."""
    res = host.run(["ps", "-eo", "pid=,args="], timeout=30)
    return parse_postmasters(res.stdout, bindir)


def parse_postmasters(ps_output: str, bindir: str) -> list[dict[str, Any]]:
    found = []
    programs = {f"{bindir.rstrip('/')}/postgres", f"{bindir.rstrip('/')}/postmaster"}
    for line in ps_output.splitlines():
        words = line.split()
        if len(words) < 2 or words[1] not in programs:
            continue
        pgdata = None
        for i, w in enumerate(words):
            if w == "-D" and i + 1 < len(words):
                pgdata = os.path.normpath(words[i + 1])
            elif w.startswith("-D") and len(w) > 2:
                pgdata = os.path.normpath(w[2:])
        found.append({"pid": int(words[0]), "pgdata": pgdata})
    return found


def other_clusters(host: Host, cluster: Cluster, major: int, bindir: str) -> list[str]:
    """Clusters besides this one that run from (or, for Debian's clusters of that major, start from) the same
    binaries — by the bin directory's path or its resolved path: replacing the binaries in place affects them."""
    mine = {os.path.normpath(cluster.datadir), os.path.normpath(cluster.config_dir)}
    out: list[str] = []
    seen: set[str] = set()
    if os.path.normpath(bindir) == debian_bindir(major):
        for c in debian_clusters(host):
            if c["version"] == str(major) and c["datadir"] not in mine:
                seen.add(c["datadir"])
                out.append(f"{c['version']}/{c['name']} ({c['status']}, port {c['port']}, {c['datadir']})")
    found = postmasters_from(host, bindir)
    resolved = realpath(host, bindir)
    if resolved != bindir:  # pg_ctl runs postgres by its resolved path
        found += postmasters_from(host, resolved)
    for pm in found:
        if pm["pgdata"] in mine or pm["pgdata"] in seen:
            continue
        out.append(f"postmaster pid {pm['pid']} ({pm['pgdata'] or 'data directory unknown'}, running)")
    return out
