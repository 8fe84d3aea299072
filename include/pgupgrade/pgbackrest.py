"""What the library knows of pgBackRest: which release supports which PostgreSQL major (the one table), how a
cluster's ``archive_command`` names it (program, stanza, options), and the argv of the commands a major upgrade
runs (``version``, ``stanza-upgrade``, ``check``, a full ``backup``). Pure: ``pgupgrade.archiving`` runs them."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

# The first pgBackRest release supporting each PostgreSQL major (release notes, pgbackrest.org/release.html):
# 2.46 "PostgreSQL 16 Support" (2023-05); 2.53.1 "PostgreSQL 17 Support" (2024-08; 2.52 knew 17 beta's catalog
# only and refuses 17.0); 2.55.0 "PostgreSQL 18 Support" (2025-04). Debian 12 ships 2.45: up to 15.
MIN_VERSION: dict[int, tuple[int, int, int]] = {16: (2, 46, 0), 17: (2, 53, 1), 18: (2, 55, 0)}
OLDEST_KNOWN_MAJOR = 15  # every pgBackRest 2.x this library may meet on a Debian 12 host supports 15 and older
# options of archive-push's command line that every command run here takes as well (the rest are archive-push's)
_CARRIED = ("--config", "--config-path", "--config-include-path", "--stanza", "--pg", "--repo")
_VERSION_RE = re.compile(r"pgBackRest (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Invocation:
    """How the cluster's archive_command runs pgBackRest: the program as named, the options other commands need
    too (configuration, stanza, pg/repo options), and the stanza."""

    program: str
    options: tuple[str, ...]
    stanza: str | None

    def argv(self, command: str, *extra: str, pg1_path: str | None = None) -> list[str]:
        """``program [options] [--pg1-path=...] [extra] command``: a pg1-path given replaces the archive
        command's own (the new cluster's data directory)."""
        opts = [o for o in self.options if not (pg1_path and o.startswith("--pg1-path"))]
        if pg1_path:
            opts.append(f"--pg1-path={pg1_path}")
        return [self.program, *opts, *extra, command]


def from_archive_command(command: str) -> Invocation | None:
    """The pgBackRest invocation in an archive_command (``pgbackrest [opts] archive-push %p``), None when the
    command does not push WAL with pgBackRest."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if os.path.basename(word) != "pgbackrest" or "archive-push" not in words[i + 1 :]:
            continue
        end = words.index("archive-push", i + 1)
        options: list[str] = []
        stanza = None
        j = i + 1
        while j < end:
            opt = words[j]
            if opt.startswith("--") and "=" not in opt and j + 1 < end and not words[j + 1].startswith("--"):
                opt = f"{opt}={words[j + 1]}"  # --stanza demo
                j += 1
            j += 1
            if opt.startswith("--stanza="):
                stanza = opt.split("=", 1)[1]
            if opt.startswith(_CARRIED):
                options.append(opt)
        return Invocation(program=word, options=tuple(options), stanza=stanza or None)
    return None


def parse_version(output: str) -> tuple[int, int, int]:
    """``pgbackrest version`` → (major, minor, patch): "pgBackRest 2.45" → (2, 45, 0)."""
    m = _VERSION_RE.search(output)
    if not m:
        raise ValueError(f"not pgBackRest's version output: {output.strip()[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def show(version: tuple[int, int, int]) -> str:
    return ".".join(str(p) for p in (version if version[2] else version[:2]))


def unsupported(version: tuple[int, int, int], major: int) -> str | None:
    """Why this pgBackRest cannot archive and back up PostgreSQL ``major`` (None: it can)."""
    if major <= OLDEST_KNOWN_MAJOR:
        return None
    needed = MIN_VERSION.get(major)
    if needed is None:
        return f"no pgBackRest release is known to this library to support PostgreSQL {major}"
    if version < needed:
        return (
            f"pgBackRest {show(version)} does not support PostgreSQL {major}: it needs pgBackRest {show(needed)} "
            "or newer"
        )
    return None
