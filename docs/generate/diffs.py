"""The difference between two snapshots of the extension (``facts.ext_snapshot``): functions removed, added and
changed, columns of its tables, members, configuration tables, settings read; and the bullets the pages list."""

from __future__ import annotations

from typing import Any


def in_names(f: dict[str, Any]) -> list[str]:
    modes = f["argmodes"] or ["i"] * f["nargs"]
    names = f["argnames"] or [""] * len(modes)
    return [n for n, m in zip(names, modes, strict=False) if m in ("i", "b", "v")]


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    fa, fb = a["functions"], b["functions"]
    out: dict[str, Any] = {
        "removed": [fa[k] for k in sorted(set(fa) - set(fb))],
        "added": [fb[k] for k in sorted(set(fb) - set(fa))],
        "changed": [],
        "columns": {},
        "members_removed": sorted(set(a["members"]) - set(b["members"])),
        "members_added": sorted(set(b["members"]) - set(a["members"])),
        "config_removed": sorted(set(a["config"]) - set(b["config"])),
        "config_added": sorted(set(b["config"]) - set(a["config"])),
        "gucs_removed": sorted(set(a["gucs"]) - set(b["gucs"])),
        "gucs_added": sorted(set(b["gucs"]) - set(a["gucs"])),
    }
    for key in sorted(set(fa) & set(fb)):
        x, y = fa[key], fb[key]
        notes, interface = function_notes(x, y)
        if notes:
            out["changed"].append({"name": x["name"], "old": x, "new": y, "notes": notes, "interface": interface})
    for table_name in sorted(set(a["columns"]) | set(b["columns"])):
        out["columns"][table_name] = column_diff(a["columns"].get(table_name, []), b["columns"].get(table_name, []))
    return out


def function_notes(x: dict[str, Any], y: dict[str, Any]) -> tuple[list[tuple[bool, str]], bool]:
    """What changed between two versions of one function: (breaking, text) notes, and whether its interface
    (parameter names, defaults, result, kind) changed."""
    notes: list[tuple[bool, str]] = []
    interface = False
    na, nb = in_names(x), in_names(y)
    if na != nb:
        interface = True
        renamed = [f"`{p}` → `{q}`" for p, q in zip(na, nb, strict=False) if p != q]
        notes.append(
            (True, f"parameter renamed ({', '.join(renamed)}): calls in named notation with the old name fail")
        )
    if y["ndefaults"] > x["ndefaults"]:
        interface = True
        gained = nb[len(nb) - y["ndefaults"] : len(nb) - x["ndefaults"]]
        names = ", ".join(f"`{n}`" for n in gained if n) or f"{y['ndefaults'] - x['ndefaults']} parameter(s)"
        notes.append((False, f"{names} got a default: calls may leave it out (such calls fail on the older version)"))
    elif y["ndefaults"] < x["ndefaults"]:
        interface = True
        notes.append((True, "a parameter lost its default: calls that left it out fail"))
    if x["result"] != y["result"]:
        interface = True
        notes.append((True, f"result type `{x['result']}` → `{y['result']}`"))
    if x["kind"] != y["kind"]:
        interface = True
        notes.append((True, f"kind `{x['kind']}` → `{y['kind']}`"))
    for field, label in (
        ("volatility", "volatility"),
        ("security_definer", "SECURITY DEFINER"),
        ("language", "language"),
    ):
        if x[field] != y[field]:
            notes.append((False, f"{label} `{x[field]}` → `{y[field]}`"))
    if x["body_md5"] != y["body_md5"]:
        notes.append((False, "body changed"))
    if (x["comment"] or "") != (y["comment"] or ""):
        notes.append((False, f"comment changed to “{y['comment'] or ''}”"))
    return notes, interface


def column_diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """The columns of one table in two versions: removed, added, changed in shape, reordered."""
    ca = {c["name"]: c for c in old}
    cb = {c["name"]: c for c in new}
    shape = ("type", "not_null", "default")
    changed = [(ca[n], cb[n]) for n in ca if n in cb and any(ca[n][k] != cb[n][k] for k in shape)]
    order_a = [n for n in ca if n in cb]
    order_b = [n for n in cb if n in ca]
    return {
        "removed": [ca[n] for n in ca if n not in cb],
        "added": [cb[n] for n in cb if n not in ca],
        "changed": changed,
        "order_changed": order_a != order_b,
        "missing_table": not ca or not cb,
    }


def describe_column(c: dict[str, Any]) -> str:
    text = f"`{c['name']}` {c['type']}"
    if c["not_null"]:
        text += " NOT NULL"
    if c["default"] is not None:
        text += f" DEFAULT {c['default']}"
    return text


def signature(f: dict[str, Any]) -> str:
    return f"`{f['name']}({f['arguments']})` → `{f['result']}`"


def diff_bullets(d: dict[str, Any]) -> list[str]:
    out = function_bullets(d) + column_bullets(d) + other_bullets(d)
    return out or ["- no difference in functions, columns, members, configuration tables or settings read"]


def function_bullets(d: dict[str, Any]) -> list[str]:
    out = []
    for f in d["removed"]:
        out.append(f"- **breaking** — function removed: {signature(f)}")
    for c in d["changed"]:
        breaking = any(b for b, _ in c["notes"])
        flag = "**breaking** — " if breaking else ""
        head = f"- {flag}function changed: {signature(c['old'])}"
        if c["old"]["arguments"] != c["new"]["arguments"] or c["old"]["result"] != c["new"]["result"]:
            head += f" ⇒ {signature(c['new'])}"
        out.append(head + ": " + "; ".join(t for _, t in c["notes"]))
    for f in d["added"]:
        out.append(f"- function added: {signature(f)}" + (f" — “{f['comment']}”" if f["comment"] else ""))
    return out


def column_bullets(d: dict[str, Any]) -> list[str]:
    out = []
    for table_name, cd in d["columns"].items():
        for c in cd["removed"]:
            out.append(f"- **breaking** — column removed: `{table_name}`.{describe_column(c)}")
        for old, new in cd["changed"]:
            before, after = describe_column(old), describe_column(new)
            out.append(f"- **breaking** — column changed: `{table_name}`.{before} ⇒ {after}")
        for c in cd["added"]:
            out.append(f"- column added: `{table_name}`.{describe_column(c)}")
        if cd["order_changed"]:
            out.append(
                f"- column order of `{table_name}` changed (affects `SELECT *` and `INSERT` without a column list)"
            )
    return out


def other_bullets(d: dict[str, Any]) -> list[str]:
    """Members, configuration tables and settings read."""
    out = []
    for m in d["members_removed"]:
        out.append(f"- **breaking** — extension member removed: {m}")
    for m in d["members_added"]:
        out.append(f"- extension member added: {m}")
    for t in d["config_removed"]:
        out.append(f"- no longer a configuration table (its rows are no longer dumped): `{t}`")
    for t in d["config_added"]:
        out.append(f"- new configuration table (rows dumped by pg_dump): `{t}`")
    for g in d["gucs_added"]:
        out.append(f"- setting read by the functions: `{g}`")
    for g in d["gucs_removed"]:
        out.append(f"- setting no longer read: `{g}`")
    return out


def breaking(bullets: list[str]) -> list[str]:
    return [b for b in bullets if "**breaking**" in b]
