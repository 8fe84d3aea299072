"""Which way back the major rollback takes from what is on disk (no server needed): the WAL bridge of link mode."""

from pgupgrade import recovery
from pgupgrade.commands import LocalHost
from pgupgrade.state import RunState

START = "000000010000000000000005"


def _facts(rows):
    return {"roles": ["app"], "databases": {"app": {"tables": {"public.t": {"rows": rows}}, "extensions": {}}}}


def _state(tmp_path, *, base=True, stopped=True):
    st = RunState.for_run("pg15_to_pg16_upgrade", f"r-{base}-{stopped}", tmp_path / "state")
    manifest = {"facts": _facts(1)}
    if base:
        manifest["base"] = {"dir": str(tmp_path / "base"), "start_wal_file": START, "start_lsn": "0/5000028"}
    st.save("backup", manifest)
    st.save("facts_before", _facts(2))
    if stopped:
        st.record("old_stopped", checkpoint_lsn="0/6000028")
    return st


def test_bridge_needs_the_base_backup_the_stop_lsn_and_the_first_wal_segment(tmp_path):
    old = tmp_path / "old"
    (old / "pg_wal").mkdir(parents=True)
    host = LocalHost()
    st = _state(tmp_path)
    assert recovery.wal_bridge(st, str(old), host) is None  # the segment was removed
    (old / "pg_wal" / START).write_bytes(b"\0" * 16)
    bridge = recovery.wal_bridge(st, str(old), host)
    assert bridge is not None and bridge["until_lsn"] == "0/6000028"
    assert recovery.wal_bridge(_state(tmp_path, base=False), str(old), host) is None  # copy/dump mode: no base
    assert recovery.wal_bridge(_state(tmp_path, stopped=False), str(old), host) is None


def test_writes_after_the_backup_are_a_risk_only_without_the_bridge(tmp_path):
    st = _state(tmp_path)
    risks = recovery.data_loss_risks(st)
    assert len(risks) == 1 and "data changed between the backup and the stop" in risks[0], risks
    assert recovery.data_loss_risks(st, bridged=True) == []
    st.record("opened", roles=[], wal_lsn="0/7000000")
    assert any("clients were let into the new cluster" in r for r in recovery.data_loss_risks(st, bridged=True))
