"""Maintenance windows for Airflow: ``MaintenanceWindowTimetable`` (registered by plugins/pgupgrade_plugin.py),
the window guard a task runs before the outage, and ``deadline_alerts``: the DeadlineAlert that fires when a run
is still going after a window's length (needs a running ``airflow triggerer``).

A scheduled run is created when its window opens and its data interval is [window start, window end], so a
task reads the end of its window from ``data_interval_end``. A manual run triggered inside a window (with a
logical date) gets that window; any other manual run gets no window (only the ``window_end`` param limits it).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk.definitions.callback import AsyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable
from pendulum import DateTime, instance

from pgupgrade import windows
from pgupgrade.context import RunContext


def _pdt(value: dt.datetime) -> DateTime:
    return instance(value.astimezone(dt.UTC))


class MaintenanceWindowTimetable(Timetable):
    """One run per maintenance window, created when the window opens; data interval = the window."""

    def __init__(self, spec: windows.WindowSpec, name: str = "default") -> None:
        self.spec = spec
        self.name = name
        self.description = f"Maintenance window {name!r}: {spec.describe()}"

    @classmethod
    def from_config(cls, name: str = "default", path: Path | None = None) -> MaintenanceWindowTimetable:
        """The named window of include/config/windows.json (or $PGUPGRADE_WINDOWS_FILE): a file read only."""
        return cls(windows.load(name, path), name)

    # -- serialization: the spec travels with the DAG, the file is not read again ---------------------------

    def serialize(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict()}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> Timetable:
        return cls(windows.WindowSpec.from_dict(data["spec"]), str(data.get("name", "default")))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaintenanceWindowTimetable):
            return NotImplemented
        return (self.spec, self.name) == (other.spec, other.name)

    def __hash__(self) -> int:
        return hash((self.spec, self.name))

    @property
    def summary(self) -> str:
        return self.spec.describe()

    def validate(self) -> None:
        windows.WindowSpec.from_dict(self.spec.to_dict())

    # -- scheduling ------------------------------------------------------------------------------------------

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        found = self.spec.window_containing(run_after)
        if found is None:
            return DataInterval.exact(run_after)  # zero width: "no window" (see windows.run_window)
        return DataInterval(_pdt(found.start), _pdt(found.end))

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        if last_automated_data_interval is not None:
            candidate = self.spec.next_window(last_automated_data_interval.start)
        elif restriction.earliest is None:
            return None  # no start_date
        else:
            candidate = self.spec.next_window(restriction.earliest, inclusive=True)
        if not restriction.catchup:
            # no backfill of missed windows: the window open now (the guard judges the time left) or the next
            now = dt.datetime.now(dt.UTC)
            if candidate.end <= now:
                candidate = self.spec.current_or_next(now)
        if restriction.latest is not None and candidate.start > restriction.latest:
            return None
        return DagRunInfo(
            run_after=_pdt(candidate.start), data_interval=DataInterval(_pdt(candidate.start), _pdt(candidate.end))
        )


# -- the guard ---------------------------------------------------------------------------------------------


def run_window_from_context() -> windows.Window | None:
    """The current run's maintenance window (from its data interval), or None."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    return windows.run_window(ctx.get("data_interval_start"), ctx.get("data_interval_end"))


def window_guard(rc: RunContext, estimate_s: float, *, now: dt.datetime | None = None) -> str:
    """Refuses to start the outage unless the estimate fits before the end of the run's window (the data interval
    of a MaintenanceWindowTimetable run) and the ``window_end`` param, whichever is earlier; outside the run's
    window it refuses too. With neither, there is no limit."""
    start, end = windows.effective_window(rc.params.get("window_end", ""), run_window_from_context())
    return windows.check_fits(end, estimate_s, now or dt.datetime.now(dt.UTC), window_start=start)


# -- overrunning the window ------------------------------------------------------------------------------------


def window_length(spec: windows.WindowSpec) -> dt.timedelta:
    """The window's length by the wall clock (end - start; +1 day when it crosses midnight)."""
    day = dt.date(2000, 1, 3)
    start = dt.datetime.combine(day, spec.start)
    end = dt.datetime.combine(day + dt.timedelta(days=1) if spec.crosses_midnight else day, spec.end)
    return end - start


def deadline_alerts(window: str = "default", path: Path | None = None) -> list[DeadlineAlert]:
    """``deadline=`` for an upgrade DAG: alert (through the ``pgupgrade_notify`` channels) when a run is still
    going one window length after it was queued — for a scheduled run and the per-cluster runs it dispatches,
    that is when the window closes. The length comes from the window config (a file read at parse time); the
    alert is sent by the triggerer (``pgupgrade.airflow.notifiers.deadline_missed``), which stays silent for a run
    that has already ended. ``airflow dags test`` of such a DAG needs ``pgupgrade.airflow.compat`` (installed by
    ``plugins/airflow_local_settings.py``) to exit 0 after a successful run on Airflow 3.3.2."""
    from pgupgrade.airflow import notifiers

    spec = windows.load(window, path)
    return [
        DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=window_length(spec),
            callback=AsyncCallback(
                notifiers.deadline_missed, kwargs={"window": window, "window_text": spec.describe()}
            ),
            name=f"overran maintenance window {window}",
        )
    ]
