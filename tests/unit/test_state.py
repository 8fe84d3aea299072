import json

import pytest

from pgupgrade.errors import UnsafeState
from pgupgrade.state import RunState


def test_journal_is_ordered_and_refuses_reruns(tmp_path):
    st = RunState.for_run("dag", "manual__2026-01-01T00:00:00+00:00", tmp_path)
    st.record("old_stopped")
    st.record("transfer_started", mode="link")
    assert [e["event"] for e in st.events()] == ["old_stopped", "transfer_started"]
    assert st.first("transfer_started")["mode"] == "link"
    with pytest.raises(UnsafeState, match="already"):
        st.refuse_if("transfer_started", "pg_upgrade already ran")
    st.save("plan", {"a": 1})
    assert json.loads(st.path("plan.json").read_text()) == {"a": 1} and st.load("missing", 7) == 7
    assert "/" not in st.dir.name and ":" not in st.dir.name
