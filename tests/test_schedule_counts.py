"""`Schedule.count_until`: the expected runs in a span of time, computed rather than stepped
through one by one, and equal to stepping through them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

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
