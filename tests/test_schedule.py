from __future__ import annotations

import io
import re
import struct
import sys
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from jobpulse._exceptions import InvalidJobError
from jobpulse._schedule import (
    MAX_GRACE_SECONDS,
    MIN_GRACE_SECONDS,
    MissedSlots,
    Schedule,
    missed_slots,
    parse_schedule,
)

NS = 1_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Epoch nanoseconds of a UTC wall time."""
    instant = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    return (instant - EPOCH) // timedelta(seconds=1) * NS


def local(instant_ns: int, zone: str) -> datetime:
    return (EPOCH + timedelta(microseconds=instant_ns // 1000)).astimezone(ZoneInfo(zone))


def nonexistent(wall: datetime, zone: str) -> bool:
    aware = wall.replace(tzinfo=ZoneInfo(zone))
    return aware.astimezone(timezone.utc).astimezone(ZoneInfo(zone)).replace(tzinfo=None) != wall


def keyless_zone() -> ZoneInfo:
    """A ZoneInfo read from a file, so with no IANA key: a minimal TZif file for UTC."""
    header = b"TZif" + b"\x00" * 16 + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
    return ZoneInfo.from_file(io.BytesIO(header + struct.pack(">lBB", 0, 0, 0) + b"UTC\x00"))


# --- parsing and normalization ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "text", "period_seconds"),
    [
        ("@hourly", "@hourly", 3600.0),
        ("@daily", "@daily", 86400.0),
        ("@midnight", "@daily", 86400.0),
        ("@weekly", "@weekly", 604800.0),
        ("@monthly", "@monthly", 2629746.0),
        ("@yearly", "@yearly", 31556952.0),
        ("@annually", "@yearly", 31556952.0),
        ("  @daily ", "@daily", 86400.0),
    ],
)
def test_descriptors(spec: str, text: str, period_seconds: float) -> None:
    schedule = parse_schedule(spec)
    assert isinstance(schedule, Schedule)
    assert (schedule.text, schedule.timezone, schedule.period_seconds) == (
        text,
        "UTC",
        period_seconds,
    )
    assert repr(schedule) == f"Schedule({text!r}, timezone='UTC')"


@pytest.mark.parametrize(
    ("spec", "text", "interval_ns"),
    [
        ("@every 2m", "@every 2m", 120 * NS),
        ("@every 1h30m", "@every 1h30m", 5400 * NS),
        ("@every 90s", "@every 1m30s", 90 * NS),
        ("@every 1.5h", "@every 1h30m", 5400 * NS),
        ("@every .5h", "@every 30m", 1800 * NS),
        ("@every 1.h", "@every 1h", 3600 * NS),
        ("@every 1440m", "@every 24h", 86400 * NS),
        ("@every 24h", "@every 24h", 86400 * NS),
        ("@every 1.5s", "@every 1.5s", 1_500_000_000),
        ("@every 1s500ms", "@every 1.5s", 1_500_000_000),
        ("@every 3600000ms", "@every 1h", 3600 * NS),
        ("@every 1s1us", "@every 1.000001s", 1_000_001_000),
        ("@every 1s1\u00b5s", "@every 1.000001s", 1_000_001_000),
        ("@every 1s1\u03bcs", "@every 1.000001s", 1_000_001_000),
        ("@every 1s1ns", "@every 1.000000001s", 1_000_000_001),
        ("@every 1h0.25s", "@every 1h0.25s", 3600 * NS + 250_000_000),
        ("@every +5m", "@every 5m", 300 * NS),
        ("@every 1d", "@every 24h", 86400 * NS),
        ("@every 1d12h", "@every 36h", 129600 * NS),
        ("@every 0.5d", "@every 12h", 43200 * NS),
        ("@every 366d", "@every 8784h", 366 * 86400 * NS),
        ("  @every   2m  ", "@every 2m", 120 * NS),
    ],
)
def test_every(spec: str, text: str, interval_ns: int) -> None:
    schedule = parse_schedule(spec)
    assert (schedule.text, schedule.timezone) == (text, None)
    assert schedule.period_seconds == interval_ns / NS
    assert schedule.next_after(0) == interval_ns
    assert repr(schedule) == f"Schedule({text!r})"


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (1, "@every 1s"),
        (90, "@every 1m30s"),
        (1.5, "@every 1.5s"),
        (86400.0, "@every 24h"),
        (timedelta(hours=1, minutes=30), "@every 1h30m"),
        (timedelta(seconds=1, microseconds=1), "@every 1.000001s"),
    ],
)
def test_plain_intervals(spec: float | timedelta, text: str) -> None:
    schedule = parse_schedule(spec)
    assert (schedule.text, schedule.timezone) == (text, None)
    assert schedule == parse_schedule(text)


def test_interval_next_after_is_exact_and_strictly_after() -> None:
    schedule = parse_schedule("@every 1s1ns")
    instant = 1_767_225_600_123_456_789  # beyond float precision
    assert schedule.next_after(instant) == instant + 1_000_000_001
    assert parse_schedule(90).next_after(instant) == instant + 90 * NS


@pytest.mark.parametrize(
    ("spec", "text", "period_seconds"),
    [
        ("*/15 * * * *", "*/15 * * * *", 900.0),
        ("  */15   *  * * *\t", "*/15 * * * *", 900.0),
        ("0 9 * * 1-5", "0 9 * * 1-5", 86400.0),
        ("*/5 9-17 * * *", "*/5 9-17 * * *", 300.0),
        ("0 0 29 2 *", "0 0 29 2 *", 1461 * 86400.0),
    ],
)
def test_cron(spec: str, text: str, period_seconds: float) -> None:
    schedule = parse_schedule(spec)
    assert (schedule.text, schedule.timezone, schedule.period_seconds) == (
        text,
        "UTC",
        period_seconds,
    )


@pytest.mark.parametrize(
    ("spec", "zone", "expected"),
    [
        ("@daily", None, "UTC"),
        ("@daily", "UTC", "UTC"),
        ("@daily", timezone.utc, "UTC"),
        ("@daily", "Europe/Berlin", "Europe/Berlin"),
        ("@daily", ZoneInfo("Europe/Berlin"), "Europe/Berlin"),
        ("CRON_TZ=Europe/Berlin @daily", None, "Europe/Berlin"),
        ("TZ=Europe/Berlin @daily", "Europe/Berlin", "Europe/Berlin"),
        ("CRON_TZ=Europe/Berlin @daily", ZoneInfo("Europe/Berlin"), "Europe/Berlin"),
        ("CRON_TZ=UTC @daily", timezone.utc, "UTC"),
    ],
)
def test_timezones(spec: str, zone: object, expected: str) -> None:
    schedule = parse_schedule(spec, zone)
    assert (schedule.text, schedule.timezone) == ("@daily", expected)
    assert repr(schedule) == f"Schedule('@daily', timezone={expected!r})"


def test_equality_and_hash() -> None:
    assert parse_schedule("@midnight") == parse_schedule("@daily")
    assert parse_schedule("@annually") == parse_schedule("@yearly")
    prefixed = parse_schedule("CRON_TZ=UTC 0 * * * *")
    assert prefixed == parse_schedule("0 * * * *")
    assert prefixed.timezone == "UTC"
    assert prefixed != parse_schedule("0 * * * *", "Europe/Berlin")
    assert parse_schedule("TZ=Europe/Berlin 30 2 * * *") == parse_schedule(
        "30 2 * * *", "Europe/Berlin"
    )
    assert (
        parse_schedule(90) == parse_schedule(timedelta(seconds=90)) == parse_schedule("@every 90s")
    )
    assert parse_schedule("@every 24h") != parse_schedule("@daily")
    assert parse_schedule("@daily") != "@daily"
    assert (
        len({parse_schedule("@daily"), parse_schedule("@midnight"), parse_schedule("@hourly")}) == 2
    )
    assert hash(parse_schedule("@midnight")) == hash(parse_schedule("@daily"))


def test_schedules_are_immutable() -> None:
    schedule = parse_schedule("@daily")
    with pytest.raises(AttributeError, match="immutable"):
        schedule.text = "@hourly"
    with pytest.raises(AttributeError, match="immutable"):
        del schedule.timezone
    assert schedule.text == "@daily"


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "zone", "message"),
    [
        ("@every 500ms", None, "schedule '@every 500ms': the interval must be at least 1s"),
        ("@every 999999999ns", None, "schedule '@every 999999999ns': the interval must be at"),
        ("@every 0s", None, "schedule '@every 0s': the interval must be at least 1s"),
        ("@every 0", None, "schedule '@every 0': the interval must be at least 1s"),
        ("@every -5s", None, "schedule '@every -5s': the interval must be at least 1s"),
        (0, None, "schedule 0: the interval must be at least 1s"),
        (-5, None, "schedule -5: the interval must be at least 1s"),
        (0.5, None, "schedule 0.5: the interval must be at least 1s"),
        (timedelta(0), None, "schedule datetime.timedelta(0): the interval must be at least 1s"),
        (timedelta(seconds=-60), None, "schedule datetime.timedelta(days=-1, seconds=86340):"),
        (timedelta(milliseconds=999), None, "schedule datetime.timedelta(microseconds=999000):"),
        (float("nan"), None, "schedule nan: the interval must be a finite number of seconds"),
        (float("inf"), None, "schedule inf: the interval must be a finite number of seconds"),
        (float("-inf"), None, "schedule -inf: the interval must be a finite"),
        (True, None, "schedule must be a str (cron expression or descriptor), seconds"),
        ([1], None, "or a timedelta, not list"),
        (None, None, "or a timedelta, not NoneType"),
        ("@every 5x", None, "schedule '@every 5x': '5x' is not a Go duration such as '90s'"),
        ("@every 5", None, "schedule '@every 5': '5' is not a Go duration"),
        ("@every .h", None, "schedule '@every .h': '.h' is not a Go duration"),
        ("@every 1h 30m", None, "schedule '@every 1h 30m': '1h 30m' is not a Go duration"),
        ("@every", None, "schedule '@every': '' is not a Go duration"),
        ("@every 5M", None, "schedule '@every 5M': '5M' is not a Go duration"),
        ("", None, "schedule must not be empty, got ''"),
        (" \t", None, "schedule must not be empty, got ' \\t'"),
        ("CRON_TZ=UTC", None, "schedule must not be empty, got 'CRON_TZ=UTC'"),
        ("@weekday", None, "schedule '@weekday': unknown descriptor; expected @every <duration>"),
        ("* * * *", None, "schedule '* * * *': a cron expression needs 5 fields (minute hour"),
        ("0 * * * * *", None, "day-of-month month day-of-week), got 6"),
        ("0 0 1 1 * 2026 x", None, "got 7"),
        ("61 * * * *", None, "schedule '61 * * * *': not a valid cron expression: [61 * * * *]"),
        ("0 0 * 13 *", None, "schedule '0 0 * 13 *': not a valid cron expression:"),
        ("*/0 * * * *", None, "schedule '*/0 * * * *': not a valid cron expression:"),
        ("a b c d e", None, "schedule 'a b c d e': not a valid cron expression:"),
        ("0 0 30 2 *", None, "schedule '0 0 30 2 *': the cron expression never fires"),
        ("0 0 31 4 *", "Europe/Berlin", "schedule '0 0 31 4 *': the cron expression never fires"),
        ("@every 2m", "UTC", "timezone 'UTC': an interval schedule ('@every 2m') has no time"),
        (120, "Europe/Berlin", "timezone 'Europe/Berlin': an interval schedule (120) has no"),
        (
            "CRON_TZ=Europe/Berlin @every 2m",
            None,
            "timezone 'Europe/Berlin': an interval schedule ('CRON_TZ=Europe/Berlin @every 2m')",
        ),
        ("@daily", "Mars/Olympus", "timezone 'Mars/Olympus': no such IANA time zone (if the"),
        ("@daily", "Europe", "time zone data may be missing: pip install tzdata)"),
        ("@daily", "", "timezone '': no such IANA time zone"),
        ("@daily", "../etc/passwd", "timezone '../etc/passwd': no such IANA time zone"),
        ("CRON_TZ=Nowhere/Land @daily", None, "timezone 'Nowhere/Land': no such IANA time zone"),
        (
            "@daily",
            timezone(timedelta(hours=2)),
            "timezone datetime.timezone(datetime.timedelta(seconds=7200)) is not an IANA time"
            " zone; pass a name such as 'Europe/Berlin' or a zoneinfo.ZoneInfo",
        ),
        ("@daily", 2, "timezone must be an IANA name (str) or a ZoneInfo, not int"),
        (
            "CRON_TZ=Europe/Berlin 0 * * * *",
            "Europe/Paris",
            "timezone 'Europe/Paris' conflicts with the 'CRON_TZ=Europe/Berlin' prefix of"
            " schedule 'CRON_TZ=Europe/Berlin 0 * * * *'",
        ),
        ("TZ=UTC @daily", "Europe/Berlin", "timezone 'Europe/Berlin' conflicts with the 'TZ=UTC'"),
    ],
)
def test_rejections(spec: object, zone: object, message: str) -> None:
    with pytest.raises(InvalidJobError, match=re.escape(message)) as caught:
        parse_schedule(spec, zone)
    assert str(caught.value).startswith(("schedule", "timezone"))
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "spec",
    [
        "@every 366d1s",
        "@every 8784h0.001s",
        "@every 367d",
        "@every 99999999999999999999h",
        366 * 86400 + 1,
        timedelta(days=366, microseconds=1),
        3600 * 10**9,
    ],
)
def test_intervals_longer_than_366_days_are_rejected(spec: str | int | timedelta) -> None:
    with pytest.raises(InvalidJobError, match=r"the interval must be at most 366 days$"):
        parse_schedule(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("5m", "schedule '5m': a bare duration is not a schedule; for a run every 5m, write"
         " '@every 5m'"),
        ("1h30m", "write '@every 1h30m'"),
        ("  90s ", "schedule '  90s ': a bare duration is not a schedule; for a run every 90s,"),
        ("1d", "write '@every 1d'"),
        ("TZ=UTC 5m", "write '@every 5m'"),
        ("90", "schedule '90': a number in a string is not a schedule; for a run every 90"
         " seconds, write '@every 90s' or pass the number 90"),
    ],
)  # fmt: skip
def test_a_bare_duration_suggests_every(spec: str, message: str) -> None:
    with pytest.raises(InvalidJobError, match=re.escape(message)):
        parse_schedule(spec)


def test_a_duration_text_too_long_to_be_one_is_rejected_without_converting_it() -> None:
    for duration in ("1" * 5000 + "s", "1." + "0" * 5000 + "1s", "1s" * 40):
        with pytest.raises(InvalidJobError, match="is not a Go duration"):
            parse_schedule("@every " + duration)


def test_a_zone_without_an_iana_key_is_rejected() -> None:
    zone: tzinfo = keyless_zone()
    with pytest.raises(InvalidJobError, match=r"^timezone .* is not an IANA time zone"):
        parse_schedule("@daily", zone)


def test_cron_needs_croniter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)
    message = "5-field cron schedules need croniter: pip install 'jobpulse[cron]'"
    with pytest.raises(ImportError, match=re.escape(message)) as caught:
        parse_schedule("*/15 * * * *")
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    daily = parse_schedule("@daily", "Europe/Berlin")
    assert daily.next_after(utc(2026, 1, 5, 12)) == utc(2026, 1, 5, 23)
    assert parse_schedule("@every 5m").next_after(0) == 300 * NS


# --- next_after on the wall clock ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        ("@hourly", utc(2026, 1, 5, 10, 20), utc(2026, 1, 5, 11)),
        ("@hourly", utc(2026, 1, 5, 11), utc(2026, 1, 5, 12)),
        ("@hourly", utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1)),
        ("@daily", utc(2026, 1, 5, 10, 20), utc(2026, 1, 6)),
        ("@daily", utc(2026, 1, 6), utc(2026, 1, 7)),
        ("@midnight", utc(2026, 2, 28, 23), utc(2026, 3, 1)),
        ("@weekly", utc(2026, 1, 5, 10), utc(2026, 1, 11)),  # Monday -> Sunday
        ("@weekly", utc(2026, 1, 10, 23, 59), utc(2026, 1, 11)),  # Saturday
        ("@weekly", utc(2026, 1, 11), utc(2026, 1, 18)),  # Sunday midnight itself
        ("@weekly", utc(2026, 1, 11, 12), utc(2026, 1, 18)),
        ("@monthly", utc(2026, 1, 1), utc(2026, 2, 1)),
        ("@monthly", utc(2026, 1, 31, 12), utc(2026, 2, 1)),
        ("@monthly", utc(2026, 2, 28, 12), utc(2026, 3, 1)),
        ("@monthly", utc(2028, 2, 28, 12), utc(2028, 3, 1)),  # leap year: Feb 29 comes first
        ("@monthly", utc(2028, 2, 29, 23, 59), utc(2028, 3, 1)),
        ("@monthly", utc(2026, 12, 15), utc(2027, 1, 1)),
        ("@yearly", utc(2026, 6, 1), utc(2027, 1, 1)),
        ("@yearly", utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1), utc(2028, 1, 1)),
        ("*/15 * * * *", utc(2026, 1, 5, 10, 7), utc(2026, 1, 5, 10, 15)),
        ("*/15 * * * *", utc(2026, 1, 5, 10, 15), utc(2026, 1, 5, 10, 30)),
        ("*/15 * * * *", utc(2026, 1, 5, 10, 59, 59), utc(2026, 1, 5, 11)),
        ("0 9 * * 1-5", utc(2026, 1, 9, 9), utc(2026, 1, 12, 9)),  # Friday -> Monday
        ("0 9 * * 1-5", utc(2026, 1, 10, 12), utc(2026, 1, 12, 9)),  # Saturday -> Monday
    ],
)
def test_next_after_in_utc(spec: str, after: int, expected: int) -> None:
    assert parse_schedule(spec).next_after(after) == expected


def test_next_after_is_strictly_after_with_sub_second_instants() -> None:
    daily = parse_schedule("@daily")
    midnight = utc(2026, 1, 6)
    assert daily.next_after(midnight - 1) == midnight
    assert daily.next_after(midnight) == midnight + 86400 * NS
    assert daily.next_after(midnight + 1) == midnight + 86400 * NS
    cron = parse_schedule("*/15 * * * *")
    assert cron.next_after(midnight - 1) == midnight
    assert cron.next_after(midnight + 999_999_999) == midnight + 900 * NS


def test_hourly_in_a_half_hour_offset_zone() -> None:
    hourly = parse_schedule("@hourly", "Asia/Kolkata")
    instant = utc(2026, 1, 5, 10)
    runs = []
    for _ in range(3):
        instant = hourly.next_after(instant)
        runs.append(instant)
    assert runs == [utc(2026, 1, 5, 10, 30), utc(2026, 1, 5, 11, 30), utc(2026, 1, 5, 12, 30)]


def test_weekly_lands_on_sunday_midnight_local() -> None:
    weekly = parse_schedule("@weekly", "Europe/Berlin")
    instant = utc(2026, 3, 1)
    for _ in range(10):  # across the spring-forward Sunday
        instant = weekly.next_after(instant)
        wall = local(instant, "Europe/Berlin")
        assert (wall.weekday(), wall.hour, wall.minute) == (6, 0, 0)


def test_cron_weekdays_across_a_weekend_in_new_york() -> None:
    schedule = parse_schedule("0 9 * * 1-5", "America/New_York")
    assert schedule.next_after(utc(2026, 1, 9, 14)) == utc(2026, 1, 12, 14)  # 09:00 EST


# --- daylight-saving changes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (utc(2026, 3, 28), utc(2026, 3, 28, 1, 30)),  # 02:30 CET, the day before
        (utc(2026, 3, 29), utc(2026, 3, 29, 1)),  # 02:30 does not exist: 03:00 CEST
        (utc(2026, 3, 29, 0, 59, 59), utc(2026, 3, 29, 1)),
        (utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)),  # 02:30 CEST, the day after
        (utc(2026, 10, 24), utc(2026, 10, 24, 0, 30)),  # 02:30 CEST
        (utc(2026, 10, 25), utc(2026, 10, 25, 0, 30)),  # the first 02:30 (CEST)
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),  # not the second 02:30 (CET)
        (utc(2026, 10, 25, 1, 10), utc(2026, 10, 26, 1, 30)),  # inside the second pass
        (utc(2026, 10, 25, 1, 30), utc(2026, 10, 26, 1, 30)),
    ],
)
@pytest.mark.parametrize(
    ("spec", "zone"),
    [("30 2 * * *", "Europe/Berlin"), ("CRON_TZ=Europe/Berlin 30 2 * * *", None)],
)
def test_berlin_dst(spec: str, zone: str | None, after: int, expected: int) -> None:
    assert parse_schedule(spec, zone).next_after(after) == expected


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        # Spring 2026-03-08: 02:00 EST jumps to 03:00 EDT, so 02:30 is 03:00 EDT.
        ("30 2 * * *", utc(2026, 3, 8), utc(2026, 3, 8, 7)),
        ("30 2 * * *", utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)),
        # Fall 2026-11-01: the repeated hour is 01:00-02:00, so 02:30 (EST) occurs once.
        ("30 2 * * *", utc(2026, 11, 1), utc(2026, 11, 1, 7, 30)),
        ("30 1 * * *", utc(2026, 11, 1), utc(2026, 11, 1, 5, 30)),  # the first 01:30 (EDT)
        ("30 1 * * *", utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),
        ("30 1 * * *", utc(2026, 11, 1, 6, 10), utc(2026, 11, 2, 6, 30)),
    ],
)
def test_new_york_dst(spec: str, after: int, expected: int) -> None:
    assert parse_schedule(spec, "America/New_York").next_after(after) == expected


def test_gap_collapses_the_runs_inside_it() -> None:
    quarterly = parse_schedule("*/15 * * * *", "Europe/Berlin")
    runs = [utc(2026, 3, 29, 0, 30)]
    for _ in range(4):
        runs.append(quarterly.next_after(runs[-1]))
    # 01:45 CET; 02:00-02:45 do not exist and collapse into one run at 03:00 CEST; 03:15 CEST.
    assert runs[1:] == [
        utc(2026, 3, 29, 0, 45),
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 1, 15),
        utc(2026, 3, 29, 1, 30),
    ]


def test_hourly_expects_the_repeated_hour_once() -> None:
    hourly = parse_schedule("@hourly", "Europe/Berlin")
    runs = [utc(2026, 10, 24, 23, 30)]
    for _ in range(3):
        runs.append(hourly.next_after(runs[-1]))
    # 02:00 CEST, then 03:00 CET: 02:00 CET (01:00 UTC) is the repeated 02:00.
    assert runs[1:] == [utc(2026, 10, 25), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)]


@pytest.mark.parametrize(
    ("zone", "day", "after", "expected", "next_expected"),
    [
        # Clocks go from 00:00 CST to 01:00 CDT; the run is expected at 01:00 CDT.
        (
            "America/Havana",
            datetime(2026, 3, 8),
            utc(2026, 3, 7, 12),
            utc(2026, 3, 8, 5),
            utc(2026, 3, 9, 4),
        ),
        # Clocks go from 00:00 -04 to 01:00 -03.
        (
            "America/Santiago",
            datetime(2026, 9, 6),
            utc(2026, 9, 5, 12),
            utc(2026, 9, 6, 4),
            utc(2026, 9, 7, 3),
        ),
    ],
)
def test_daily_when_midnight_does_not_exist(
    zone: str, day: datetime, after: int, expected: int, next_expected: int
) -> None:
    assert nonexistent(day, zone)
    daily = parse_schedule("@daily", zone)
    assert daily.next_after(after) == expected
    assert local(expected, zone) == day.replace(hour=1, tzinfo=ZoneInfo(zone))
    assert daily.next_after(expected) == next_expected


# --- grace -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "grace"),
    [
        ("@every 2m", 12.0),
        ("@every 5s", MIN_GRACE_SECONDS),
        ("@every 1s", 1.0),
        ("@every 30m", 180.0),
        ("@every 50m", MAX_GRACE_SECONDS),
        ("@daily", 300.0),
        ("@yearly", 300.0),
        ("*/5 9-17 * * *", 30.0),
        ("*/15 * * * *", 90.0),
    ],
)
def test_default_grace(spec: str, grace: float) -> None:
    assert parse_schedule(spec).default_grace() == pytest.approx(grace)


# -- missed slots: what the registry's missed deadline counts (tests/test_schedules.py runs the
# same cases through a monitor with a fake clock) ---------------------------------------------

T0 = utc(2026, 1, 1)
MINUTE = 60 * NS


def test_a_slot_set_by_an_integration_is_missed_alone() -> None:
    assert missed_slots(None, T0 + MINUTE, 60.0, 6 * NS, 1e6, T0 + 10**6 * NS) == MissedSlots(
        1, T0 + MINUTE, None, None
    )


def test_an_interval_slot_missed_at_its_deadline() -> None:
    schedule = parse_schedule("@every 1m")
    assert missed_slots(schedule, T0 + MINUTE, 60.0, 6 * NS, 66.0, T0 + 66 * NS) == MissedSlots(
        1, T0 + MINUTE, T0 + 2 * MINUTE, 120.0
    )


def test_interval_slots_that_passed_while_the_host_slept_are_counted() -> None:
    minutely = parse_schedule("@every 1m")
    # The 60 min slot is still within its grace (6 s).
    assert missed_slots(minutely, T0 + MINUTE, 60.0, 6 * NS, 3600.0, T0 + 60 * MINUTE) == (
        MissedSlots(59, T0 + 59 * MINUTE, T0 + 60 * MINUTE, 3600.0)
    )
    every_second = parse_schedule("@every 1s")
    assert missed_slots(every_second, T0 + NS, 1.0, NS, 7200.0, T0 + 7200 * NS) == MissedSlots(
        7199, T0 + 7199 * NS, T0 + 7200 * NS, 7200.0
    )


def test_interval_slots_are_counted_on_the_monotonic_clock_with_float_noise_allowed() -> None:
    schedule = parse_schedule("@every 1m")
    # The wall clock says a day passed; the monotonic clock (what intervals use) says not.
    assert missed_slots(schedule, T0 + MINUTE, 60.0, 6 * NS, 66.0, T0 + 1440 * MINUTE).missed == 1
    # A hair before the next slot's deadline is that deadline: counted.
    assert missed_slots(schedule, T0 + MINUTE, 60.0, 6 * NS, 126.0 - 1e-7, T0).missed == 2
    assert missed_slots(schedule, T0 + MINUTE, 60.0, 6 * NS, 126.0 - 1e-3, T0).missed == 1


def test_calendar_slots_are_counted_on_the_wall_clock() -> None:
    hourly = parse_schedule("@hourly")
    grace_ns = int(hourly.default_grace() * NS)
    hour = 60 * MINUTE
    # The 24 h slot is still within its grace; the monotonic clock is not read.
    assert missed_slots(hourly, T0 + hour, -1.0, grace_ns, -1.0, T0 + 24 * hour) == MissedSlots(
        23, T0 + 23 * hour, T0 + 24 * hour, None
    )
    assert missed_slots(hourly, T0 + hour, 0.0, grace_ns, 0.0, T0 + hour + grace_ns) == (
        MissedSlots(1, T0 + hour, T0 + 2 * hour, None)
    )


def test_a_year_of_missed_cron_slots_is_counted_exactly() -> None:
    pytest.importorskip("croniter")
    cron = parse_schedule("* * * * *")
    year = 365 * 24 * 60 * MINUTE
    assert missed_slots(cron, T0 + MINUTE, 0.0, 6 * NS, 0.0, T0 + year) == MissedSlots(
        365 * 24 * 60 - 1, T0 + year - MINUTE, T0 + year, None
    )
