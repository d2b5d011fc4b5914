"""Schedules and missed runs (decision 6) through the monitor, with a fake clock.

The fake clock starts at 2026-01-01 00:00 UTC. Each missed deadline fires inside
`FakeClock.advance`, exactly when it comes due.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from jobpulse import HealthStatus, InvalidJobError, JobMonitor, JobState, JobStatus
from jobpulse._model import to_ns
from jobpulse._registry import JobSettings
from jobpulse._schedule import Schedule
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, Otel, log_signal

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MISSED_METRIC = "background_job.missed_runs"


def status_of(monitor: JobMonitor, name: str) -> JobStatus:
    status = monitor.status(name)
    assert status is not None
    return status


def missed_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]


def test_interval_schedule_shows_and_advances_next_run(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("btc_transaction_indexing", schedule="@every 2m")
    status = status_of(monitor, "btc_transaction_indexing")
    assert status.state is JobState.PENDING
    assert status.schedule == "@every 2m"
    assert status.timezone is None
    assert status.grace_seconds == 12.0  # 10% of the period
    assert status.next_run_time == T0 + timedelta(minutes=2)

    clock.advance(120)
    with monitor.run("btc_transaction_indexing"):
        assert status_of(monitor, "btc_transaction_indexing").next_run_time == T0 + timedelta(
            minutes=4
        )
        clock.advance(3)
    status = status_of(monitor, "btc_transaction_indexing")
    # An interval also counts from the run's end (a loop may sleep between runs).
    assert status.next_run_time == T0 + timedelta(minutes=4, seconds=3)
    assert status.state is JobState.SUCCESS
    assert status.to_dict()["next_run_time"] == "2026-01-01T00:04:03.000Z"
    assert status.to_dict()["schedule"] == "@every 2m"
    assert status.to_dict()["grace_ms"] == 12000.0


def test_missed_exactly_at_next_run_plus_grace(
    monitor: JobMonitor, clock: FakeClock, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobpulse")
    monitor.register("swap_request_processing", schedule="@every 2m")
    clock.advance(132 - 0.001)
    assert status_of(monitor, "swap_request_processing").state is JobState.PENDING
    assert missed_warnings(caplog) == []

    clock.advance(0.001)
    status = status_of(monitor, "swap_request_processing")
    assert status.state is JobState.MISSED
    assert status.missed_count == 1
    assert status.last_missed_run_time == T0 + timedelta(minutes=2)
    assert status.next_run_time == T0 + timedelta(minutes=4)  # the next slot is awaited
    assert status.updated_at == clock.now()
    assert missed_warnings(caplog) == [
        "job 'swap_request_processing' missed its scheduled run at 2026-01-01T00:02:00+00:00: "
        "no run started within 12s (1 missed in a row)"
    ]
    assert caplog.records[-1].levelno == logging.WARNING
    assert otel.metrics()[MISSED_METRIC] == {(("job.name", "swap_request_processing"),): 1}
    report = monitor.health()
    assert report.status is HealthStatus.DEGRADED
    assert report.summary.missed_jobs == 1
    assert report.to_dict()["jobs"]["swap_request_processing"]["missed_count"] == 1


def test_a_critical_job_that_misses_is_unhealthy(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("btc_transaction_indexing", schedule=60, critical=True)
    clock.advance(66)
    assert monitor.health().status is HealthStatus.UNHEALTHY
    assert monitor.health().http_status == 503


def test_each_missed_slot_is_counted_once(
    monitor: JobMonitor, clock: FakeClock, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobpulse")
    monitor.register("icy_transaction_indexing", schedule=timedelta(minutes=1))
    for _ in range(5 * 60):  # five minutes in 1 s steps: readers polling changes nothing
        clock.advance(1)
        monitor.health()
    status = status_of(monitor, "icy_transaction_indexing")
    # Slots at 1, 2, 3, 4 min passed their 6 s grace; the 5 min slot is still within it.
    assert status.missed_count == 4
    assert status.next_run_time == T0 + timedelta(minutes=5)
    assert otel.metrics()[MISSED_METRIC] == {(("job.name", "icy_transaction_indexing"),): 4}
    # Logged at 1, 2, 4 in a row: a dead scheduler does not flood the log.
    assert [m.rpartition("(")[2] for m in missed_warnings(caplog)] == [
        "1 missed in a row)",
        "2 missed in a row)",
        "4 missed in a row)",
    ]


def test_slots_that_passed_while_the_host_slept_are_counted_at_once(
    monitor: JobMonitor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobpulse")
    monitor.register("minutely", schedule="@every 1m")
    clock.advance(timedelta(hours=1))
    status = status_of(monitor, "minutely")
    assert status.missed_count == 59  # the 60 min slot is still within its grace
    assert status.next_run_time == T0 + timedelta(hours=1)
    assert len(missed_warnings(caplog)) == 1
    assert status.last_missed_run_time == T0 + timedelta(minutes=59)


def test_a_run_that_starts_clears_missed(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("btc_transaction_indexing", schedule="@every 2m", critical=True)
    clock.advance(150)
    assert monitor.health().status is HealthStatus.UNHEALTHY
    with monitor.run("btc_transaction_indexing"):
        assert status_of(monitor, "btc_transaction_indexing").state is JobState.RUNNING
        clock.advance(1)
    status = status_of(monitor, "btc_transaction_indexing")
    assert status.state is JobState.SUCCESS
    assert status.missed_count == 1  # the count is history; the state is now
    assert monitor.health().status is HealthStatus.HEALTHY
    # The next slot counts from the late run's end: 151 s + 2 min.
    assert status.next_run_time == T0 + timedelta(minutes=4, seconds=31)


def test_a_run_within_grace_before_the_slot_takes_it(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("early", schedule="@every 2m")
    clock.advance(115)  # 5 s early, grace 12 s
    with monitor.run("early"):
        pass
    assert status_of(monitor, "early").next_run_time == T0 + timedelta(minutes=4)
    clock.advance(60)
    assert status_of(monitor, "early").state is JobState.SUCCESS


def test_an_extra_run_ahead_of_the_slot_leaves_it_expected(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("manual", schedule="*/2 * * * *")  # calendar slots do not move
    clock.advance(60)
    with monitor.run("manual"):  # someone ran it by hand
        pass
    assert status_of(monitor, "manual").next_run_time == T0 + timedelta(minutes=2)
    clock.advance(72)
    assert status_of(monitor, "manual").state is JobState.MISSED


def test_a_slot_passing_during_a_long_run_is_not_missed(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("long", schedule="@every 1m", stall_after=600)
    clock.advance(60)
    with monitor.run("long"):
        clock.advance(150)  # the 2 and 3 min slots pass while it runs
        status = status_of(monitor, "long")
        assert status.state is JobState.RUNNING
        assert status.missed_count == 0
        assert status.next_run_time == T0 + timedelta(minutes=4)
    assert status_of(monitor, "long").state is JobState.SUCCESS


def test_default_and_explicit_grace(monitor: JobMonitor) -> None:
    monitor.register("fast", schedule="@every 5s")
    monitor.register("daily", schedule="@daily")
    monitor.register("custom", schedule="@every 10m", grace=timedelta(seconds=30))
    assert status_of(monitor, "fast").grace_seconds == 1.0  # floor
    assert status_of(monitor, "daily").grace_seconds == 300.0  # cap
    assert status_of(monitor, "custom").grace_seconds == 30.0
    monitor.register("custom", grace=45)  # grace alone changes the awaited slot's deadline
    assert status_of(monitor, "custom").grace_seconds == 45.0


def test_changing_grace_moves_the_missed_deadline(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("job", schedule="@every 10m", grace=120)
    clock.advance(610)
    monitor.register("job", grace=5)  # its deadline is now in the past: due at once
    clock.advance(0)
    assert status_of(monitor, "job").state is JobState.MISSED


def test_cron_schedule_with_a_timezone(make_monitor: MonitorFactory) -> None:
    clock = FakeClock(datetime(2026, 6, 1, 12, tzinfo=timezone.utc))
    monitor = make_monitor(clock=clock)
    monitor.register("nightly_report", schedule="30 2 * * *", timezone="Europe/Berlin")
    status = status_of(monitor, "nightly_report")
    assert status.schedule == "30 2 * * *"
    assert status.timezone == "Europe/Berlin"
    assert status.grace_seconds == 300.0
    assert status.next_run_time == datetime(2026, 6, 2, 0, 30, tzinfo=timezone.utc)  # CEST
    monitor.register("nightly_report", timezone=ZoneInfo("America/New_York"))
    assert status_of(monitor, "nightly_report").next_run_time == datetime(
        2026, 6, 2, 6, 30, tzinfo=timezone.utc
    )


def test_dst_spring_forward_night_expects_the_run_at_the_end_of_the_gap(
    make_monitor: MonitorFactory,
) -> None:
    """Europe/Berlin, 2026-03-29: 02:00 jumps to 03:00, so 02:30 does not exist. The run is
    expected at 03:00 CEST (01:00 UTC), as croniter-driven schedulers fire it."""
    clock = FakeClock(datetime(2026, 3, 28, 12, tzinfo=timezone.utc))
    monitor = make_monitor(clock=clock)
    monitor.register("nightly_report", schedule="30 2 * * *", timezone="Europe/Berlin")
    expected = datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc)
    assert status_of(monitor, "nightly_report").next_run_time == expected
    clock.advance(expected - clock.now())
    with monitor.run("nightly_report"):
        pass
    status = status_of(monitor, "nightly_report")
    assert status.next_run_time == datetime(2026, 3, 30, 0, 30, tzinfo=timezone.utc)
    assert status.missed_count == 0


def test_dst_fall_back_night_expects_the_repeated_time_once(
    make_monitor: MonitorFactory,
) -> None:
    """Europe/Berlin, 2026-10-25: 03:00 goes back to 02:00, so 02:30 happens twice. The run
    is expected once, at the first 02:30 (CEST, 00:30 UTC); the second passes unremarked."""
    clock = FakeClock(datetime(2026, 10, 24, 12, tzinfo=timezone.utc))
    monitor = make_monitor(clock=clock)
    monitor.register("nightly_report", schedule="30 2 * * *", timezone="Europe/Berlin")
    first = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)
    assert status_of(monitor, "nightly_report").next_run_time == first
    clock.advance(first - clock.now())
    with monitor.run("nightly_report"):
        pass
    status = status_of(monitor, "nightly_report")
    assert status.next_run_time == datetime(2026, 10, 26, 1, 30, tzinfo=timezone.utc)  # CET
    clock.advance(timedelta(hours=2))  # past the second 02:30 (01:30 UTC) and its grace
    assert status_of(monitor, "nightly_report").state is JobState.SUCCESS
    assert status_of(monitor, "nightly_report").missed_count == 0


def test_a_scheduler_may_supply_the_next_run_time(
    monitor: JobMonitor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobpulse")
    monitor.set_next_run("aps_job", T0 + timedelta(minutes=1))  # registers the job
    status = status_of(monitor, "aps_job")
    assert status.next_run_time == T0 + timedelta(minutes=1)
    assert status.grace_seconds == 6.0  # a tenth of the wait
    assert status.schedule is None

    clock.advance(60)
    with monitor.run("aps_job"):
        pass
    assert status_of(monitor, "aps_job").next_run_time is None  # until the scheduler says
    monitor.set_next_run("aps_job", clock.now() + timedelta(minutes=1), grace=2)
    clock.advance(62)
    status = status_of(monitor, "aps_job")
    assert status.state is JobState.MISSED
    assert status.next_run_time is None
    assert status.missed_count == 1

    monitor.set_next_run("aps_job", None)  # paused: nothing is expected
    clock.advance(timedelta(days=2))
    assert status_of(monitor, "aps_job").missed_count == 1


def test_a_supplied_next_run_overrides_the_schedule_until_the_next_run(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("job", schedule="@every 10m")
    monitor.set_next_run("job", T0 + timedelta(minutes=3))
    clock.advance(180)
    with monitor.run("job"):
        pass
    assert status_of(monitor, "job").next_run_time == T0 + timedelta(minutes=13)


def test_set_next_run_rejects_naive_times(monitor: JobMonitor) -> None:
    with pytest.raises(InvalidJobError, match="timezone-aware"):
        monitor.set_next_run("job", datetime(2026, 1, 1, 12))
    with pytest.raises(InvalidJobError, match="grace"):
        monitor.set_next_run("job", T0, grace=-1)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("@every 500ms", "at least 1s"),
        ("@fortnightly", "@fortnightly"),
        ("61 * * * *", "61 * * * *"),
        ("* * * *", "5 fields"),
        ([60], "list"),
    ],
)
def test_invalid_schedules_fail_at_registration(
    monitor: JobMonitor, schedule: object, message: str
) -> None:
    with pytest.raises(ValueError, match="schedule") as caught:
        monitor.register("job", schedule=schedule)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert monitor.status("job") is None  # nothing half-registered


def test_timezone_needs_a_calendar_schedule(monitor: JobMonitor) -> None:
    with pytest.raises(InvalidJobError, match="needs a calendar schedule"):
        monitor.register("job", timezone="Europe/Berlin")
    monitor.register("interval", schedule=60)
    with pytest.raises(InvalidJobError, match="needs a calendar schedule"):
        monitor.register("interval", timezone="Europe/Berlin")
    with pytest.raises(InvalidJobError, match="timezone"):
        monitor.register("cron", schedule="@daily", timezone="Mars/Olympus_Mons")


def test_decorated_job_with_a_schedule(monitor: JobMonitor, clock: FakeClock) -> None:
    @monitor.job("hourly_sync", schedule="@hourly", critical=True)
    def sync() -> str:
        return "ok"

    assert status_of(monitor, "hourly_sync").next_run_time == T0 + timedelta(hours=1)
    clock.advance(3600)
    assert sync() == "ok"
    assert status_of(monitor, "hourly_sync").next_run_time == T0 + timedelta(hours=2)
    with pytest.raises(InvalidJobError, match="schedule"):
        monitor.job("bad", schedule="@sometimes")
    with pytest.raises(InvalidJobError, match="schedule"):

        @monitor.job(schedule="nope")
        def unnamed() -> None: ...


def test_registering_the_same_schedule_again_keeps_the_slot(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("job", schedule="@every 10m")
    clock.advance(300)
    monitor.register("job", schedule="@every 10m", critical=True)
    assert status_of(monitor, "job").next_run_time == T0 + timedelta(minutes=10)
    monitor.register("job", schedule="@every 20m")  # a new schedule starts from now
    assert status_of(monitor, "job").next_run_time == T0 + timedelta(minutes=25)


def test_scheduled_runs_carry_faas_attributes(monitor: JobMonitor, otel: Otel) -> None:
    monitor.register("cron_job", schedule="*/5 * * * *")
    with monitor.run("cron_job"):
        pass
    with monitor.run("ad_hoc"):
        pass
    scheduled, ad_hoc = otel.spans()
    assert scheduled.attributes is not None
    assert scheduled.attributes["faas.trigger"] == "timer"
    assert scheduled.attributes["faas.cron"] == "*/5 * * * *"
    assert ad_hoc.attributes is not None
    assert "faas.trigger" not in ad_hoc.attributes


def test_scheduled_jobs_are_never_dropped_while_registered(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("weekly", schedule="@weekly")
    monitor.register("unscheduled")
    clock.advance(timedelta(days=3))
    assert set(monitor.statuses()) == {"weekly"}
    clock.advance(timedelta(days=30))
    assert set(monitor.statuses()) == {"weekly"}
    assert monitor.unregister("weekly") is True
    assert monitor.unregister("weekly") is False
    clock.advance(timedelta(days=7))  # its deadlines find nothing to do
    assert monitor.statuses() == {}


def test_summary_counts_add_up(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("never_ran")
    monitor.register("missing", schedule=60)
    with monitor.run("ok"):
        pass
    with pytest.raises(RuntimeError), monitor.run("broken"):
        raise RuntimeError("boom")
    clock.advance(70)
    summary = monitor.summary().to_dict()
    parts = ("pending", "running", "healthy", "unhealthy", "stalled", "missed")
    assert sum(summary[f"{part}_jobs"] for part in parts) == summary["total_jobs"] == 4
    assert summary["missed_jobs"] == 1
    assert summary["pending_jobs"] == 1


def test_missed_detected_by_the_real_watchdog_thread(make_monitor: MonitorFactory) -> None:
    """With the system clock, the watchdog thread flags the slot soon after its deadline."""
    monitor = make_monitor(clock=None)
    with log_signal("missed") as flagged:
        deadline = time.monotonic() + 0.1
        when = datetime.now(timezone.utc) + timedelta(seconds=0.05)
        monitor.set_next_run("late", when, grace=0.05)
        assert flagged.wait(10), "the watchdog never flagged the missed run"
        latency = time.monotonic() - deadline
    assert latency >= -0.01  # never early (allowing for the two clocks read apart)
    assert status_of(monitor, "late").state is JobState.MISSED


def test_concurrent_runs_of_a_scheduled_job(make_monitor: MonitorFactory) -> None:
    """Threads racing through slot changes on the real clock: exact counts, nothing missed."""
    monitor = make_monitor(clock=None)
    monitor.register("busy", schedule=1)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(200):
            with monitor.run("busy"):
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = status_of(monitor, "busy")
    assert status.success_count == status.history_runs == 1600
    assert status.active_runs == 0
    assert status.missed_count == 0
    assert status.next_run_time is not None
    assert status.next_run_time > status.last_run_time  # type: ignore[operator]


def test_every_overdue_slot_is_counted_after_a_suspend(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("every_second", schedule="@every 1s")
    clock.advance(timedelta(hours=2))  # one step: the watchdog wakes once, two hours late
    status = status_of(monitor, "every_second")
    assert status.missed_count == 7199  # every slot whose grace (1 s) ran out
    assert status.next_run_time == clock.now()  # the slot at the moment of waking
    assert status.last_missed_run_time == clock.now() - timedelta(seconds=1)


def test_a_year_of_missed_slots_is_counted_exactly(monitor: JobMonitor, clock: FakeClock) -> None:
    pytest.importorskip("croniter")
    monitor.register("minutely", schedule="@every 1m")
    monitor.register("cron", schedule="* * * * *")
    clock.advance(timedelta(days=365))
    # Slots at every minute; the grace is 6 s (10% of the period): the last one is still due.
    assert status_of(monitor, "minutely").missed_count == 365 * 24 * 60 - 1
    assert status_of(monitor, "cron").missed_count == 365 * 24 * 60 - 1


class Interfering(Schedule):
    """A one-minute interval whose arithmetic lets another change land while it computes, as
    another thread's would (the registry computes slots outside its lock)."""

    __slots__ = ("interfere",)
    interfere: Callable[[], None] | None

    def __init__(self) -> None:
        super().__init__("@every 1m", None, 60.0)
        object.__setattr__(self, "interfere", None)

    def next_after(self, instant_ns: int) -> int:
        if self.interfere is not None:
            self.interfere()
        return instant_ns + 60 * 1_000_000_000


