"""Maintenance windows: when an outage may happen. Pure computation (no Airflow): parse a window spec, find
the next window, the window a run belongs to, and whether an outage estimate still fits.

A spec (``include/config/windows.json``, one per name)::

    {"days": ["sun"], "start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}

``days`` are the days the window *starts* on; ``end`` not after ``start`` means the window ends the next day.

Daylight-saving rule — one rule for both bounds: a bound is the **first instant at which the local wall clock
reads that time** on that day. So a bound inside a spring-forward gap (02:30 on 2026-03-29 in Berlin) is the
instant the gap ends (03:00 CEST): the window is shorter that day. A bound in a fall-back hour that happens
twice (02:30 on 2026-10-25 in Berlin) is its first occurrence (CEST): the window is longer that day.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pgupgrade.errors import ConfigError, PlanError

UTC = dt.UTC
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CONFIG_ENV = "PGUPGRADE_WINDOWS_FILE"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "windows.json"


def _parse_time(name: str, value: Any) -> dt.time:
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a time like '02:00', got {value!r}")
    try:
        parsed = dt.time.fromisoformat(value)
    except ValueError:
        raise ConfigError(name, f"must be a time like '02:00', got {value!r}") from None
    if parsed.tzinfo is not None:
        raise ConfigError(name, "must be a wall-clock time without offset; set 'timezone' instead")
    return parsed


def _parse_day(value: Any) -> int:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in DAY_NAMES:
            return DAY_NAMES.index(low)
        if low in _FULL_DAY_NAMES:
            return _FULL_DAY_NAMES.index(low)
    raise ConfigError("days", f"{value!r} is not a day; use {', '.join(DAY_NAMES)}")


@dataclass(frozen=True)
class Window:
    """One concrete window: aware UTC instants."""

    start: dt.datetime
    end: dt.datetime

    def contains(self, at: dt.datetime) -> bool:
        return self.start <= at < self.end

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class WindowSpec:
    days: tuple[int, ...]  # 0 = Monday
    start: dt.time
    end: dt.time
    timezone: str

    @classmethod
    def from_dict(cls, data: Any) -> WindowSpec:
        if not isinstance(data, dict):
            raise ConfigError("window", f"must be an object with days, start, end, timezone; got {data!r}")
        unknown = sorted(set(data) - {"days", "start", "end", "timezone"})
        if unknown:
            raise ConfigError(unknown[0], "unknown key in a window spec; known: days, start, end, timezone")
        for key in ("days", "start", "end", "timezone"):
            if key not in data:
                raise ConfigError(key, "is required in a window spec")
        days_raw = data["days"]
        if not isinstance(days_raw, list) or not days_raw:
            raise ConfigError("days", f"must be a non-empty list of days, got {days_raw!r}")
        days = tuple(sorted({_parse_day(d) for d in days_raw}))
        start, end = _parse_time("start", data["start"]), _parse_time("end", data["end"])
        if start == end:
            raise ConfigError("end", "must differ from start (a window of zero length)")
        tz = data["timezone"]
        if not isinstance(tz, str) or not tz:
            raise ConfigError("timezone", f"must be an IANA time zone name like 'Europe/Berlin', got {tz!r}")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError("timezone", f"unknown time zone {tz!r}") from None
        return cls(days=days, start=start, end=end, timezone=tz)

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": [DAY_NAMES[d] for d in self.days],
            "start": self.start.strftime("%H:%M") if not self.start.second else self.start.isoformat(),
            "end": self.end.strftime("%H:%M") if not self.end.second else self.end.isoformat(),
            "timezone": self.timezone,
        }

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def describe(self) -> str:
        """E.g. ``Sun 02:00\u201304:00 Europe/Berlin`` (en dash); ``Mon, Wed 22:00\u201302:00 (+1 day) UTC``."""
        d = self.to_dict()
        days = "daily" if len(self.days) == 7 else ", ".join(x.capitalize() for x in d["days"])
        nxt = " (+1 day)" if self.crosses_midnight else ""
        return f"{days} {d['start']}\u2013{d['end']}{nxt} {self.timezone}"

    # -- concrete windows ----------------------------------------------------------------------------

    def window_on(self, day: dt.date) -> Window:
        """The window that starts on the local date ``day`` (whether or not ``day`` is one of ``days``)."""
        end_day = day + dt.timedelta(days=1) if self.crosses_midnight else day
        return Window(first_instant(day, self.start, self.tz), first_instant(end_day, self.end, self.tz))

    def _candidates(self, around: dt.datetime) -> list[Window]:
        local_day = _aware(around).astimezone(self.tz).date()
        out = []
        for offset in range(-2, 9):
            day = local_day + dt.timedelta(days=offset)
            if day.weekday() in self.days:
                out.append(self.window_on(day))
        return out

    def next_window(self, after: dt.datetime, *, inclusive: bool = False) -> Window:
        """The first window starting after ``after`` (at or after it with ``inclusive``)."""
        after = _aware(after)
        for w in self._candidates(after):
            if w.start > after or (inclusive and w.start == after):
                return w
        raise AssertionError("a weekly window always recurs within 8 days")  # pragma: no cover

    def window_containing(self, at: dt.datetime) -> Window | None:
        at = _aware(at)
        for w in self._candidates(at):
            if w.contains(at):
                return w
        return None

    def current_or_next(self, at: dt.datetime) -> Window:
        """The window ``at`` falls in, or else the next one."""
        return self.window_containing(at) or self.next_window(at, inclusive=True)


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"need an aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _wall(at_utc: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    return at_utc.astimezone(tz).replace(tzinfo=None, fold=0)


def first_instant(day: dt.date, wall: dt.time, tz: ZoneInfo) -> dt.datetime:
    """The first instant (UTC) at which the local clock in ``tz`` reads ``wall`` on ``day``, or — when that
    reading is skipped (spring forward) — the first instant after it (the end of the gap)."""
    naive = dt.datetime.combine(day, wall)
    candidates = [naive.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1)]
    valid = [c for c in candidates if _wall(c, tz) == naive]
    if valid:
        return min(valid)  # fall back: the first of the two occurrences
    # in a gap: the wall clock jumps over `naive` somewhere between the two candidates
    lo, hi = min(candidates), max(candidates)
    while (hi - lo) > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if _wall(mid, tz) >= naive:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)  # transitions fall on whole seconds


# -- the guard ------------------------------------------------------------------------------------------


def remaining_seconds(window_end: dt.datetime, now: dt.datetime) -> float:
    return (_aware(window_end) - _aware(now)).total_seconds()


def check_fits(
    window_end: dt.datetime | None,
    estimate_s: float,
    now: dt.datetime,
    *,
    window_start: dt.datetime | None = None,
) -> str:
    """Raises PlanError unless the outage estimate fits between now and the window's end (and, when the window's
    start is known, now is inside the window). ``window_end`` None: no limit."""
    if window_end is None:
        return "no window end given"
    now = _aware(now)
    if window_start is not None and now < _aware(window_start):
        raise PlanError(f"the window opens at {_aware(window_start).isoformat()}; it is {now.isoformat()}")
    left = remaining_seconds(window_end, now)
    if left < estimate_s:
        raise PlanError(
            f"the window ends in {left:.0f}s (at {_aware(window_end).isoformat()}), the outage estimate is "
            f"{estimate_s:.0f}s: not starting the outage"
        )
    return f"{left:.0f}s left in the window, estimate {estimate_s:.0f}s"


def parse_window_end(value: str) -> dt.datetime | None:
    """The ``window_end`` run parameter: '' (no limit) or an ISO timestamp with a time zone."""
    if not value:
        return None
    try:
        end_at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError("window_end", f"not an ISO timestamp: {value!r}") from None
    if end_at.tzinfo is None:
        raise ConfigError("window_end", "needs a time zone, e.g. 2026-11-29T04:00:00+01:00")
    return end_at.astimezone(UTC)


def run_window(interval_start: dt.datetime | None, interval_end: dt.datetime | None) -> Window | None:
    """The maintenance window of a run from its data interval: scheduled runs of a MaintenanceWindowTimetable
    get [window start, window end]; manual runs outside a window get none (None or a zero-width interval)."""
    if interval_start is None or interval_end is None:
        return None
    start, end = _aware(interval_start), _aware(interval_end)
    if end <= start:
        return None
    return Window(start, end)


def effective_window(param_value: str, window: Window | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(start, end) the guard enforces: the run's window, cut short by the ``window_end`` param if earlier."""
    param_end = parse_window_end(param_value)
    if window is None:
        return None, param_end
    end = min(window.end, param_end) if param_end else window.end
    return window.start, end


# -- configuration --------------------------------------------------------------------------------------


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: Path | None = None) -> dict[str, WindowSpec]:
    """All named windows of the config file (a plain file read: safe at DAG parse time)."""
    path = path or config_path()
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read the maintenance windows: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(str(path), 'must be a JSON object of named windows, e.g. {"default": {...}}')
    out = {}
    for name, spec in raw.items():
        try:
            out[name] = WindowSpec.from_dict(spec)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {name}.{exc.field}", str(exc).split(": ", 1)[-1]) from None
    return out


def load(name: str = "default", path: Path | None = None) -> WindowSpec:
    windows = load_config(path)
    if name not in windows:
        raise ConfigError("window", f"no window named {name!r}; configured: {', '.join(sorted(windows))}")
    return windows[name]
