"""Maintenance windows: the pure computation (DST included), the guard, and the Airflow timetable (scheduling,
its own serialize/deserialize, and Airflow's DAG serialization with the plugin registered)."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from pgupgrade import windows
from pgupgrade.errors import ConfigError, PlanError

UTC = dt.UTC
SUNDAY_BERLIN = {"days": ["sun"], "start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.fixture
def spec() -> windows.WindowSpec:
    return windows.WindowSpec.from_dict(SUNDAY_BERLIN)


# -- parsing -------------------------------------------------------------------------------------------


def test_spec_round_trips_and_describes_itself(spec):
    assert spec.days == (6,) and spec.start == dt.time(2) and spec.end == dt.time(4)
    assert windows.WindowSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == SUNDAY_BERLIN
    assert spec.describe() == "Sun 02:00\u201304:00 Europe/Berlin"
    nightly = windows.WindowSpec.from_dict(
        {"days": ["Monday", "wed"], "start": "22:00", "end": "01:30", "timezone": "UTC"}
    )
    assert nightly.describe() == "Mon, Wed 22:00\u201301:30 (+1 day) UTC"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"days": []}, "days"),
        ({"days": ["sunday-ish"]}, "days"),
        ({"start": "25:00"}, "start"),
        ({"end": "02:00"}, "end"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_specs_name_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        windows.WindowSpec.from_dict({**SUNDAY_BERLIN, **bad})
    assert err.value.field == field


def test_config_file_and_env_override(tmp_path, monkeypatch):
    assert windows.load("default") == windows.WindowSpec.from_dict(SUNDAY_BERLIN)  # the repo's file
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"nightly": {"days": ["mon"], "start": "01:00", "end": "02:00", "timezone": "UTC"}}))
    monkeypatch.setenv(windows.CONFIG_ENV, str(path))
    assert windows.load("nightly").days == (0,)
    with pytest.raises(ConfigError, match="no window named 'default'"):
        windows.load("default")


# -- DST -----------------------------------------------------------------------------------------------


def test_ordinary_sundays(spec):
    w = spec.next_window(utc(2026, 3, 18))
    assert (w.start, w.end) == (utc(2026, 3, 22, 1), utc(2026, 3, 22, 3))  # CET: 02:00-04:00 = 01:00-03:00 UTC
    w = spec.next_window(utc(2026, 6, 1))
    assert (w.start, w.end) == (utc(2026, 6, 7, 0), utc(2026, 6, 7, 2))  # CEST


def test_spring_forward_window_starts_at_first_valid_instant(spec):
    """2026-03-29 Berlin: 02:00 CET jumps to 03:00 CEST, so 02:00-03:00 does not exist. The window starts at the
    first instant the wall clock reads 02:00 or later (03:00 CEST = 01:00 UTC) and ends at 04:00 CEST: 1 hour."""
    w = spec.next_window(utc(2026, 3, 23))
    assert (w.start, w.end) == (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))
    assert w.seconds == 3600
    assert w.start.astimezone(spec.tz).strftime("%H:%M %Z") == "03:00 CEST"
    # a bound inside the gap (02:30) is the end of the gap as well
    half = windows.first_instant(dt.date(2026, 3, 29), dt.time(2, 30), spec.tz)
    assert half == utc(2026, 3, 29, 1)
    # and the next Sunday is 2 hours again, in CEST
    nxt = spec.next_window(w.start)
    assert (nxt.start, nxt.end) == (utc(2026, 4, 5, 0), utc(2026, 4, 5, 2))


def test_fall_back_window_starts_at_first_occurrence(spec):
    """2026-10-25 Berlin: 03:00 CEST falls back to 02:00 CET, so 02:00-03:00 happens twice. The window starts at
    the first 02:00 (CEST = 00:00 UTC) and ends at 04:00 CET (03:00 UTC): 3 hours."""
    w = spec.next_window(utc(2026, 10, 19))
    assert (w.start, w.end) == (utc(2026, 10, 25, 0), utc(2026, 10, 25, 3))
    assert w.start.astimezone(spec.tz).strftime("%H:%M %Z") == "02:00 CEST"
    assert w.end.astimezone(spec.tz).strftime("%H:%M %Z") == "04:00 CET"
    nxt = spec.next_window(w.start)
    assert (nxt.start, nxt.end) == (utc(2026, 11, 1, 1), utc(2026, 11, 1, 3))


def test_window_containing_and_current_or_next(spec):
    inside = utc(2026, 10, 25, 1, 30)  # the repeated hour, second pass
    assert spec.window_containing(inside) == windows.Window(utc(2026, 10, 25, 0), utc(2026, 10, 25, 3))
    assert spec.window_containing(utc(2026, 10, 25, 3)) is None  # end is exclusive
    assert spec.current_or_next(utc(2026, 10, 25, 3)).start == utc(2026, 11, 1, 1)
    assert spec.next_window(utc(2026, 3, 22, 1), inclusive=True).start == utc(2026, 3, 22, 1)
    assert spec.next_window(utc(2026, 3, 22, 1)).start == utc(2026, 3, 29, 1)


def test_window_across_midnight_and_dst():
    spec = windows.WindowSpec.from_dict(
        {"days": ["sat"], "start": "23:00", "end": "03:00", "timezone": "Europe/Berlin"}
    )
    w = spec.next_window(utc(2026, 3, 27))
    # Sat 23:00 CET (22:00 UTC) to Sun 03:00 CEST (01:00 UTC): 4 hours on the wall clock, 3 real hours
    assert (w.start, w.end) == (utc(2026, 3, 28, 22), utc(2026, 3, 29, 1))
    assert spec.window_containing(utc(2026, 3, 29, 0, 30)) == w


# -- the guard -----------------------------------------------------------------------------------------


def test_guard_refuses_ten_minutes_before_close_with_a_30_minute_estimate(spec):
    w = spec.next_window(utc(2026, 11, 25))
    with pytest.raises(PlanError, match=r"ends in 600s.*estimate is 1800s"):
        windows.check_fits(w.end, 1800, w.end - dt.timedelta(minutes=10), window_start=w.start)


def test_guard_accepts_with_two_hours_left(spec):
    w = spec.next_window(utc(2026, 11, 25))
    assert w.seconds == 7200
    msg = windows.check_fits(w.end, 1800, w.start, window_start=w.start)
    assert msg == "7200s left in the window, estimate 1800s"


def test_guard_refuses_before_the_window_and_after_it(spec):
    w = spec.next_window(utc(2026, 11, 25))
    with pytest.raises(PlanError, match="window opens at"):
        windows.check_fits(w.end, 60, w.start - dt.timedelta(minutes=1), window_start=w.start)
    with pytest.raises(PlanError, match="ends in -"):
        windows.check_fits(w.end, 60, w.end + dt.timedelta(hours=1), window_start=w.start)
    assert windows.check_fits(None, 1e9, utc(2026, 1, 1)) == "no window end given"


def test_effective_window_takes_the_earlier_end(spec):
    w = spec.next_window(utc(2026, 11, 25))
    assert windows.effective_window("", w) == (w.start, w.end)
    early = (w.start + dt.timedelta(minutes=30)).isoformat()
    assert windows.effective_window(early, w) == (w.start, w.start + dt.timedelta(minutes=30))
    assert windows.effective_window("", None) == (None, None)
    assert windows.effective_window("2026-11-29T04:00:00+01:00", None) == (None, utc(2026, 11, 29, 3))
    with pytest.raises(ConfigError, match="time zone"):
        windows.effective_window("2026-11-29T04:00:00", None)
    # a manual run outside any window has a zero-width interval: no window
    assert windows.run_window(w.start, w.start) is None and windows.run_window(None, None) is None
    assert windows.run_window(w.start, w.end) == w


def test_airflow_guard_reads_the_data_interval(spec, monkeypatch):
    from pgupgrade.airflow import windows as aw

    w = spec.next_window(utc(2026, 11, 25))
    monkeypatch.setattr(aw, "run_window_from_context", lambda: w)
    rc = SimpleNamespace(params={"window_end": ""})
    with pytest.raises(PlanError):
        aw.window_guard(rc, 1800, now=w.end - dt.timedelta(minutes=10))
    assert aw.window_guard(rc, 1800, now=w.start).startswith("7200s left")
    # the window_end param can only shorten the window
    rc.params["window_end"] = (w.start + dt.timedelta(minutes=20)).isoformat()
    with pytest.raises(PlanError, match="ends in 1200s"):
        aw.window_guard(rc, 1800, now=w.start)


# -- the timetable -------------------------------------------------------------------------------------


def _restriction(earliest, catchup=True, latest=None):
    from airflow.timetables.base import TimeRestriction

    return TimeRestriction(earliest=earliest, latest=latest, catchup=catchup)


def test_timetable_schedules_one_run_per_window_across_dst(spec):
    from pendulum import instance

    from pgupgrade.airflow.windows import MaintenanceWindowTimetable

    tt = MaintenanceWindowTimetable(spec)
    got, last = [], None
    restriction = _restriction(instance(utc(2026, 3, 20)))
    for _ in range(3):
        info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        assert info is not None and info.run_after == info.data_interval.start  # runs when the window opens
        got.append((info.data_interval.start, info.data_interval.end))
        last = info.data_interval
    assert got == [
        (utc(2026, 3, 22, 1), utc(2026, 3, 22, 3)),
        (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)),
        (utc(2026, 4, 5, 0), utc(2026, 4, 5, 2)),
    ]
    got, last = [], None
    restriction = _restriction(instance(utc(2026, 10, 18, 0)))  # exactly a window start: included
    for _ in range(3):
        info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        got.append((info.data_interval.start, info.data_interval.end))
        last = info.data_interval
    assert got == [
        (utc(2026, 10, 18, 0), utc(2026, 10, 18, 2)),
        (utc(2026, 10, 25, 0), utc(2026, 10, 25, 3)),
        (utc(2026, 11, 1, 1), utc(2026, 11, 1, 3)),
    ]
    assert tt.next_dagrun_info(last_automated_data_interval=None, restriction=_restriction(None)) is None
    end = _restriction(instance(utc(2026, 3, 20)), latest=instance(utc(2026, 3, 21)))
    assert tt.next_dagrun_info(last_automated_data_interval=None, restriction=end) is None


def test_timetable_without_catchup_skips_missed_windows(spec):
    from pendulum import instance

    from pgupgrade.airflow.windows import MaintenanceWindowTimetable

    tt = MaintenanceWindowTimetable(spec)
    info = tt.next_dagrun_info(
        last_automated_data_interval=None, restriction=_restriction(instance(utc(2020, 1, 1)), False)
    )
    now = dt.datetime.now(UTC)
    assert info.data_interval.end > now and info.data_interval.start <= now + dt.timedelta(days=7)


def test_timetable_manual_runs(spec):
    from pendulum import instance

    from pgupgrade.airflow.windows import MaintenanceWindowTimetable

    tt = MaintenanceWindowTimetable(spec)
    inside = tt.infer_manual_data_interval(run_after=instance(utc(2026, 3, 29, 1, 30)))
    assert (inside.start, inside.end) == (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))
    outside = tt.infer_manual_data_interval(run_after=instance(utc(2026, 3, 30, 12)))
    assert outside.start == outside.end == utc(2026, 3, 30, 12)
    assert windows.run_window(outside.start, outside.end) is None


def test_timetable_serialize_round_trip_and_ui_text(spec):
    from pgupgrade.airflow.windows import MaintenanceWindowTimetable

    tt = MaintenanceWindowTimetable.from_config("default")
    assert tt == MaintenanceWindowTimetable(spec)
    data = tt.serialize()
    assert json.loads(json.dumps(data)) == data == {"name": "default", "spec": SUNDAY_BERLIN}
    back = MaintenanceWindowTimetable.deserialize(data)
    assert back == tt and back.summary == "Sun 02:00\u201304:00 Europe/Berlin"
    assert back.description == "Maintenance window 'default': Sun 02:00\u201304:00 Europe/Berlin"
    back.validate()


def _dag(tt):
    from airflow.sdk import DAG, task

    with DAG(
        dag_id="windowed",
        schedule=tt,
        start_date=dt.datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        default_args={"owner": "dba"},
    ) as dag:
        task(task_id="t")(lambda: None)()
    return dag


def test_dag_with_the_timetable_survives_airflow_serialization(spec):
    """Airflow 3.3's DagSerialization (``SerializedDAG`` is now the scheduler-side class) looks custom timetables
    up in the plugins' ``timetables``: plugins/pgupgrade_plugin.py, found through AIRFLOW__CORE__PLUGINS_FOLDER
    (set by conftest)."""
    from airflow import plugins_manager
    from airflow.serialization.serialized_objects import DagSerialization

    from pgupgrade.airflow.windows import MaintenanceWindowTimetable

    assert "pgupgrade.airflow.windows.MaintenanceWindowTimetable" in plugins_manager.get_timetables_plugins()
    data = DagSerialization.to_dict(_dag(MaintenanceWindowTimetable(spec)))
    encoded = data["dag"]["timetable"]
    assert encoded["__type"] == "pgupgrade.airflow.windows.MaintenanceWindowTimetable"
    assert encoded["__var"] == {"name": "default", "spec": SUNDAY_BERLIN}
    back = DagSerialization.from_dict(json.loads(json.dumps(data)))
    assert isinstance(back.timetable, MaintenanceWindowTimetable)
    assert back.timetable == MaintenanceWindowTimetable(spec)
    assert back.timetable.summary == "Sun 02:00\u201304:00 Europe/Berlin"
    assert (
        back.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=_restriction(None)) is None
    )  # the deserialized object schedules like the original


def test_unregistered_timetable_does_not_serialize(spec, monkeypatch):
    from airflow import plugins_manager
    from airflow.serialization.serialized_objects import DagSerialization

    from pgupgrade.airflow.windows import MaintenanceWindowTimetable

    monkeypatch.setattr(plugins_manager, "get_timetables_plugins", lambda: {})
    with pytest.raises(Exception, match="not registered"):
        DagSerialization.to_dict(_dag(MaintenanceWindowTimetable(spec)))
