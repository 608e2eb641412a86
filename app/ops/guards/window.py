"""Maintenance windows: parse MAINTENANCE_WINDOW / MAINTENANCE_TIMEZONE and answer "is it open?",
"when does it next open?" and "when does it close?". Pure: callers pass `now`; no clock, no I/O.

Spec: a comma-separated list of entries, each `DAY HH:MM-HH:MM` or `YYYY-MM-DD HH:MM-HH:MM`.
DAY is Mon..Sun (any case) or a range such as `Mon-Fri`; a range wraps, so `Fri-Mon` is Fri, Sat,
Sun, Mon. An end earlier than its start crosses midnight: the opening starts on DAY (or the date)
and ends the next day. `24:00` is accepted as an end only, meaning midnight at the end of the day,
so `00:00-24:00` is a whole day. An end equal to its start is malformed. Times are wall-clock
times in MAINTENANCE_TIMEZONE (an IANA name; blank means UTC). Openings that overlap or touch are
merged, so `Mon 22:00-24:00, Tue 00:00-02:00` is one opening until Tue 02:00.

DST rules (the window is never shortened by an ambiguous time):
- A wall time that does not exist (spring-forward gap, e.g. 02:30 in Europe/Berlin on the last
  Sunday of March) maps to the first instant after the gap (03:00 local), for starts and ends
  alike; an opening that falls entirely inside the gap therefore disappears that night.
- A wall time that occurs twice (fall-back, e.g. 02:30 on the last Sunday of October) uses the
  FIRST occurrence (fold=0) for a start and the SECOND occurrence (fold=1) for an end.

Openings of weekly entries are enumerated for local dates from two days before `now` to eight days
after it, so a window that never closes reports that horizon as its bounds.
"""
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_INDEX = {name.lower(): index for index, name in enumerate(DAY_NAMES)}
_USAGE = "use DAY HH:MM-HH:MM or YYYY-MM-DD HH:MM-HH:MM"
_ENTRY_RE = re.compile(r"(?P<when>\S+)(?:\s+(?P<times>.*))?")
_TIMES_RE = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DAYS_RE = re.compile(r"([A-Za-z]{3})(?:-([A-Za-z]{3}))?")
_PAST_DAYS, _FUTURE_DAYS = 2, 8  # -2 catches an opening that began yesterday and crosses midnight


class WindowError(ValueError):
    """A malformed MAINTENANCE_WINDOW or an unknown MAINTENANCE_TIMEZONE; the message says how to fix it."""


class _Malformed(Exception):
    """Internal: what is wrong with one entry, and the fix to suggest."""

    def __init__(self, problem: str, fix: str = _USAGE):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


@dataclass(frozen=True)
class WindowEntry:
    """One parsed entry: recurring on `weekdays` (0=Mon) or once on `on_date`."""
    text: str
    weekdays: frozenset[int]
    on_date: date | None
    start: time
    end: time
    ends_next_day: bool  # crosses midnight, or ends at 24:00


