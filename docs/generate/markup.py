"""Markdown helpers shared by every page: table cells, code spans, headings, links, durations, runbook sections."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from collections.abc import Iterator
from typing import Any


def cell(value: Any) -> str:
    """A table cell: one line, pipes escaped."""
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.split()).replace("|", "\\|")


def code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"``{text}``" if "`" in text else f"`{text}`"


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def shift_headings(md: str, by: int) -> str:
    """Deepens every heading outside code fences by ``by`` levels."""
    out, fenced = [], False
    for line in md.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,5} ", line):
            line = "#" * by + line
        out.append(line)
    return "\n".join(out)


def rel_link(from_page: str, to_page: str) -> str:
    return os.path.relpath(to_page, os.path.dirname(from_page) or ".")


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


def fmt_num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


@dataclasses.dataclass
class Doc:
    """A runbook (doc_md) split into its title, the text before the first section, and its ``##`` sections."""

    title: str
    intro: str
    sections: dict[str, str]

    @classmethod
    def parse(cls, md: str | None) -> Doc:
        title, current, fenced = "", None, False
        intro: list[str] = []
        sections: dict[str, list[str]] = {}
        for line in textwrap.dedent(md or "").strip("\n").splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if not fenced and line.startswith("# ") and not title and current is None:
                title = line[2:].strip()
            elif not fenced and line.startswith("## "):
                current = line[3:].strip()
                sections[current] = []
            else:
                (sections[current] if current else intro).append(line)
        return cls(title, "\n".join(intro).strip(), {k: "\n".join(v).strip() for k, v in sections.items()})

    def pop(self, *names: str) -> str | None:
        for key in list(self.sections):
            if key.lower() in names:
                return self.sections.pop(key)
        return None


def iter_headings(md: str) -> Iterator[str]:
    """Headings outside code fences (used by tests/test_docs.py)."""
    fenced = False
    for line in md.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)):
            yield m.group(1)
