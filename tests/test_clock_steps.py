"""Durations and deadlines follow the monotonic clock; a step of the wall clock (NTP, an
operator setting the time) changes no duration and blinds no deadline. Times shown to people
stay wall-clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint

from jobpulse import JobMonitor, JobState
from jobpulse._clock import Clock
from jobpulse.testing import FakeClock
from tests.conftest import Otel


def test_a_wall_clock_step_back_during_a_run_changes_no_duration(
    monitor: JobMonitor, clock: FakeClock, otel: Otel
) -> None:
    @monitor.job("index")
    def index() -> None:
        clock.advance(0.5)
        clock.step_wall(-3600)
        clock.advance(0.5)

    index()
    status = monitor.status("index")
    assert status is not None
    assert status.last_duration_seconds == pytest.approx(1.0)
    assert status.min_duration_seconds == pytest.approx(1.0)
    assert monitor.history("index")[0].duration_seconds == pytest.approx(1.0)
    (span,) = otel.spans()
    assert span.end_time is not None
    assert span.start_time is not None
    assert span.end_time - span.start_time == 1_000_000_000
    (point,) = otel.metrics()["background_job.duration"].values()
    assert isinstance(point, HistogramDataPoint)
    assert point.sum == pytest.approx(1.0)


def test_a_step_back_does_not_blind_missed_detection(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("index", schedule="@every 2m")  # grace 12 s
    with monitor.run("index"):
        clock.advance(1)
    clock.step_wall(-3600)
    clock.advance(timedelta(minutes=2, seconds=11))
    assert monitor.status("index").state is JobState.SUCCESS  # type: ignore[union-attr]
    clock.advance(1)  # two minutes and the grace after the run started, on the monotonic clock
    status = monitor.status("index")
    assert status is not None
    assert (status.state, status.missed_count) == (JobState.MISSED, 1)


@pytest.mark.parametrize("step", [-3600, 3600])
def test_runs_on_time_are_on_time_whatever_the_wall_clock_did(
    monitor: JobMonitor, clock: FakeClock, step: float
) -> None:
    monitor.register("index", schedule="@every 2m")
    for run in range(5):
        with monitor.run("index"):
            clock.advance(1)
        if run == 1:
            clock.step_wall(step)
        clock.advance(119)
    status = monitor.status("index")
    assert status is not None
    assert (status.state, status.missed_count, status.run_count) == (JobState.SUCCESS, 0, 5)


def test_a_span_of_another_tracer_measured_across_a_step_back(
    monitor: JobMonitor, clock: FakeClock, otel: Otel
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    span = tracer.start_span("own", attributes={"job.name": "own"}, start_time=clock.time_ns())
    clock.advance(2)
    clock.step_wall(-3600)
    span.end(end_time=clock.time_ns())  # its own wall times say -3598 s
    status = monitor.status("own")
    assert status is not None
    assert status.last_duration_seconds == pytest.approx(2.0)


def test_a_calendar_slot_is_a_wall_time(monitor: JobMonitor, clock: FakeClock) -> None:
    # The clock starts at midnight UTC; "@daily" is expected at the next midnight, which the
    # wall clock reaches an hour later than the monotonic clock after a step back.
    monitor.register("settle", schedule="@daily")  # grace 5 min
    clock.step_wall(-3600)
    clock.advance(timedelta(days=1, minutes=6))
    assert monitor.status("settle").state is JobState.PENDING  # type: ignore[union-attr]
    clock.advance(timedelta(hours=1))
    assert monitor.status("settle").state is JobState.MISSED  # type: ignore[union-attr]


def test_a_clock_subclass_that_reads_its_own_monotonic_time_is_read() -> None:
    class Frozen(Clock):
        def monotonic(self) -> float:
            return 5.0

    assert Frozen().monotonic() == 5.0