@dataclass(frozen=True)
class MaintenanceWindow:
    spec: str
    tz: ZoneInfo
    entries: tuple[WindowEntry, ...]

    @classmethod
    def parse(cls, spec: str, timezone: str = "UTC") -> "MaintenanceWindow":
        tz = _parse_timezone(timezone)
        if not spec or not spec.strip():
            raise WindowError("MAINTENANCE_WINDOW is empty; set it to entries such as 'Mon-Fri 22:00-23:00'")
        entries = []
        for raw in spec.split(","):
            text = raw.strip()
            if not text:
                raise WindowError(f"MAINTENANCE_WINDOW {spec!r} has an empty entry; remove the stray comma")
            try:
                entries.append(_parse_entry(text))
            except _Malformed as bad:
                raise WindowError(f"maintenance window entry {text!r} is malformed: {bad.problem}; {bad.fix}") from None
        return cls(spec=spec, tz=tz, entries=tuple(entries))

    def is_open(self, now: datetime) -> bool:
        return self._opening_at(now) is not None

    def next_open(self, now: datetime) -> datetime | None:
        """Start of the current opening if open now, else of the first opening after `now`; None if none is left."""
        current = self._opening_at(now)
        if current is not None:
            return current[0].astimezone(self.tz)
        instant = _as_utc(now)
        starts = [start for start, _ in self._openings(now) if start > instant]
        return min(starts).astimezone(self.tz) if starts else None

    def current_close(self, now: datetime) -> datetime | None:
        """End of the (merged) opening containing `now`; None when closed."""
        current = self._opening_at(now)
        return current[1].astimezone(self.tz) if current is not None else None

    def _opening_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        instant = _as_utc(now)
        for start, end in self._openings(now):
            if start <= instant < end:
                return start, end
        return None

    def _openings(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """All openings near `now` as half-open UTC intervals [start, end), sorted and merged."""
        today = _as_utc(now).astimezone(self.tz).date()
        nearby = [today + timedelta(days=offset) for offset in range(-_PAST_DAYS, _FUTURE_DAYS + 1)]
        intervals = []
        for entry in self.entries:
            days = [entry.on_date] if entry.on_date else [d for d in nearby if d.weekday() in entry.weekdays]
            for day in days:
                start = _wall_to_utc(datetime.combine(day, entry.start), self.tz, fold=0)
                end_day = day + timedelta(days=1) if entry.ends_next_day else day
                end = _wall_to_utc(datetime.combine(end_day, entry.end), self.tz, fold=1)
                if end > start:  # an opening swallowed by a DST gap is empty: skip it
                    intervals.append((start, end))
        merged: list[tuple[datetime, datetime]] = []
        for start, end in sorted(intervals):
            if merged and start <= merged[-1][1]:  # overlapping or touching: one opening
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged


def describe(dt: datetime) -> str:
    """`Tue 2026-12-01 02:00 CET (01:00 UTC)`; the UTC date is added when it differs from the local one."""
    utc = _as_utc(dt)
    local = f"{DAY_NAMES[dt.weekday()]} {dt:%Y-%m-%d %H:%M} {dt.tzname()}"
    utc_part = f"{utc:%H:%M}" if utc.date() == dt.date() else f"{utc:%Y-%m-%d %H:%M}"
    return f"{local} ({utc_part} UTC)"


def _parse_timezone(name: str) -> ZoneInfo:
    name = (name or "").strip() or "UTC"  # an unset-but-present env var means the default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowError(
            f"MAINTENANCE_TIMEZONE {name!r} is not a known IANA time zone; use a name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def _parse_entry(text: str) -> WindowEntry:
    match = _ENTRY_RE.fullmatch(text)
    when, times = match["when"], match["times"]
    weekdays, on_date = _parse_when(when)
    if not times:
        raise _Malformed(f"there is no HH:MM-HH:MM time range after {when!r}")
    time_match = _TIMES_RE.fullmatch(times)
    if not time_match:
        raise _Malformed(f"{times!r} is not a HH:MM-HH:MM time range")
    start_h, start_m, end_h, end_m = (int(group) for group in time_match.groups())
    start = _parse_time(start_h, start_m, is_end=False)
    end = _parse_time(end_h, end_m, is_end=True)
    ends_at_midnight = end_h == 24  # 24:00 is stored as 00:00 of the next day
    if start == end and not ends_at_midnight:
        raise _Malformed(f"start and end are both {start:%H:%M}, which is an empty window",
                         "use different times, or 00:00-24:00 for a whole day")
    return WindowEntry(text, weekdays, on_date, start, end, ends_next_day=ends_at_midnight or end < start)


def _parse_when(when: str) -> tuple[frozenset[int], date | None]:
    date_match = _DATE_RE.fullmatch(when)
    if date_match:
        try:
            return frozenset(), date(*(int(part) for part in date_match.groups()))
        except ValueError:
            raise _Malformed(f"{when} is not a real calendar date") from None
    day_match = _DAYS_RE.fullmatch(when)
    names = [name for name in day_match.groups() if name] if day_match else []
    if not names or any(name.lower() not in _DAY_INDEX for name in names):
        raise _Malformed(f"{when!r} is not a day (Mon..Sun), a day range such as Mon-Fri, or a YYYY-MM-DD date")
    first = _DAY_INDEX[names[0].lower()]
    last = _DAY_INDEX[names[-1].lower()]
    if len(names) == 2 and first == last:
        raise _Malformed(f"day range {when!r} starts and ends on the same day", f"write just {names[0]!r}")
    # Ranges wrap around the week: Fri-Mon is Fri, Sat, Sun, Mon.
    return frozenset((first + step) % 7 for step in range((last - first) % 7 + 1)), None


def _parse_time(hour: int, minute: int, *, is_end: bool) -> time:
    if hour == 24 and minute == 0:
        if is_end:
            return time(0, 0)
        raise _Malformed("24:00 is only allowed as an end time", "use 00:00 as the start")
    if hour > 23:
        raise _Malformed(f"hour {hour} is not 00-23")
    if minute > 59:
        raise _Malformed(f"minute {minute} is not 00-59")
    return time(hour, minute)


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; pass an aware datetime")
    return moment.astimezone(UTC)


def _wall_to_utc(wall: datetime, tz: ZoneInfo, *, fold: int) -> datetime:
    """Local wall time -> UTC instant. `fold` picks the occurrence of an ambiguous time (0 first, 1 second)."""
    instant = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    return _gap_end(wall, tz)  # the wall time does not round-trip: it is inside a DST gap


def _gap_end(wall: datetime, tz: ZoneInfo) -> datetime:
    """The transition instant that ends the gap containing `wall` (so 02:30 -> 03:00 local)."""
    # PEP 495: in a gap fold=1 reads the wall time with the post-transition offset (an instant
    # before the transition) and fold=0 with the pre-transition one (an instant at or after it).
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(wall.replace(tzinfo=tz, fold=0).timestamp())
    before = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:  # bisect to the second: transitions fall on whole seconds
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)
