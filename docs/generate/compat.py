"""What the three compatibility pages (api, breaking, sql_compat) share: where their facts come from, result
cells of probes and restores, the cross-check of the DAGs' extension profile."""

from __future__ import annotations

from .facts import Facts
from .markup import code, table
from .probes import EXTNAME

CATALOGS_SOURCE = "source: the catalogs of a scratch PostgreSQL with every version of the stand-in"


def source_note(facts: Facts) -> str:
    return (
        f"Read from the catalogs of a throwaway {facts.server} server: the SQL stand-in of the extension "
        "(`tests/extension/pg_tviews`, the real extension's SQL-level API) copied into the installation, each "
        f"version created with `CREATE EXTENSION {EXTNAME} VERSION '…'` in its own database; functions from "
        "`pg_proc` (`pg_get_function_arguments`, `pg_get_function_result`), members from `pg_depend`, columns from "
        "`pg_attribute`, configuration tables from `pg_extension.extconfig`, settings from the "
        "`current_setting('…')` calls in the function bodies."
    )


def restore_cell(r: dict[str, str]) -> str:
    if r["result"] != "ok":
        return result_cell(("error", r["detail"]))
    text = "✓ extension at " + code(r["detail"])
    if r["detail"] != r["dump_version"]:
        text += f" — **not {r['dump_version']}**: the dump's version is silently replaced"
    return text


def result_cell(r: tuple[str, str] | None) -> str:
    if r is None:
        return "—"
    status, detail = r
    if status == "ok":
        return "✓" + (f" {code(detail)}" if detail else "")
    return f"✗ {code('ERROR: ' + detail)}"


def profile_section(facts: Facts) -> str:
    if facts.profile is None:
        return f"Could not load the profile: {facts.profile_error}"
    rows = [
        [
            c["version"],
            code(c["key"]),
            ", ".join(c["declared"]) or "—",
            ", ".join(c["observed"]) or "—",
            "yes" if c["ok"] else "**NO**",
        ]
        for c in facts.profile["checks"]
    ]
    bad = [c for c in facts.profile["checks"] if not c["ok"]]
    verdict = (
        "The profile agrees with the catalogs."
        if not bad
        else "**The profile disagrees with the catalogs**: the plan's compatibility scan and the verify step use "
        "the profile — fix `include/config/extension_profiles.json`."
    )
    return "\n".join(
        [
            "`include/config/extension_profiles.json` tells the DAGs what each version removes, changes and adds "
            "(the plan's compatibility scan and `verify_extension` rely on it). Compared with the catalogs "
            f"(columns of `{facts.profile['metadata_table']}`; “changed” = parameter names, defaults, result or kind):",
            "",
            table(["Version", "Profile key", "Declared", "In the catalogs", "Agrees"], rows),
            "",
            verdict,
        ]
    )
