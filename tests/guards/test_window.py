"""Maintenance window parsing and open/close arithmetic, including both DST changes. No real clock."""
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.ops.guards.window import MaintenanceWindow, WindowError, describe

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year, month, day, hour=0, minute=0):
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def as_utc(moment):
    # Compare in UTC: aware datetimes in a fold or gap never compare equal across zones (PEP 495).
    return moment.astimezone(UTC)


def wall(moment):
    """The local wall time and zone abbreviation, e.g. ('2026-03-29 03:00', 'CEST')."""
    return f"{moment:%Y-%m-%d %H:%M}", moment.tzname()


def opening(window, now):
    """(start, end) in UTC of the opening that is current at, or next after, `now`."""
    start = window.next_open(now)
    return as_utc(start), as_utc(window.current_close(start))


# --- DST: spring forward ---------------------------------------------------------------------

def test_berlin_start_in_spring_gap_opens_when_gap_ends():
    window = MaintenanceWindow.parse("Sun 02:30-04:00", "Europe/Berlin")
    before = utc(2026, 3, 29, 0, 30)  # 01:30 CET
    assert not window.is_open(before)
    start = window.next_open(before)
    assert wall(start) == ("2026-03-29 03:00", "CEST")
    assert as_utc(start) == utc(2026, 3, 29, 1, 0)
    assert start.tzinfo == BERLIN
    assert not window.is_open(utc(2026, 3, 29, 0, 59))
    assert window.is_open(utc(2026, 3, 29, 1, 0))
    assert as_utc(window.current_close(utc(2026, 3, 29, 1, 0))) == utc(2026, 3, 29, 2, 0)
    # An ordinary week: 02:30 CET as written.
    assert opening(window, utc(2026, 3, 21)) == (utc(2026, 3, 22, 1, 30), utc(2026, 3, 22, 3, 0))


def test_berlin_end_in_spring_gap_closes_when_gap_ends():
    window = MaintenanceWindow.parse("Sun 01:00-02:30", "Europe/Berlin")
    assert opening(window, utc(2026, 3, 28, 12)) == (utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 1, 0))
    assert wall(window.current_close(utc(2026, 3, 29, 0, 30))) == ("2026-03-29 03:00", "CEST")


def test_window_wholly_inside_spring_gap_skips_that_night():
    window = MaintenanceWindow.parse("Sun 02:00-02:45", "Europe/Berlin")
    assert not window.is_open(utc(2026, 3, 29, 1, 0))
    assert as_utc(window.next_open(utc(2026, 3, 28, 12))) == utc(2026, 4, 5, 0, 0)  # 02:00 CEST a week later


def test_new_york_start_in_spring_gap():
    window = MaintenanceWindow.parse("Sun 02:30-03:30", "America/New_York")
    start = window.next_open(utc(2026, 3, 8, 0))
    assert wall(start) == ("2026-03-08 03:00", "EDT")
    assert opening(window, utc(2026, 3, 8, 0)) == (utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 7, 30))


# --- DST: fall back --------------------------------------------------------------------------

def test_berlin_fall_back_window_covers_repeated_hour():
    window = MaintenanceWindow.parse("Sun 01:00-03:00", "Europe/Berlin")
    start, end = opening(window, utc(2026, 10, 24, 12))
    assert (start, end) == (utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 2, 0))
    assert end - start == timedelta(hours=3)  # two wall-clock hours, three real ones
    assert window.is_open(utc(2026, 10, 25, 0, 30))  # 02:30 CEST, first pass
    assert window.is_open(utc(2026, 10, 25, 1, 30))  # 02:30 CET, second pass


def test_berlin_ambiguous_end_uses_second_occurrence():
    window = MaintenanceWindow.parse("Sun 01:00-02:30", "Europe/Berlin")
    start, end = opening(window, utc(2026, 10, 24, 12))
    assert end == utc(2026, 10, 25, 1, 30)  # 02:30 CET, not 02:30 CEST
    assert end - start == timedelta(hours=2, minutes=30)
    assert wall(window.current_close(start)) == ("2026-10-25 02:30", "CET")


def test_berlin_ambiguous_start_uses_first_occurrence():
    window = MaintenanceWindow.parse("Sun 02:30-04:00", "Europe/Berlin")
    start = window.next_open(utc(2026, 10, 24, 12))
    assert wall(start) == ("2026-10-25 02:30", "CEST")
    assert opening(window, utc(2026, 10, 24, 12)) == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 3, 0))


