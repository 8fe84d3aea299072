"""Where the extension's files come from (``extension_source``) and how one version's files get into the
cluster's installation: the update installs the target's, the rollback the previous version's, from the same
admin configuration (recorded in the plan)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgupgrade import versions
from pgupgrade.cluster import Cluster
from pgupgrade.commands import Host
from pgupgrade.errors import CheckFailed, ConfigError
from pgupgrade.extension.fields import INSTALL_COMMAND_VARIABLE, SOURCE_DIR_VARIABLE, SOURCES, SourceKind
from pgupgrade.install_command import parse_install_command
from pgupgrade.params import check_abs_path

AdminGet = Callable[[str], Any]  # reads an admin-set Airflow Variable (JSON); None when unset


@dataclass(frozen=True)
class Source:
    """How the extension's files get into the installation: already there, copied from an admin-configured
    directory (``{version}`` in its path), or installed by an admin-configured argv (``{version}`` in it)."""

    kind: SourceKind
    dir_template: str | None = None
    command: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "dir_template": self.dir_template,
            "command": list(self.command) if self.command else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        cmd = data.get("command")
        return cls(SourceKind(data["kind"]), data.get("dir_template"), tuple(cmd) if cmd else None)

    def directory(self, version: str) -> str:
        assert self.dir_template is not None
        path: str = check_abs_path(SOURCE_DIR_VARIABLE, self.dir_template.replace("{version}", version))
        return path

    def argv(self, version: str, extname: str) -> list[str]:
        assert self.command is not None
        if not re.fullmatch(r"\d{1,4}(\.\d{1,4}){0,3}", version):
            raise ConfigError("target_version", f"not an extension version like 0.2.0: {version!r}")
        return [a.replace("{version}", version).replace("{extname}", extname) for a in self.command]


def resolve_source(kind: str, admin: AdminGet) -> Source:
    """Reads the admin configuration the source needs; refuses what a rollback could not undo."""
    if kind == SourceKind.INSTALLED:
        return Source(SourceKind.INSTALLED)
    if kind == SourceKind.COPY:
        value = admin(SOURCE_DIR_VARIABLE)
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"Variable {SOURCE_DIR_VARIABLE}",
                "must be set to a JSON string: an absolute "
                'directory path with {version} in it, e.g. "/srv/pg_tviews/{version}"',
            )
        if "{version}" not in value:
            raise ConfigError(
                f"Variable {SOURCE_DIR_VARIABLE}",
                "must contain {version}: the rollback copies the previous version's files from the same place",
            )
        check_abs_path(SOURCE_DIR_VARIABLE, value.replace("{version}", "0"))
        return Source(SourceKind.COPY, dir_template=value)
    if kind == SourceKind.COMMAND:
        value = admin(INSTALL_COMMAND_VARIABLE)
        if value is None:
            raise ConfigError(f"Variable {INSTALL_COMMAND_VARIABLE}", "must be set (a JSON argv list with {version})")
        argv = parse_install_command(value, f"Variable {INSTALL_COMMAND_VARIABLE}")
        return Source(SourceKind.COMMAND, command=tuple(argv))
    raise ConfigError("extension_source", f"must be one of {', '.join(SOURCES)}, got {kind!r}")


def source_files(host: Host, directory: str, extname: str) -> list[str]:
    """The names of the extension's files in a source directory (none when it does not exist)."""
    res = host.run(
        ["find", directory, "-maxdepth", "1", "-type", "f", "-name", f"{extname}*", "-printf", "%f\\n"],
        check=False,
        timeout=60,
    )
    return sorted(res.stdout.split()) if res.exit_code == 0 else []


def install_files(cluster: Cluster, host: Host, source: Source, version: str, extname: str) -> dict[str, Any]:
    """Puts one version's files into the cluster's installation (copy or command; nothing for installed)."""
    if source.kind == SourceKind.INSTALLED:
        return {"source": SourceKind.INSTALLED.value, "action": "none: the files are already in place"}
    inst = versions.inspect(cluster.bindir, host)
    if source.kind == SourceKind.COMMAND:
        argv = source.argv(version, extname)
        res = host.run(argv, user="root", timeout=3600)
        return {"source": SourceKind.COMMAND.value, "argv": argv, "seconds": round(res.duration_s, 3)}
    directory = source.directory(version)
    names = source_files(host, directory, extname)
    scripts = [n for n in names if n == f"{extname}.control" or (n.startswith(f"{extname}--") and n.endswith(".sql"))]
    libs = [n for n in names if n.endswith(".so")]
    if f"{extname}.control" not in scripts:
        raise CheckFailed(f"{directory} has no {extname}.control")
    host.run(
        ["install", "-m", "0644", "-t", inst.extension_dir, "--", *[f"{directory}/{n}" for n in scripts]], user="root"
    )
    if libs:
        host.run(
            ["install", "-m", "0755", "-t", inst.pkglibdir, "--", *[f"{directory}/{n}" for n in libs]], user="root"
        )
    return {"source": SourceKind.COPY.value, "from": directory, "files": scripts + libs}