def test_a_slot_computed_while_the_slot_changed_is_discarded(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    registry = monitor._registry
    schedule = Interfering()
    supplied = T0 + timedelta(minutes=30)
    object.__setattr__(schedule, "interfere", lambda: registry.set_next_run("job", to_ns(supplied)))
    registry.register("job", JobSettings(schedule=schedule))
    assert status_of(monitor, "job").next_run_time == supplied  # the newer one wins

    later = T0 + timedelta(hours=2)
    object.__setattr__(schedule, "interfere", lambda: registry.set_next_run("job", to_ns(later)))
    clock.advance(timedelta(minutes=31))  # the missed check computes while the slot moves
    status = status_of(monitor, "job")
    assert status.state is JobState.PENDING
    assert status.next_run_time == later


def test_deadlines_of_unregistered_jobs_do_nothing(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("gone", stall_after=10, schedule=60)
    with monitor.run("gone"):
        monitor.unregister("gone")
        clock.advance(100)  # its stall and missed deadlines come due
    monitor._registry.set_next_run("gone", 0)  # ignored: not registered
    assert monitor.status("gone") is None


def test_a_next_run_centuries_away_does_not_stop_the_watchdog(
    make_monitor: MonitorFactory,
) -> None:
    monitor = make_monitor(clock=None, stall_after=0.05)
    monitor.set_next_run("far", datetime(9999, 1, 1, tzinfo=timezone.utc))
    with log_signal("stalled") as flagged, monitor.run("hang"):
        assert flagged.wait(10), "the watchdog thread died"


def test_a_loop_that_sleeps_between_runs_is_not_late(monitor: JobMonitor, clock: FakeClock) -> None:
    """``while True: job(); sleep(120)`` starts runs 120 s after the previous one ended: the
    interval counts from the end too, so a 60 s run (longer than the 12 s grace) is fine."""
    monitor.register("sleeper", schedule="@every 2m")
    clock.advance(120)
    for _ in range(10):
        with monitor.run("sleeper"):
            clock.advance(60)
        assert status_of(monitor, "sleeper").next_run_time == clock.now() + timedelta(minutes=2)
        clock.advance(120)
    assert status_of(monitor, "sleeper").missed_count == 0


def test_a_fixed_rate_scheduler_with_long_runs_is_not_late(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    """Runs start every 120 s and last 60 s. When they stop, the job is missed one interval
    plus grace after the last run ended."""
    monitor.register("fixed_rate", schedule="@every 2m")
    for _ in range(10):
        clock.advance(60)
        with monitor.run("fixed_rate"):
            clock.advance(60)
    assert status_of(monitor, "fixed_rate").missed_count == 0
    last_end = clock.now()
    clock.advance(132 - 0.001)
    assert status_of(monitor, "fixed_rate").state is JobState.SUCCESS
    clock.advance(0.001)
    status = status_of(monitor, "fixed_rate")
    assert status.state is JobState.MISSED
    assert status.last_missed_run_time == last_end + timedelta(minutes=2)


@pytest.mark.parametrize("seed", range(5))
def test_random_loops_within_interval_plus_grace_are_never_missed(
    monitor: JobMonitor, clock: FakeClock, seed: int
) -> None:
    """Runs of any length (some longer than the interval), each starting less than
    interval + grace after the previous one ended: never missed. Once they stop, the job is
    missed within two intervals plus grace."""
    rng = random.Random(seed)
    monitor.register("loop", schedule="@every 2m")  # grace 12 s
    for _ in range(300):
        clock.advance(rng.uniform(0, 131.9))
        with monitor.run("loop"):
            clock.advance(rng.choice((rng.uniform(0, 5), rng.uniform(0, 300))))
        assert status_of(monitor, "loop").missed_count == 0
    clock.advance(252)
    assert status_of(monitor, "loop").state is JobState.MISSED


def test_a_run_recorded_late_counts_from_when_it_ran(monitor: JobMonitor, clock: FakeClock) -> None:
    """record_run() of a run that ran hours ago: its start and end are in the past on the
    monotonic clock too, so the slot after it is not pushed a period past now, and it does
    not clear the slots missed after it."""
    monitor.register("hourly", schedule="@every 1h")
    clock.advance(3 * 3600)  # slots 01:00 and 02:00 missed; 03:00 is due now
    assert status_of(monitor, "hourly").state is JobState.MISSED
    now = T0 + timedelta(hours=3)
    monitor.record_run(
        "hourly", start=now - timedelta(hours=2), end=now - timedelta(hours=2, seconds=-5)
    )
    status = status_of(monitor, "hourly")
    assert status.state is JobState.MISSED  # a run of 01:00 does not make 02:00 less missed
    assert status.next_run_time == now
    assert status.success_count == 1
    clock.advance(300)  # 03:00's grace
    status = status_of(monitor, "hourly")
    assert (status.state, status.next_run_time) == (JobState.MISSED, now + timedelta(hours=1))

    # A late run after the last missed slot is the job's latest news: not missed any more,
    # and the next slot is an hour after its end (at 03:04:10), still ahead of now.
    monitor.record_run(
        "hourly", start=now + timedelta(seconds=240), end=now + timedelta(seconds=250)
    )
    status = status_of(monitor, "hourly")
    assert status.state is JobState.SUCCESS
    assert status.next_run_time == now + timedelta(hours=1, seconds=250)
    clock.advance(3600 + 250 - 1)  # 04:09:09, within the grace of 04:04:10
    assert status_of(monitor, "hourly").state is JobState.SUCCESS
    clock.advance(2)
    assert status_of(monitor, "hourly").state is JobState.MISSED