def test_new_york_fall_back_window_is_the_longer_one():
    window = MaintenanceWindow.parse("Sun 01:00-03:00", "America/New_York")
    start, end = opening(window, utc(2026, 10, 31, 12))
    assert (start, end) == (utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 8, 0))  # 01:00 EDT .. 03:00 EST
    assert end - start == timedelta(hours=3)
    normal_start, normal_end = opening(window, utc(2026, 11, 7, 12))
    assert normal_end - normal_start == timedelta(hours=2)


def test_new_york_ambiguous_end():
    window = MaintenanceWindow.parse("Sun 00:30-01:30", "America/New_York")
    assert opening(window, utc(2026, 10, 31, 12)) == (utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 6, 30))


# --- shapes of entries -----------------------------------------------------------------------

def test_crossing_midnight():
    window = MaintenanceWindow.parse("Sat 23:00-02:00")
    assert not window.is_open(utc(2026, 12, 5, 22, 59))
    assert window.is_open(utc(2026, 12, 5, 23, 0))
    assert window.is_open(utc(2026, 12, 6, 1, 0))
    assert window.current_close(utc(2026, 12, 6, 1, 0)) == utc(2026, 12, 6, 2, 0)
    assert window.next_open(utc(2026, 12, 6, 1, 0)) == utc(2026, 12, 5, 23, 0)  # open: current start
    assert not window.is_open(utc(2026, 12, 6, 2, 0))  # end is exclusive
    assert window.current_close(utc(2026, 12, 6, 2, 0)) is None
    assert window.next_open(utc(2026, 12, 6, 2, 0)) == utc(2026, 12, 12, 23, 0)


def test_weekday_range():
    window = MaintenanceWindow.parse("Mon-Fri 22:00-23:00")
    for day in range(30, 35):  # Mon 2026-11-30 .. Fri 2026-12-04
        assert window.is_open(utc(2026, 11, 30, 22, 30) + timedelta(days=day - 30))
    assert not window.is_open(utc(2026, 12, 5, 22, 30))  # Sat
    assert window.next_open(utc(2026, 12, 5, 22, 30)) == utc(2026, 12, 7, 22, 0)  # Mon
    assert not window.is_open(utc(2026, 12, 1, 23, 0))


def test_wrapping_day_range():
    window = MaintenanceWindow.parse("Fri-Mon 01:00-02:00")
    open_days = {day for day in range(7) if window.is_open(utc(2026, 11, 30, 1, 30) + timedelta(days=day))}
    assert open_days == {0, 4, 5, 6}  # offsets from Mon 2026-11-30: Mon, Fri, Sat, Sun
    assert window.next_open(utc(2026, 12, 1, 3, 0)) == utc(2026, 12, 4, 1, 0)  # Tue -> Fri


def test_lenient_whitespace_and_case():
    window = MaintenanceWindow.parse("  mon 22:00 - 23:00 ,TUE 01:00-02:00,   fri-SUN 03:00-04:00 ")
    assert len(window.entries) == 3
    assert window.is_open(utc(2026, 11, 30, 22, 30))
    assert window.is_open(utc(2026, 12, 1, 1, 30))
    assert window.is_open(utc(2026, 12, 6, 3, 30))


def test_whole_day_with_2400_end():
    window = MaintenanceWindow.parse("Mon 00:00-24:00")
    assert window.is_open(utc(2026, 11, 30, 0, 0))
    assert window.is_open(utc(2026, 11, 30, 23, 59))
    assert not window.is_open(utc(2026, 12, 1, 0, 0))
    assert window.current_close(utc(2026, 11, 30, 12)) == utc(2026, 12, 1, 0, 0)


def test_adjacent_and_overlapping_openings_merge():
    window = MaintenanceWindow.parse("Mon 22:00-24:00, Tue 00:00-02:00, Tue 01:00-03:00")
    now = utc(2026, 11, 30, 23, 0)
    assert window.next_open(now) == utc(2026, 11, 30, 22, 0)
    assert window.current_close(now) == utc(2026, 12, 1, 3, 0)


def test_one_off_date():
    window = MaintenanceWindow.parse("2026-12-24 22:00-02:00", "Europe/Berlin")
    before = utc(2026, 12, 24, 12)
    assert not window.is_open(before)
    assert wall(window.next_open(before)) == ("2026-12-24 22:00", "CET")
    assert window.is_open(utc(2026, 12, 25, 0, 30))
    assert as_utc(window.current_close(utc(2026, 12, 25, 0, 30))) == utc(2026, 12, 25, 1, 0)
    assert window.next_open(utc(2027, 1, 1)) is None  # past: never opens again
    assert not window.is_open(utc(2027, 1, 1))
    assert window.current_close(utc(2027, 1, 1)) is None


def test_far_future_one_off_is_found():
    window = MaintenanceWindow.parse("2027-06-01 01:00-02:00")
    assert window.next_open(utc(2026, 12, 1)) == utc(2027, 6, 1, 1, 0)


