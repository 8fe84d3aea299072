"""Generates the upgrade guides in docs/operations/upgrade/ so that they cannot drift from what runs (see the
package's docstring): builds every page, writes the changed ones, or with --check names the stale ones."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from .api import render_api
from .breaking import render_breaking
from .dags import Dags, load_dags
from .facts import Facts, collect_facts
from .guide import render_dag_page
from .pages import OUT, PAGE_BY_PATH, PAGES, Page, Unavailable
from .sql_compat import render_sql
from .templates import render_template

COMMAND = "python docs/generate"

RENDERERS: dict[str, Callable[[Page, Dags, Facts], str]] = {
    "dag": render_dag_page,
    "template": render_template,
    "api": render_api,
    "breaking": render_breaking,
    "sql": render_sql,
}


def broken_links(pages: dict[str, str]) -> list[str]:
    bad = []
    for path, text in pages.items():
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if resolved not in PAGE_BY_PATH:
                bad.append(f"{path}: link to {target} ({resolved}) is not a page")
    return bad


def build() -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    # The server facts are collected in a forked process while this one parses the DAGs: forked before Airflow is
    # imported, and no shared interpreter (threads made both slower: import lock and GIL).
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        future = pool.submit(collect_facts)
        dags = load_dags()
        timings["dags"] = time.monotonic() - started
        try:
            facts = future.result(timeout=300)
        except Exception as exc:
            facts = Facts(error=f"collecting the facts failed: {type(exc).__name__}: {exc}")
    timings["postgres"] = facts.seconds
    pages: dict[str, str] = {}
    missing: dict[str, str] = {}
    for page in PAGES:
        try:
            pages[page.path] = RENDERERS[page.kind](page, dags, facts).rstrip() + "\n"
        except Unavailable as exc:
            missing[page.path] = str(exc)
    timings["total"] = time.monotonic() - started
    bad = broken_links(pages)
    if bad:
        raise SystemExit("broken links in generated pages:\n  " + "\n  ".join(bad))
    return pages, missing, timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated page is stale")
    args = ap.parse_args(argv)
    pages, missing, timings = build()
    stale, written = [], []
    for rel, text in pages.items():
        path = OUT / rel
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(rel)
    for rel, why in missing.items():
        print(f"not generated: {rel}: {why}", file=sys.stderr)
    summary = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    if args.check:
        for rel in stale:
            print(f"stale: docs/operations/upgrade/{rel}")
        if stale:
            print(f"run: {COMMAND}", file=sys.stderr)
        print(f"checked {len(pages)} pages, {len(stale)} stale, {len(missing)} not generated ({summary})")
        return 1 if stale else 0
    for rel in written:
        print(f"wrote: docs/operations/upgrade/{rel}")
    print(f"{len(pages)} pages, {len(written)} written, {len(missing)} not generated ({summary})")
    return 0
