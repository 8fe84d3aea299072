"""The decisions a person takes (pgupgrade.decisions) and when the Human-in-the-loop tasks ask at all
(pgupgrade.airflow.hitl): pre-answers from the conf, the safe default on a timeout, who decided in the journal
and the report. The real questions and answers through Airflow: tests/e2e/test_hitl.py."""

from __future__ import annotations

import datetime as dt

import pytest

from pgupgrade import decisions, report
from pgupgrade.errors import UnsafeState
from pgupgrade.state import RunState

STANDBY = {"kind": "standby", "detail": "standby s1 (10.0.0.2) streams from this cluster", "ack_param": "ack_standbys"}
SLOTS = {"kind": "slot", "detail": "replication slot r1 will not exist after the upgrade",
         "ack_param": "ack_replication_slots"}  # fmt: skip
AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def test_a_person_s_answer_names_them() -> None:
    d = decisions.from_response(
        "Delete?",
        {"chosen_options": ["Approve"], "responded_by_user": {"id": "7", "name": "alice"}, "responded_at": AT},
    )
    assert (d.chosen, d.source, d.by, d.by_id, d.at) == ("Approve", decisions.PERSON, "alice", "7", AT.isoformat())
    assert "by alice" in d.line()


def test_a_timeout_is_nobody_s_answer_and_says_so() -> None:
    event = {"chosen_options": ["Reject"], "responded_by_user": None, "responded_at": AT, "timedout": True}
    d = decisions.from_response("Delete?", event)
    assert (d.chosen, d.source, d.by) == ("Reject", decisions.TIMEOUT, None)
    assert "no answer in time" in d.line()
    with pytest.raises(ValueError, match="one chosen option"):
        decisions.from_response("Delete?", {"chosen_options": ["Approve", "Reject"], "responded_by_user": None})


def test_blockers_ask_only_for_what_the_conf_did_not_acknowledge() -> None:
    plan = {"blockers_acknowledged": [STANDBY, SLOTS]}
    asked = decisions.blockers_decision(plan, {"ack_standbys": True, "ack_replication_slots": False})
    assert isinstance(asked, tuple)
    subject, body = asked
    assert "replication slot r1" in body and "standby s1" not in body and "Go ahead" in subject
    conf = decisions.blockers_decision(plan, {"ack_standbys": True, "ack_replication_slots": True})
    assert isinstance(conf, decisions.Decision) and (conf.chosen, conf.source) == ("Approve", decisions.CONF)
    none = decisions.blockers_decision({"blockers_acknowledged": []}, {})
    assert isinstance(none, decisions.Decision) and none.source == decisions.NOT_NEEDED
    there = decisions.blockers_decision({"already_upgraded": True, "blockers_acknowledged": [STANDBY]}, {})
    assert isinstance(there, decisions.Decision) and there.chosen == decisions.APPROVE


def test_a_person_s_consent_covers_only_the_writes_after_opening() -> None:
    changes = ["app.public.orders: 1000 rows at opening, 1500 now"]
    assert decisions.opened_changes_to_weigh({"opened_changes": changes}) == changes
    assert decisions.opened_changes_to_weigh({"opened_changes": None}) is None  # not measured: assumed written
    assert decisions.opened_changes_to_weigh({"opened_changes": changes, "accepted_data_loss": {"by": "a"}}) == []
    _subject, body = decisions.data_loss_question(
        {"what": "the new cluster differs; going back loses 8192 bytes of WAL", "path": "restore_backup", "why": "x"}
    )
    assert "8192 bytes of WAL" in body and decisions.DISCARD in body and "No answer in time: keep" in body


def test_decisions_are_journaled_steps_not_side_effects_and_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = RunState.for_run("pg_major_upgrade_cleanup", "manual__1", tmp_path)
    d = decisions.from_response(
        "Delete the old cluster /d?", {"chosen_options": ["Approve"], "responded_by_user": {"id": "bob", "name": "bob"}}
    )
    decisions.record(st, "approve_delete", d)
    decisions.record(st, "approve_blockers", decisions.beforehand("q", "Reject", decisions.TIMEOUT), error="no")
    assert st.side_effects() == []  # asking changes nothing: a failed run is not rolled back for it
    assert [x["by"] for x in decisions.taken(st, "approve_delete")] == ["bob"]
    assert [e["status"] for e in st.events()] == ["success", "failed"]
    rep = report.build(st, status="success")
    assert [(x["step"], x["chosen"], x["by"]) for x in rep["decisions"]] == [
        ("approve_delete", "Approve", "bob"),
        ("approve_blockers", "Reject", None),
    ]
    text = report.markdown(rep)
    assert "## Decisions" in text and "**Approve** by **bob**" in text and "(timeout)" in text


def test_keeping_the_new_version_fails_the_rollback_naming_who_chose(tmp_path) -> None:  # type: ignore[no-untyped-def]
    st = RunState.for_run("pg_major_upgrade_rollback", "rollback__x", tmp_path)
    keep = {"chosen_options": [decisions.KEEP], "responded_by_user": {"id": "carol", "name": "carol"}}
    decisions.record(st, "choose_path", decisions.from_response("q", keep))
    with pytest.raises(UnsafeState, match="carol chose to keep it"):
        decisions.keep_new_serving(st)
    st2 = RunState.for_run("pg_major_upgrade_rollback", "rollback__y", tmp_path)
    decisions.record(st2, "choose_path", decisions.beforehand("q", decisions.KEEP, decisions.TIMEOUT))
    with pytest.raises(UnsafeState, match="nobody answered in time"):
        decisions.keep_new_serving(st2)


def test_nobody_is_asked_inside_dag_test(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms

    from pgupgrade.airflow import hitl

    monkeypatch.delattr(task_runner, "SUPERVISOR_COMMS", raising=False)
    assert hitl.can_ask()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object.__new__(InProcessSupervisorComms), raising=False)
    assert not hitl.can_ask()
