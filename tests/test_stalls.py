"""Stall detection (decision 5) through the monitor, with a fake clock; the watchdog itself."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable

import pytest

from jobpulse import HealthStatus, JobMonitor, JobState
from jobpulse._clock import SYSTEM_CLOCK
from jobpulse._watchdog import Watchdog
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors, MonitorFactory, Otel, in_own_context, log_signal


def test_run_past_stall_after_becomes_stalled_at_the_deadline(
    monitor: JobMonitor, clock: FakeClock, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """The spec's TestJobStatusManager_StalledJobDetection, exact to the deadline."""
    monitor.register("icy_transaction_indexing", stall_after=300)
    run = monitor.run("icy_transaction_indexing")
    run.__enter__()
    clock.advance(299.999)
    assert monitor.status("icy_transaction_indexing").state is JobState.RUNNING  # type: ignore[union-attr]
    assert "stalled" not in caplog.text

    with caplog.at_level(logging.ERROR, logger="jobpulse"):
        clock.advance(0.001)
    status = monitor.status("icy_transaction_indexing")
    assert status is not None
    assert status.state is JobState.STALLED
    assert status.stalled_runs == 1
    assert status.updated_at == clock.now()
    (record,) = [r for r in caplog.records if "stalled" in r.message]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "job 'icy_transaction_indexing' stalled: running for 300.0s, past its stall_after of 300.0s"
    )
    stalled = otel.metrics()["background_jobs.stalled"]
    assert stalled[(("job.name", "icy_transaction_indexing"),)] == 1
    assert monitor.health().status is HealthStatus.UNHEALTHY
    assert monitor.summary().stalled_jobs == 1

    clock.advance(100)
    run.__exit__(None, None, None)  # a stalled run that ends anyway is recorded normally
    status = monitor.status("icy_transaction_indexing")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.stalled_runs == 0
    assert status.last_duration_seconds == 400.0
    assert (
        otel.metrics()["background_jobs.stalled"][(("job.name", "icy_transaction_indexing"),)] == 0
    )
    (span,) = otel.spans()
    (event,) = [e for e in span.events if e.name == "job.stalled"]
    assert event.attributes == {"job.elapsed_seconds": 300.0, "job.stall_after_seconds": 300.0}


def test_each_overlapping_run_has_its_own_deadline(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("indexer", stall_after=10)
    # Each run in a context of its own, as runs on different threads are.
    first, second = in_own_context(monitor.run("indexer")), in_own_context(monitor.run("indexer"))
    third = monitor.run("indexer")
    first.__enter__()
    clock.advance(6)
    second.__enter__()
    clock.advance(4)
    status = monitor.status("indexer")
    assert status is not None
    assert (status.state, status.stalled_runs, status.active_runs) == (JobState.STALLED, 1, 2)
    clock.advance(5.999)
    assert monitor.status("indexer").stalled_runs == 1  # type: ignore[union-attr]
    clock.advance(0.001)
    assert monitor.status("indexer").stalled_runs == 2  # type: ignore[union-attr]
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)
    assert monitor.status("indexer").state is JobState.SUCCESS  # type: ignore[union-attr]
    third.__enter__()
    clock.advance(9.999)
    assert monitor.status("indexer").state is JobState.RUNNING  # type: ignore[union-attr]
    clock.advance(0.001)
    assert monitor.status("indexer").state is JobState.STALLED  # type: ignore[union-attr]
    third.__exit__(None, None, None)
    assert monitor.status("indexer").stalled_runs == 0  # type: ignore[union-attr]


