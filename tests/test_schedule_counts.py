"""`Schedule.count_until`: the expected runs in a span of time, computed rather than stepped
through one by one, and equal to stepping through them."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobpulse._model import to_ns
from jobpulse._schedule import Schedule, parse_schedule

pytest.importorskip("croniter")

NS = 1_000_000_000


def _stepped(schedule: Schedule, after_ns: int, until_ns: int) -> tuple[int, int | None]:
    count, last = 0, None
    slot = schedule.next_after(after_ns)
    while slot <= until_ns:
        count, last = count + 1, slot
        slot = schedule.next_after(slot)
    return count, last


@pytest.mark.parametrize(
    ("spec", "zone"),
    [
        ("@every 7m", None),
        ("@hourly", "Europe/Berlin"),
        ("@daily", "America/New_York"),
        ("@weekly", "UTC"),
        ("@monthly", "Australia/Lord_Howe"),  # a 30-minute daylight-saving shift
        ("*/15 * * * *", "Europe/Berlin"),
        ("30 2 * * *", "Europe/Berlin"),  # a wall time that one night skips, one repeats
        ("0 9-17 * * 1-5", "America/Sao_Paulo"),
        ("5 0 1,15 * *", "Asia/Kolkata"),
        ("0 0 29 2 *", "UTC"),
    ],
)
@pytest.mark.parametrize(
    ("start", "days"),
    [
        (datetime(2026, 3, 27, 13, 7, tzinfo=timezone.utc), 5),  # over the spring shift
        (datetime(2026, 10, 23, 23, 59, tzinfo=timezone.utc), 4),  # over the autumn shift
        (datetime(2026, 1, 1, tzinfo=timezone.utc), 60),
        (datetime(2027, 12, 31, 0, 30, tzinfo=timezone.utc), 1),
    ],
)
def test_counting_equals_stepping(spec: str, zone: str | None, start: datetime, days: int) -> None:
    schedule = parse_schedule(spec, zone)
    after_ns = to_ns(start)
    until_ns = after_ns + days * 86400 * NS + 17 * NS
    assert schedule.count_until(after_ns, until_ns) == _stepped(schedule, after_ns, until_ns)


def test_a_year_of_a_minutely_cron_is_counted_exactly() -> None:
    after = datetime(2026, 1, 1, tzinfo=timezone.utc)
    year = (to_ns(after), to_ns(after + timedelta(days=365)))
    count, last = parse_schedule("* * * * *").count_until(*year)
    assert (count, last) == (365 * 24 * 60, year[1])
    # In Berlin the hour that the spring night skips has no runs of its own (its wall times
    # are expected at 03:00, which runs anyway); the repeated autumn hour runs once.
    count, _ = parse_schedule("* * * * *", "Europe/Berlin").count_until(*year)
    assert count == 365 * 24 * 60 - 60


def test_nothing_to_count() -> None:
    schedule = parse_schedule("@every 1h")
    assert schedule.count_until(10 * NS, 10 * NS) == (0, None)
    assert schedule.count_until(10 * NS, 5 * NS) == (0, None)
    daily = parse_schedule("@daily")
    moment = to_ns(datetime(2026, 5, 5, 1, tzinfo=timezone.utc))
    assert daily.count_until(moment, moment + 3600 * NS) == (0, None)


#: Zones whose clocks spring forward at local midnight (00:00 -> 01:00), with a day before
#: that night: the day that begins with the gap has an hour less and no change of offset
#: within the day itself.
MIDNIGHT_GAPS = {
    "Atlantic/Azores": datetime(2026, 3, 28, tzinfo=timezone.utc),
    "America/Santiago": datetime(2026, 9, 5, tzinfo=timezone.utc),
    "America/Havana": datetime(2026, 3, 7, tzinfo=timezone.utc),
    "Asia/Beirut": datetime(2026, 3, 28, tzinfo=timezone.utc),
}


@pytest.mark.parametrize("zone", sorted(MIDNIGHT_GAPS))
@pytest.mark.parametrize("spec", ["@hourly", "*/15 * * * *", "0 0-2 * * *"])
def test_a_day_that_begins_with_a_gap_is_counted_run_by_run(spec: str, zone: str) -> None:
    schedule = parse_schedule(spec, zone)
    after_ns = to_ns(MIDNIGHT_GAPS[zone])
    until_ns = after_ns + 4 * 86400 * NS
    assert schedule.count_until(after_ns, until_ns) == _stepped(schedule, after_ns, until_ns)


def test_runs_per_day_are_not_learnt_from_a_short_day() -> None:
    # The first whole day counted is Azores' spring-forward day (23 hours, 23 hourly runs).
    schedule = parse_schedule("@hourly", "Atlantic/Azores")
    after_ns = to_ns(datetime(2026, 3, 29, 0, 0, tzinfo=timezone.utc)) - 1
    until_ns = after_ns + 30 * 86400 * NS
    assert schedule.count_until(after_ns, until_ns) == _stepped(schedule, after_ns, until_ns)


_ZONES = sorted(zoneinfo.available_timezones() - {"Factory", "localtime"})
_CRONS = st.builds(
    "{} {} {} {} {}".format,
    st.sampled_from(["0", "30", "*/20", "5,35", "59", "0,15,30,45"]),
    st.sampled_from(["*", "0", "0-3", "23", "1,2", "*/6", "2"]),
    st.sampled_from(["*", "1", "15", "29", "31"]),
    st.sampled_from(["*", "3", "10", "1-6"]),
    st.sampled_from(["*", "0", "6", "1-5"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=_CRONS | st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly"]),
    zone=st.sampled_from(sorted(MIDNIGHT_GAPS)) | st.sampled_from(_ZONES),
    start=st.datetimes(
        datetime(1990, 1, 1), datetime(2035, 12, 31), timezones=st.just(timezone.utc)
    ),
    seconds=st.integers(0, 20 * 86400),
)
@example(
    spec="@hourly",
    zone="Asia/Gaza",
    start=datetime(2014, 2, 28, 21, 19, 6, tzinfo=timezone.utc),
    seconds=3595898,
)
def test_counting_equals_stepping_for_any_cron_and_zone(
    spec: str, zone: str, start: datetime, seconds: int
) -> None:
    schedule = parse_schedule(spec, zone)
    after_ns = to_ns(start)
    until_ns = after_ns + seconds * NS
    assert schedule.count_until(after_ns, until_ns) == _stepped(schedule, after_ns, until_ns)
