"""Preflight library without servers: the cluster list file, params, the lock rule, summary and Markdown."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from pgupgrade import preflight, windows
from pgupgrade.errors import ConfigError
from pgupgrade.major import fields as major_fields
from pgupgrade.major import plan as major_plan


def test_cluster_list_from_file_and_env(tmp_path, monkeypatch):
    assert preflight.load_clusters() == ["pg_upgrade_target"]  # the repo's include/config/clusters.json
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"clusters": ["pg_a", "pg_b"]}))
    monkeypatch.setenv(preflight.CLUSTERS_ENV, str(path))
    assert preflight.load_clusters() == ["pg_a", "pg_b"]
    path.write_text(json.dumps({"clusters": ["bad id; rm -rf"]}))
    with pytest.raises(ConfigError, match="not a valid name"):
        preflight.load_clusters()
    path.write_text(json.dumps(["pg_a"]))
    with pytest.raises(ConfigError, match="clusters"):
        preflight.load_clusters()


def test_params_have_valid_defaults_and_reach_the_major_plan():
    fields = preflight.fields(["pg_a"])
    names = [f.name for f in fields]
    assert names[:3] == ["clusters", "window", "target_major"] and "fail_if_not_ready" in names
    from pgupgrade.params import validate

    p = validate(fields, {"target_major": 17, "method": "dump_restore"})
    mp = preflight.major_params(p, "pg_a")
    assert mp["postgres_conn_id"] == "pg_a" and mp["target_major"] == 17 and mp["method"] == "dump_restore"
    assert set(mp) == {f.name for f in [*major_fields.FIELDS, major_fields.TARGET_MAJOR]}
    assert mp["dry_run"] is False and mp["window_end"] == ""


def test_a_held_lock_means_busy_and_the_cluster_is_not_probed(monkeypatch):
    def boom(ctx):
        raise AssertionError("plan must not run while a run holds the lock")

    monkeypatch.setattr(major_plan, "plan", boom)
    ctx = SimpleNamespace(
        params={"postgres_conn_id": "pg_a", "target_major": 18},
        lock=SimpleNamespace(holder=lambda: {"dag_id": "pg15_to_pg16_upgrade", "run_id": "r1"}),
    )
    spec = windows.WindowSpec.from_dict({"days": ["sun"], "start": "02:00", "end": "04:00", "timezone": "UTC"})
    res = preflight.check_cluster(ctx, spec, dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    assert res["status"] == "busy" and "pg15_to_pg16_upgrade/r1" in res["reasons"][0]


def test_summary_and_markdown():
    results = [
        {"cluster": "b", "status": "not ready", "reasons": ["major upgrade plan: prepared transaction x"],
         "warnings": [], "target_major": 18, "running": "15.18"},
        {"cluster": "a", "status": "ready", "reasons": [], "warnings": ["w1"], "target_major": 18, "running": "15.18",
         "major": {"to": "18.6", "method": "pg_upgrade", "transfer_mode": "link", "outage_estimate_s": 12.0},
         "window": {"start": "2026-11-29T01:00:00+00:00", "seconds": 7200.0}},
        {"cluster": "c", "status": "up to date", "reasons": [], "warnings": [], "target_major": 18},
    ]  # fmt: skip
    s = preflight.summarize(results, run_id="r")
    assert s["ready"] == ["a"] and s["up_to_date"] == ["c"] and s["busy"] == []
    assert s["not_ready"] == [{"cluster": "b", "reasons": ["major upgrade plan: prepared transaction x"]}]
    md = preflight.markdown(s)
    assert md.startswith("# Upgrade preflight — 1 ready, 1 would not go ahead")
    assert "| a | **ready** | 15.18 | 18.6 | pg_upgrade link | 12.0 | 2026-11-29T01:00:00+00:00 (7200 s) |" in md
    assert "- Would not go ahead: major upgrade plan: prepared transaction x" in md and "- Warning: w1" in md