def test_stall_after_defaults_to_the_timeout_when_longer(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    """The spec flags 10-minute jobs stalled at 5 minutes; jobpulse waits for their timeout."""
    monitor = make_monitor()
    monitor.register("swap_request_processing", timeout=900)
    with monitor.run("swap_request_processing"):
        clock.advance(600)
        assert monitor.status("swap_request_processing").state is JobState.RUNNING  # type: ignore[union-attr]
        clock.advance(300)
        assert monitor.status("swap_request_processing").state is JobState.STALLED  # type: ignore[union-attr]


def test_lowering_stall_after_rearms_an_earlier_deadline(
    monitor: JobMonitor, clock: FakeClock
) -> None:
    with monitor.run("long"):
        clock.advance(60)
        assert monitor.status("long").state is JobState.RUNNING  # type: ignore[union-attr]
        monitor.register("long", stall_after=30)
        clock.advance(0)
        assert monitor.status("long").state is JobState.STALLED  # type: ignore[union-attr]


def test_raising_stall_after_delays_the_stall(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("grow", stall_after=10)
    with monitor.run("grow"):
        monitor.register("grow", stall_after=100)
        clock.advance(50)
        assert monitor.status("grow").state is JobState.RUNNING  # type: ignore[union-attr]
        clock.advance(50)
        assert monitor.status("grow").state is JobState.STALLED  # type: ignore[union-attr]


def test_deadlines_are_bounded_by_jobs_not_runs(monitor: JobMonitor, clock: FakeClock) -> None:
    watchdog = monitor._registry._watchdog
    for _ in range(1000):
        with monitor.run("busy"):
            clock.advance(0.001)
    for name in ("a", "b", "c"):
        with monitor.run(name):
            pass
    assert watchdog.pending() == 4
    clock.advance(300)
    assert watchdog.pending() == 0  # idle: nothing runs, nothing is waiting


def test_stall_detected_by_the_real_watchdog_thread(make_monitor: MonitorFactory) -> None:
    """With the system clock, the watchdog thread flags the run soon after its deadline."""
    monitor = make_monitor(clock=None, stall_after=0.05)
    with log_signal("stalled") as flagged, monitor.run("hang"):
        started = time.monotonic()
        assert flagged.wait(10), "the watchdog never flagged the run"
        latency = time.monotonic() - started - 0.05
        assert monitor.status("hang").state is JobState.STALLED  # type: ignore[union-attr]
    assert latency >= -0.01


class Recorder:
    """An `on_due` callback that remembers its calls and re-arms the keys it is told to."""

    def __init__(self, reschedule: dict[Hashable, float] | None = None) -> None:
        self.calls: list[tuple[Hashable, float]] = []
        self.reschedule = reschedule or {}

    def __call__(self, key: Hashable, now: float) -> float | None:
        self.calls.append((key, now))
        return self.reschedule.pop(key, None)


def test_watchdog_fires_in_deadline_order_once(clock: FakeClock) -> None:
    recorder = Recorder()
    watchdog = Watchdog(clock, recorder)
    base = clock.monotonic()
    watchdog.schedule("late", base + 20)
    watchdog.schedule("early", base + 10)
    watchdog.schedule("early", base + 15)  # later than the current one: ignored
    clock.advance(25)
    assert [key for key, _ in recorder.calls] == ["early", "late"]
    clock.advance(100)
    assert len(recorder.calls) == 2


def test_watchdog_earlier_deadline_replaces_the_later(clock: FakeClock) -> None:
    recorder = Recorder()
    watchdog = Watchdog(clock, recorder)
    base = clock.monotonic()
    watchdog.schedule("job", base + 20)
    watchdog.schedule("job", base + 5)
    assert watchdog.pending() == 1
    clock.advance(5)
    clock.advance(20)
    assert [key for key, _ in recorder.calls] == ["job"]


def test_watchdog_callback_can_rearm(clock: FakeClock) -> None:
    base = clock.monotonic()
    recorder = Recorder({"job": base + 30})
    watchdog = Watchdog(clock, recorder)
    watchdog.schedule("job", base + 10)
    clock.advance(10)
    assert watchdog.pending() == 1
    clock.advance(20)
    assert len(recorder.calls) == 2
    assert watchdog.pending() == 0


def test_watchdog_stop_forgets_deadlines(clock: FakeClock) -> None:
    recorder = Recorder()
    watchdog = Watchdog(clock, recorder)
    watchdog.schedule("job", clock.monotonic() + 1)
    watchdog.stop()
    watchdog.schedule("job", clock.monotonic() + 1)
    clock.advance(5)
    assert recorder.calls == []
    assert watchdog.pending() == 0


def test_watchdog_callback_errors_are_guarded(
    clock: FakeClock, internal_errors: InternalErrors
) -> None:
    def broken(key: Hashable, now: float) -> float | None:
        raise RuntimeError("bug")

    watchdog = Watchdog(clock, broken)
    watchdog.schedule("job", clock.monotonic())
    clock.advance(1)
    ((where, exc),) = internal_errors.take()
    assert where == "watchdog deadline"
    assert str(exc) == "bug"


def test_watchdog_thread_wakes_for_an_earlier_deadline_and_stops() -> None:
    fired = threading.Event()
    order: list[Hashable] = []

    def on_due(key: Hashable, now: float) -> float | None:
        order.append(key)
        if key == "soon":
            fired.set()
        return None

    watchdog = Watchdog(SYSTEM_CLOCK, on_due, name="test-watchdog")
    watchdog.schedule("far", time.monotonic() + 3600)
    watchdog.schedule("soon", time.monotonic() + 0.01)
    assert fired.wait(10)
    assert order == ["soon"]
    watchdog.stop()
    assert not any(t.name == "test-watchdog" for t in threading.enumerate())


def test_fake_clock_rules() -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="cannot go back"):
        FakeClock().advance(-1)