def test_multiple_entries_pick_earliest_next_opening():
    window = MaintenanceWindow.parse("Wed 03:00-04:00, Tue 05:00-06:00, 2026-12-01 04:00-04:30")
    assert window.next_open(utc(2026, 12, 1, 0, 0)) == utc(2026, 12, 1, 4, 0)  # the one-off
    assert window.next_open(utc(2026, 12, 1, 4, 30)) == utc(2026, 12, 1, 5, 0)  # Tue
    assert window.next_open(utc(2026, 12, 1, 7, 0)) == utc(2026, 12, 2, 3, 0)  # Wed


def test_now_in_another_zone_is_compared_as_an_instant():
    window = MaintenanceWindow.parse("Mon 22:00-23:00", "Europe/Berlin")
    assert window.is_open(datetime(2026, 11, 30, 16, 30, tzinfo=NEW_YORK))  # 22:30 CET
    assert window.next_open(utc(2026, 11, 30, 12)).tzinfo == BERLIN


def test_naive_now_is_rejected():
    window = MaintenanceWindow.parse("Mon 22:00-23:00")
    for call in (window.is_open, window.next_open, window.current_close):
        with pytest.raises(ValueError, match="no time zone"):
            call(datetime(2026, 11, 30, 22, 30))


def test_describe():
    assert describe(datetime(2026, 12, 1, 2, 0, tzinfo=BERLIN)) == "Tue 2026-12-01 02:00 CET (01:00 UTC)"
    assert describe(datetime(2026, 7, 1, 9, 15, tzinfo=BERLIN)) == "Wed 2026-07-01 09:15 CEST (07:15 UTC)"
    assert describe(datetime(2026, 12, 1, 0, 30, tzinfo=BERLIN)) == "Tue 2026-12-01 00:30 CET (2026-11-30 23:30 UTC)"


# --- malformed input -------------------------------------------------------------------------

@pytest.mark.parametrize("entry, problem", [
    ("Mnd 01:00-02:00", "'Mnd' is not a day"),
    ("Mon 25:00-03:00", "hour 25 is not 00-23"),
    ("Mon 01:61-03:00", "minute 61 is not 00-59"),
    ("Mon 24:00-03:00", "24:00 is only allowed as an end time"),
    ("Mon", "no HH:MM-HH:MM time range after 'Mon'"),
    ("Mon 22:00", "'22:00' is not a HH:MM-HH:MM time range"),
    ("Mon 22:00-22:00", "start and end are both 22:00"),
    ("garbage", "'garbage' is not a day"),
    ("Mon 1-2", "'1-2' is not a HH:MM-HH:MM time range"),
    ("2026-02-30 01:00-02:00", "2026-02-30 is not a real calendar date"),
    ("Mon-Mon 01:00-02:00", "day range 'Mon-Mon' starts and ends on the same day"),
])
def test_malformed_entry_is_named_with_the_problem(entry, problem):
    with pytest.raises(WindowError) as caught:
        MaintenanceWindow.parse(f"Tue 01:00-02:00, {entry}")
    message = str(caught.value)
    assert message.startswith(f"maintenance window entry '{entry}' is malformed: ")
    assert problem in message
    assert "Tue 01:00-02:00" not in message  # the good entry is not blamed


def test_malformed_message_is_exact():
    with pytest.raises(WindowError) as caught:
        MaintenanceWindow.parse("Mon 25:00-03:00")
    assert str(caught.value) == (
        "maintenance window entry 'Mon 25:00-03:00' is malformed: hour 25 is not 00-23; "
        "use DAY HH:MM-HH:MM or YYYY-MM-DD HH:MM-HH:MM"
    )


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec(spec):
    with pytest.raises(WindowError, match="^MAINTENANCE_WINDOW is empty"):
        MaintenanceWindow.parse(spec)


def test_empty_entry_between_commas():
    with pytest.raises(WindowError, match="has an empty entry; remove the stray comma"):
        MaintenanceWindow.parse("Mon 01:00-02:00,,Tue 01:00-02:00")


@pytest.mark.parametrize("name", ["Europe/Berln", "Europe", "../etc/passwd"])
def test_unknown_timezone(name):
    with pytest.raises(WindowError) as caught:
        MaintenanceWindow.parse("Mon 01:00-02:00", name)
    assert str(caught.value).startswith(f"MAINTENANCE_TIMEZONE '{name}' is not a known IANA time zone")


def test_blank_timezone_means_utc_and_error_is_a_value_error():
    assert MaintenanceWindow.parse("Mon 01:00-02:00", " ").tz == ZoneInfo("UTC")
    assert issubclass(WindowError, ValueError)
