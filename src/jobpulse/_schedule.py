"""Schedules: when a job's next run is expected, so a run that did not start can be flagged.

`parse_schedule` accepts robfig/cron (Go) style specs: ``@every 1h30m`` (a Go duration, plus
``d`` for days of 24 hours: ``@every 1d``; at most 366 days); the descriptors
``@hourly``, ``@daily`` (``@midnight``), ``@weekly`` (Sunday 00:00), ``@monthly`` (the 1st,
00:00) and ``@yearly`` (``@annually``); a 5-field cron expression (needs croniter); a plain
interval in seconds or as a `timedelta`; and a ``CRON_TZ=<zone>`` or ``TZ=<zone>`` prefix.

An interval's next run is always ``interval`` after the instant asked about. Calendar schedules
(descriptors and cron) follow the wall clock of their time zone (UTC unless given), so the
rules for daylight-saving changes are:

* A wall time that does not exist (the clocks jump over it) is expected at the first instant
  after the gap. A job at 02:30 daily in Europe/Berlin is expected on 2026-03-29, the
  spring-forward night, at 03:00 CEST (01:00 UTC).
* A wall time that occurs twice (the clocks fall back) is expected once, at its first
  occurrence. In Europe/Berlin on 2026-10-25, 02:30 occurs twice; the run is expected at the
  first 02:30 (CEST, 00:30 UTC), and the one after that on 2026-10-26 at 02:30 CET (01:30 UTC).
  A scheduler that runs the job twice just produces an extra run; one that runs it once raises
  no false alarm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from datetime import timezone as _timezone
from itertools import pairwise
from typing import NamedTuple, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobpulse._exceptions import InvalidJobError
from jobpulse._validation import DURATION_UNITS, MAX_DURATION_NS, duration_ns

__all__ = [
    "EPSILON_SECONDS",
    "MAX_GRACE_SECONDS",
    "MIN_GRACE_SECONDS",
    "MissedSlots",
    "Schedule",
    "missed_slots",
    "parse_schedule",
]

MIN_GRACE_SECONDS = 1.0
MAX_GRACE_SECONDS = 300.0
#: Float noise allowed when comparing monotonic times that should be equal.
EPSILON_SECONDS = 1e-6

_NS = 1_000_000_000
_DAY_NS = 86400 * _NS
_EPOCH = datetime(1970, 1, 1, tzinfo=_timezone.utc)
# A fixed (naive) start, so that a cron schedule's period does not depend on when it was parsed.
_CRON_REFERENCE = datetime(2026, 1, 5)


class Schedule:
    """When a job's runs are expected. Immutable; equal (and hashed) by `text` and `timezone`.

    Make one with `parse_schedule`. `text` is the normalized spec as shown to users;
    `timezone` is the IANA name of the zone a calendar schedule follows (None for intervals);
    `period_seconds` is the typical time between runs. Safe to share between threads.
    """

    __slots__ = ("period_seconds", "text", "timezone")
    text: str
    timezone: str | None
    period_seconds: float

    def __init__(self, text: str, timezone: str | None, period_seconds: float) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "timezone", timezone)
        object.__setattr__(self, "period_seconds", period_seconds)

    def next_after(self, instant_ns: int) -> int:
        """The first expected run strictly after `instant_ns`; both are epoch nanoseconds (UTC)."""
        raise NotImplementedError

    def count_until(self, after_ns: int, until_ns: int) -> tuple[int, int | None]:
        """How many expected runs fall in ``(after_ns, until_ns]``, and the last of them
        (None if none). Computed, not stepped run by run: an interval by division, a
        calendar schedule a day at a time (so a year of a minutely cron costs a few hundred
        steps)."""
        raise NotImplementedError

    @property
    def is_interval(self) -> bool:
        """True for a constant interval (``@every``, seconds): it has no time zone."""
        return self.timezone is None

    def default_grace(self) -> float:
        """Seconds a run may be late before it counts as missed: 10% of the period, in [1, 300]."""
        return min(max(self.period_seconds * 0.1, MIN_GRACE_SECONDS), MAX_GRACE_SECONDS)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Schedule is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Schedule is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return (self.text, self.timezone) == (other.text, other.timezone)

    def __hash__(self) -> int:
        return hash((self.text, self.timezone))

    def __repr__(self) -> str:
        if self.timezone is None:
            return f"Schedule({self.text!r})"
        return f"Schedule({self.text!r}, timezone={self.timezone!r})"


class _IntervalSchedule(Schedule):
    __slots__ = ("_interval_ns",)
    _interval_ns: int

    def __init__(self, interval_ns: int) -> None:
        super().__init__(_format_interval(interval_ns), None, interval_ns / _NS)
        object.__setattr__(self, "_interval_ns", interval_ns)

    def next_after(self, instant_ns: int) -> int:
        return instant_ns + self._interval_ns

    def count_until(self, after_ns: int, until_ns: int) -> tuple[int, int | None]:
        count = max(until_ns - after_ns, 0) // self._interval_ns
        return count, after_ns + count * self._interval_ns if count else None


_Step = Callable[[datetime], datetime]  # naive wall time -> the next grid wall time after it


class _CalendarSchedule(Schedule):
    __slots__ = ("_per_day", "_step", "_zone")
    _step: _Step
    _zone: tzinfo
    _per_day: int

    def __init__(self, text: str, zone: tuple[str, tzinfo], period: float, step: _Step) -> None:
        super().__init__(text, zone[0], period)
        object.__setattr__(self, "_zone", zone[1])
        object.__setattr__(self, "_step", step)

    def next_after(self, instant_ns: int) -> int:
        # Whole seconds suffice: grid wall times are whole minutes.
        local = (_EPOCH + timedelta(seconds=instant_ns // _NS)).astimezone(self._zone)
        # fold=0, or a step from the repeated hour's second pass would carry fold=1 along.
        wall = local.replace(tzinfo=None, fold=0)
        while True:
            wall = self._step(wall)
            # After a fall-back, the first occurrence of the next wall time can be in the past.
            candidate = _resolve(wall, self._zone)
            if candidate > instant_ns:
                return candidate

    def count_until(self, after_ns: int, until_ns: int) -> tuple[int, int | None]:
        count, last = 0, None
        slot = self.next_after(after_ns)
        while slot <= until_ns:
            day_start, next_day = self._day_of(slot)
            if (
                next_day <= until_ns
                and slot == self.next_after(day_start - 1)  # the day's first run
                and not self._irregular(day_start, next_day)
            ):
                count += self._runs_per_day(day_start, next_day)  # the whole day at once
                last = None
                slot = self.next_after(next_day - 1)
                if slot > until_ns:  # the day just counted holds the last run
                    last = self._last_before(day_start, next_day)
                continue
            while slot <= until_ns and slot < next_day:  # a part of a day: run by run
                count, last = count + 1, slot
                slot = self.next_after(slot)
        return count, last

    def _day_of(self, instant_ns: int) -> tuple[int, int]:
        """The instants where the local day of `instant_ns` starts and the next one does."""
        local = (_EPOCH + timedelta(seconds=instant_ns // _NS)).astimezone(self._zone)
        day = datetime(local.year, local.month, local.day)
        return _resolve(day, self._zone), _resolve(day + timedelta(days=1), self._zone)

    def _irregular(self, start_ns: int, end_ns: int) -> bool:
        """Whether the day is not 24 hours of one offset: its runs may differ from a plain
        day's. A day that begins with a gap (clocks that spring forward at midnight) is an
        hour short with one offset throughout."""

        def offset(ns: int) -> timedelta | None:
            return (_EPOCH + timedelta(seconds=ns // _NS)).astimezone(self._zone).utcoffset()

        return end_ns - start_ns != _DAY_NS or offset(start_ns) != offset(end_ns - _NS)

    def _runs_per_day(self, start_ns: int, end_ns: int) -> int:
        # The same on every day that has runs and is regular: the days differ only in
        # whether they have runs at all. Found once by stepping through one such day.
        try:
            return self._per_day
        except AttributeError:
            count, slot = 0, self.next_after(start_ns - 1)
            while slot < end_ns:
                count, slot = count + 1, self.next_after(slot)
            object.__setattr__(self, "_per_day", count)
            return count

    def _last_before(self, start_ns: int, end_ns: int) -> int:
        last = slot = self.next_after(start_ns - 1)
        while slot < end_ns:
            last, slot = slot, self.next_after(slot)
        return last


class MissedSlots(NamedTuple):
    """The slots a missed deadline passed: how many (at least the one it was armed for),
    the last of them (epoch ns), and the slot expected next (epoch ns, or None: none until
    a run or an integration sets one) with when it is due on the monotonic clock (None:
    as far from now as the slot is from the wall clock's now)."""

    missed: int
    last_ns: int
    next_slot_ns: int | None
    next_due: float | None


def missed_slots(
    schedule: Schedule | None, slot_ns: int, due: float, grace_ns: int, now: float, now_ns: int
) -> MissedSlots:
    """The slots missed when the deadline of the slot `slot_ns` passes: `due` is when that
    slot was due on the monotonic clock, `grace_ns` how late its run could start, and `now`
    and `now_ns` the monotonic and wall clocks' now.

    Without a schedule (a slot an integration set, which sets the next one): that slot only.
    An interval: every period that passed since (a suspended host), counted, not looped, on
    the monotonic clock. A calendar schedule: every slot up to ``now_ns - grace_ns`` on the
    wall clock, by `Schedule.count_until` (cron arithmetic is slow: call it with no lock
    held). Pure; never raises for a parsed schedule."""
    if schedule is None:
        return MissedSlots(1, slot_ns, None, None)
    if schedule.is_interval:
        period, step_ns = schedule.period_seconds, schedule.next_after(0)
        extra = int((now - due - grace_ns / 1e9 + EPSILON_SECONDS) // period)
        last = slot_ns + extra * step_ns
        return MissedSlots(1 + extra, last, last + step_ns, due + (extra + 1) * period)
    more, last_more = schedule.count_until(slot_ns, now_ns - grace_ns)
    last = last_more or slot_ns
    return MissedSlots(1 + more, last, schedule.next_after(last), None)


def _resolve(wall: datetime, zone: tzinfo) -> int:
    """Epoch ns of a naive wall time: its first occurrence, or the end of the gap it falls in."""
    instant = wall.replace(tzinfo=zone).astimezone(_timezone.utc)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return _seconds(instant) * _NS
    # In a gap, the transition lies between the two interpretations of the wall time.
    low, high = sorted(_seconds(wall.replace(tzinfo=zone, fold=fold)) for fold in (0, 1))
    while high - low > 1:
        middle = (low + high) // 2
        if (_EPOCH + timedelta(seconds=middle)).astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high * _NS


def _seconds(instant: datetime) -> int:
    return (instant - _EPOCH) // timedelta(seconds=1)


def _next_hour(wall: datetime) -> datetime:
    return wall.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _next_day(wall: datetime) -> datetime:
    return datetime(wall.year, wall.month, wall.day) + timedelta(days=1)


def _next_sunday(wall: datetime) -> datetime:
    return datetime(wall.year, wall.month, wall.day) + timedelta(days=7 - (wall.weekday() + 1) % 7)


def _next_month(wall: datetime) -> datetime:
    return datetime(wall.year + wall.month // 12, wall.month % 12 + 1, 1)


def _next_year(wall: datetime) -> datetime:
    return datetime(wall.year + 1, 1, 1)


_DESCRIPTORS: dict[str, tuple[str, float, _Step]] = {
    "@hourly": ("@hourly", 3600.0, _next_hour),
    "@daily": ("@daily", 86400.0, _next_day),
    "@midnight": ("@daily", 86400.0, _next_day),
    "@weekly": ("@weekly", 604800.0, _next_sunday),
    "@monthly": ("@monthly", 2629746.0, _next_month),
    "@yearly": ("@yearly", 31556952.0, _next_year),
    "@annually": ("@yearly", 31556952.0, _next_year),
}


def parse_schedule(spec: object, timezone: object = None) -> Schedule:
    """Parse a schedule spec (see the module docstring); raise `InvalidJobError` if it is bad.

    `timezone` (an IANA name or a `zoneinfo.ZoneInfo`; None means UTC) is the zone whose wall
    clock a calendar schedule follows; an interval takes none. 5-field cron expressions need
    croniter and raise `ImportError` without it. Parsing a cron expression takes a few ms.
    """
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float, timedelta)):
        raise InvalidJobError(
            "schedule must be a str (cron expression or descriptor), seconds (int or float)"
            f" or a timedelta, not {type(spec).__name__}"
        )
    if not isinstance(spec, str):
        _refuse_timezone(timezone, spec)
        return _IntervalSchedule(_number_ns(spec))
    fields = spec.split()
    zone = None
    if fields and fields[0].startswith(("CRON_TZ=", "TZ=")):
        prefix = fields.pop(0)
        zone = _zone(prefix.partition("=")[2])
        if timezone is not None and _zone(timezone)[0] != zone[0]:
            raise InvalidJobError(
                f"timezone {timezone!r} conflicts with the {prefix!r} prefix of schedule {spec!r}"
            )
    if not fields:
        raise InvalidJobError(f"schedule must not be empty, got {spec!r}")
    if len(fields) == 1:
        _refuse_bare_duration(spec, fields[0])
    if fields[0] == "@every":
        _refuse_timezone(zone[0] if zone else timezone, spec)
        return _IntervalSchedule(_duration_ns(spec, " ".join(fields[1:])))
    zone = zone or _zone(timezone)
    text = " ".join(fields)
    if text in _DESCRIPTORS:
        canonical, period_seconds, step = _DESCRIPTORS[text]
        return _CalendarSchedule(canonical, zone, period_seconds, step)
    if text.startswith("@"):
        raise InvalidJobError(
            f"schedule {spec!r}: unknown descriptor; expected @every <duration>, @hourly,"
            " @daily, @midnight, @weekly, @monthly, @yearly or @annually"
        )
    if len(fields) != 5:
        raise InvalidJobError(
            f"schedule {spec!r}: a cron expression needs 5 fields (minute hour day-of-month"
            f" month day-of-week), got {len(fields)}"
        )
    return _cron_schedule(text, zone)


def _cron_schedule(text: str, zone: tuple[str, tzinfo]) -> Schedule:
    try:
        import croniter as cron
    except ImportError:
        message = "5-field cron schedules need croniter: pip install 'jobpulse[cron]'"
        raise ImportError(message) from None
    try:
        fires = cron.croniter(text, _CRON_REFERENCE)
        first = [fires.get_next(datetime) for _ in range(8)]
    except cron.CroniterBadDateError:
        raise InvalidJobError(f"schedule {text!r}: the cron expression never fires") from None
    except ValueError as exc:  # croniter's errors derive from ValueError
        raise InvalidJobError(f"schedule {text!r}: not a valid cron expression: {exc}") from None
    period_seconds = min((later - earlier).total_seconds() for earlier, later in pairwise(first))

    def step(wall: datetime) -> datetime:
        # A naive start keeps croniter on the wall clock, with no time zone logic of its own.
        return cron.croniter(text, wall).get_next(datetime)  # type: ignore[no-any-return]

    return _CalendarSchedule(text, zone, period_seconds, step)


def _zone(timezone: object) -> tuple[str, tzinfo]:
    """The IANA name and tzinfo for the `timezone` argument (None means UTC)."""
    if timezone is None or timezone is _timezone.utc or timezone == "UTC":
        # No tz database needed, so the default works on systems without one.
        return "UTC", _timezone.utc
    if isinstance(timezone, ZoneInfo) and timezone.key is not None:
        return timezone.key, timezone
    if isinstance(timezone, tzinfo):
        raise InvalidJobError(
            f"timezone {timezone!r} is not an IANA time zone; pass a name such as"
            " 'Europe/Berlin' or a zoneinfo.ZoneInfo"
        )
    if not isinstance(timezone, str):
        kind = type(timezone).__name__
        raise InvalidJobError(f"timezone must be an IANA name (str) or a ZoneInfo, not {kind}")
    try:
        return timezone, ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise InvalidJobError(
            f"timezone {timezone!r}: no such IANA time zone (if the name is right, time zone"
            " data may be missing: pip install tzdata)"
        ) from None


def _refuse_bare_duration(spec: str, field: str) -> None:
    if field.isascii() and field.isdigit():
        raise InvalidJobError(
            f"schedule {spec!r}: a number in a string is not a schedule; for a run every"
            f" {field} seconds, write '@every {field}s' or pass the number {field}"
        )
    if (duration_ns(field) or 0) > 0:
        raise InvalidJobError(
            f"schedule {spec!r}: a bare duration is not a schedule; for a run every {field},"
            f" write '@every {field}'"
        )


def _refuse_timezone(timezone: object, spec: object) -> None:
    if timezone is not None:
        raise InvalidJobError(
            f"timezone {timezone!r}: an interval schedule ({spec!r}) has no time zone;"
            " leave timezone as None"
        )


def _number_ns(spec: float | timedelta) -> int:
    if isinstance(spec, timedelta):
        return _at_least_a_second(spec // timedelta(microseconds=1) * 1000, spec)
    if isinstance(spec, float) and not math.isfinite(spec):
        raise InvalidJobError(f"schedule {spec!r}: the interval must be a finite number of seconds")
    return _at_least_a_second(round(spec * _NS), spec)


def _duration_ns(spec: str, duration: str) -> int:
    ns = duration_ns(duration)
    if ns is None:
        raise InvalidJobError(
            f"schedule {spec!r}: {duration!r} is not a Go duration such as '90s', '2m', '1h30m' or"
            f" '1d' (units: {DURATION_UNITS})"
        )
    return _at_least_a_second(ns, spec)


def _at_least_a_second(interval_ns: int, spec: object) -> int:
    if interval_ns < _NS:
        raise InvalidJobError(f"schedule {spec!r}: the interval must be at least 1s")
    if interval_ns > MAX_DURATION_NS:
        raise InvalidJobError(f"schedule {spec!r}: the interval must be at most 366 days")
    return interval_ns


def _format_interval(interval_ns: int) -> str:
    """Go style, without zero components: '@every 1h30m', '@every 2m', '@every 1.5s'."""
    hours, rest = divmod(interval_ns, 3600 * _NS)
    minutes, rest = divmod(rest, 60 * _NS)
    seconds, fraction = divmod(rest, _NS)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    if seconds or fraction:
        text += f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".") + "s"
    return f"@every {text}"
