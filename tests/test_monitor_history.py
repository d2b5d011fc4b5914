"""Run history, percentiles, the 24-hour window and ``stall_after="auto"``, through the monitor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from opentelemetry.trace import Status, StatusCode

from jobpulse import JobMonitor, JobState, JobStatus, RunRecord
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, Otel, in_own_context

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def status_of(monitor: JobMonitor, name: str) -> JobStatus:
    status = monitor.status(name)
    assert status is not None
    return status


def run_for(monitor: JobMonitor, clock: FakeClock, name: str, seconds: float) -> None:
    with monitor.run(name):
        clock.advance(seconds)


def fail_after(monitor: JobMonitor, clock: FakeClock, name: str, seconds: float) -> None:
    try:
        with monitor.run(name):
            clock.advance(seconds)
            raise ConnectionError("connection refused")
    except ConnectionError:
        pass


def test_history_is_newest_first_with_outcome_and_category(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    run_for(monitor, clock, "sync", 2)
    clock.advance(60)
    fail_after(monitor, clock, "sync", 0.5)
    clock.advance(60)
    run_for(monitor, clock, "sync", 1)
    history = monitor.history("sync")
    assert history == [
        RunRecord(T0 + timedelta(seconds=122.5), 1.0, JobState.SUCCESS, None),
        RunRecord(T0 + timedelta(seconds=62), 0.5, JobState.FAILED, "network"),
        RunRecord(T0, 2.0, JobState.SUCCESS, None),
    ]
    assert history[1].to_dict() == {
        "started_at": "2026-01-01T00:01:02.000Z",
        "duration_ms": 500.0,
        "outcome": "failed",
        "error_category": "network",
    }
    assert monitor.history("unknown") == []
    monitor.register("never_ran")
    assert monitor.history("never_ran") == []


def test_history_with_a_limit_is_the_runs_that_ended_last(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    for seconds in (1, 2, 3, 4):
        run_for(monitor, clock, "sync", seconds)
        clock.advance(10)
    everything = monitor.history("sync")
    assert [record.duration_seconds for record in everything] == [4.0, 3.0, 2.0, 1.0]
    assert monitor.history("sync", limit=2) == everything[:2]
    assert monitor.history("sync", limit=10) == everything
    assert monitor.history("sync", limit=0) == []
    assert monitor.history("unknown", limit=3) == []
    with pytest.raises(ValueError, match="limit must be at least 0"):
        monitor.history("sync", limit=-1)


def test_percentiles_and_success_rate(monitor: JobMonitor, clock: FakeClock) -> None:
    for i in range(1, 101):  # 1 s .. 100 s, every 10th run fails
        if i % 10 == 0:
            fail_after(monitor, clock, "etl", i)
        else:
            run_for(monitor, clock, "etl", i)
    status = status_of(monitor, "etl")
    assert status.history_runs == 100
    assert status.success_rate == 0.9
    for value, exact in (
        (status.p50_duration_seconds, 50),
        (status.p95_duration_seconds, 95),
        (status.p99_duration_seconds, 99),
    ):
        assert value is not None
        assert abs(value - exact) / exact <= 0.05
    document = status.to_dict()
    assert document["success_rate"] == 0.9
    assert abs(document["p95_duration_ms"] - 95_000) <= 0.05 * 95_000
    assert document["history_runs"] == 100
    assert document["history_dropped"] == 0


def test_constant_durations_give_exact_percentiles(monitor: JobMonitor, clock: FakeClock) -> None:
    for _ in range(10):
        run_for(monitor, clock, "steady", 1.5)
    status = status_of(monitor, "steady")
    assert status.p50_duration_seconds == status.p99_duration_seconds == 1.5
    assert status.success_rate == 1.0


def test_a_job_without_runs_has_no_percentiles(monitor: JobMonitor) -> None:
    monitor.register("fresh")
    status = status_of(monitor, "fresh")
    assert status.p95_duration_seconds is None
    assert status.success_rate is None
    assert status.to_dict()["p95_duration_ms"] is None
    assert status.history_runs == 0


def test_history_older_than_24_hours_is_dropped(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("hourly", schedule="@hourly")  # scheduled: the job itself stays
    for _ in range(30):
        clock.advance(3600 - 10)
        run_for(monitor, clock, "hourly", 10)
    # 30 runs, ending on the hour; those that ended more than 24 h ago (before 06:00) are gone.
    history = monitor.history("hourly")
    assert len(history) == 25
    assert history[-1].started_at == T0 + timedelta(hours=6) - timedelta(seconds=10)
    assert status_of(monitor, "hourly").history_runs == 25
    assert status_of(monitor, "hourly").success_count == 30  # counters are all-time
    clock.advance(timedelta(days=2))
    assert monitor.history("hourly") == []
    status = status_of(monitor, "hourly")
    assert status.history_runs == 0
    assert status.p50_duration_seconds is None
    assert status.state is JobState.MISSED


def test_a_full_history_keeps_the_newest_runs_and_says_how_many_were_dropped(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    monitor = make_monitor(max_history=100, retention=timedelta(days=7))
    for _ in range(250):
        run_for(monitor, clock, "busy", 1)
    history = monitor.history("busy")
    assert len(history) == 100
    assert history[0].started_at == T0 + timedelta(seconds=249)
    assert history[-1].started_at == T0 + timedelta(seconds=150)
    status = status_of(monitor, "busy")
    assert status.history_runs == 100
    assert status.history_dropped == 150
    assert status.to_dict()["history_dropped"] == 150
    clock.advance(timedelta(hours=25))
    assert status_of(monitor, "busy").history_dropped == 0


def test_auto_stall_after_uses_the_monitor_default_until_20_runs(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    monitor = make_monitor(stall_after=300)
    monitor.register("etl", stall_after="auto")
    for _ in range(19):
        run_for(monitor, clock, "etl", 200)
    status = status_of(monitor, "etl")
    assert status.stall_after_auto is True
    assert status.stall_after_seconds == 300.0
    assert status.to_dict()["stall_after_auto"] is True
    run_for(monitor, clock, "etl", 200)
    assert status_of(monitor, "etl").stall_after_seconds == 600.0  # 3 x p95 of 200 s

    # A run that would have been stalled at 300 s is fine until 600 s.
    with monitor.run("etl"):
        clock.advance(400)
        assert status_of(monitor, "etl").state is JobState.RUNNING
        clock.advance(200)
        assert status_of(monitor, "etl").state is JobState.STALLED


def test_auto_stall_after_has_a_floor_and_respects_the_timeout(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("quick", stall_after="auto")
    monitor.register("bounded", stall_after="auto", timeout=120)
    for _ in range(20):
        run_for(monitor, clock, "quick", 0.2)
        run_for(monitor, clock, "bounded", 0.2)
    assert status_of(monitor, "quick").stall_after_seconds == 60.0  # the floor
    assert status_of(monitor, "bounded").stall_after_seconds == 120.0  # never below the timeout


def test_auto_stall_after_lowered_mid_run_rearms_the_deadline(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    monitor = make_monitor(stall_after=3600)
    monitor.register("etl", stall_after="auto")
    with in_own_context(monitor.run("etl")):  # armed at the default, 3600 s
        for _ in range(20):
            run_for(monitor, clock, "etl", 10)  # overlapping runs teach it: 60 s (the floor)
        clock.advance(1)
        assert status_of(monitor, "etl").state is JobState.STALLED  # 201 s > 60 s


def test_auto_stall_after_follows_the_window_and_can_be_turned_off(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    monitor.register("etl", stall_after="auto")
    for _ in range(20):
        run_for(monitor, clock, "etl", 100)
    assert status_of(monitor, "etl").stall_after_seconds == 300.0
    clock.advance(timedelta(days=1, minutes=1))
    for _ in range(20):
        run_for(monitor, clock, "etl", 50)
    # Old runs left the window: 3 x p95 of 50 s (percentiles are within 5%).
    assert status_of(monitor, "etl").stall_after_seconds == pytest.approx(150.0, rel=0.05)
    monitor.register("etl", stall_after=42)
    status = status_of(monitor, "etl")
    assert status.stall_after_seconds == 42.0
    assert status.stall_after_auto is False
    monitor.register("etl", stall_after="auto")  # back on: computed from the history at once
    assert status_of(monitor, "etl").stall_after_seconds == pytest.approx(150.0, rel=0.05)


def test_auto_is_the_only_word_stall_after_takes(monitor: JobMonitor) -> None:
    with pytest.raises(ValueError, match='"auto"'):
        monitor.register("etl", stall_after="automatic")


def test_many_error_categories_fit_in_the_history(monitor: JobMonitor, otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    for i in range(300):  # categories set by the application's own spans
        with tracer.start_as_current_span(
            "custom", attributes={"job.name": "custom", "job.error.category": f"kind_{i}"}
        ) as span:
            span.set_status(Status(StatusCode.ERROR, "failed"))
    categories = {record.error_category for record in monitor.history("custom")}
    assert "kind_0" in categories
    assert "kind_246" in categories
    assert "kind_299" not in categories  # past 255 codes: recorded as unknown
    assert "unknown" in categories
