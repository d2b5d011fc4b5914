"""No phantom runs: a run jobpulse registered is always closed, whatever the application's
own span processors do (OpenTelemetry calls them one after another, unguarded)."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import weakref
from collections.abc import Callable
from datetime import timedelta

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from jobpulse import JobMonitor, JobState, _guard
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, Otel


class RaisingProcessor(SpanProcessor):
    """The application's processor with a bug in one hook."""

    def __init__(self, hook: str) -> None:
        self.hook = hook

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.hook == "on_start":
            raise RuntimeError("processor bug in on_start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.hook == "on_end":
            raise RuntimeError("processor bug in on_end")


@pytest.fixture(autouse=True)
def _fresh_log_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Those warnings are logged at the 1st, 2nd, 4th, ... occurrence in the process.
    monkeypatch.setattr(_guard, "_foreign_counts", {})


HOOKS = ["on_start", "on_end"]
PLACES = ["before", "after"]


def _monitor_with(make_monitor: MonitorFactory, otel: Otel, hook: str, place: str) -> JobMonitor:
    processor = RaisingProcessor(hook)
    if place == "before":
        otel.tracer_provider.add_span_processor(processor)
    monitor = make_monitor()
    if place == "after":
        otel.tracer_provider.add_span_processor(processor)
    return monitor


def _decorated(monitor: JobMonitor) -> Callable[[], None]:
    @monitor.job("decorated", critical=True)
    def job() -> None:
        raise ValueError("declined")

    def call() -> None:
        with pytest.raises(ValueError, match="declined"):
            job()

    return call


def _block(monitor: JobMonitor) -> Callable[[], None]:
    def call() -> None:
        with monitor.run("block"):
            pass

    return call


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("kind", ["decorated", "block"])
def test_runs_of_the_monitor_are_always_closed(
    make_monitor: MonitorFactory,
    otel: Otel,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    hook: str,
    place: str,
    kind: str,
) -> None:
    monitor = _monitor_with(make_monitor, otel, hook, place)
    call = _decorated(monitor) if kind == "decorated" else _block(monitor)
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        for _ in range(3):
            call()  # the job's own outcome, never the processor's exception
    status = monitor.status(kind)
    assert status is not None
    assert status.active_runs == 0
    monitored = not (hook == "on_start" and place == "before")
    assert status.run_count == (3 if monitored else 0)
    if monitored and kind == "decorated":
        assert (status.state, status.consecutive_failures) == (JobState.FAILED, 3)
    clock.advance(3600)  # far past stall_after: nothing was left open
    status = monitor.status(kind)
    assert status is not None
    assert status.stalled_runs == 0
    assert status.active_runs == 0
    assert monitor.health().http_status == (503 if monitored and kind == "decorated" else 200)
    assert "processor" in caplog.text
    assert "raised RuntimeError" in caplog.text


@pytest.mark.parametrize("place", PLACES)
def test_a_foreign_span_whose_end_was_not_seen_is_closed_at_its_stall_deadline(
    make_monitor: MonitorFactory, otel: Otel, clock: FakeClock, place: str
) -> None:
    monitor = _monitor_with(make_monitor, otel, "on_end", place)
    monitor.register("own", stall_after=60)
    tracer = otel.tracer_provider.get_tracer("app")
    span = tracer.start_span("own", attributes={"job.name": "own"}, start_time=clock.time_ns())
    clock.advance(5)
    with pytest.raises(RuntimeError, match="on_end"):
        span.end(clock.time_ns())  # the application's own code gets its processor's exception
    clock.advance(60)
    status = monitor.status("own")
    assert status is not None
    assert (status.state, status.active_runs, status.stalled_runs) == (JobState.SUCCESS, 0, 0)
    assert status.run_count == 1
    assert status.last_duration_seconds == pytest.approx(5.0)
    assert monitor.health().http_status == 200


def test_a_foreign_span_lost_in_on_start_is_closed_as_lost(
    make_monitor: MonitorFactory, otel: Otel, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = _monitor_with(make_monitor, otel, "on_start", "after")
    monitor.register("own", stall_after=60)
    tracer = otel.tracer_provider.get_tracer("app")

    def start() -> None:
        # The application carries on; the span it was making is gone.
        with contextlib.suppress(RuntimeError):
            tracer.start_span("own", attributes={"job.name": "own"})

    start()
    gc.collect()
    status = monitor.status("own")
    assert status is not None
    assert status.active_runs == 1  # our on_start saw it start
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        clock.advance(60)
    status = monitor.status("own")
    assert status is not None
    assert (status.state, status.active_runs, status.stalled_runs) == (JobState.FAILED, 0, 0)
    assert (status.last_error_category, status.run_count) == ("lost", 1)
    assert "dropped without being ended" in caplog.text
    assert monitor.health().http_status == 206


def test_the_span_recovered_from_on_start_is_exported_and_ended_once(
    make_monitor: MonitorFactory, otel: Otel
) -> None:
    monitor = _monitor_with(make_monitor, otel, "on_start", "after")
    with pytest.raises(KeyError), monitor.run("recovered"):
        raise KeyError("missing")
    (span,) = otel.spans()
    assert span.name == "recovered"
    assert span.status.status_code is StatusCode.ERROR
    status = monitor.status("recovered")
    assert status is not None
    assert (status.run_count, status.last_error_category) == (1, "panic")


class BlockingProcessor(SpanProcessor):
    """A processor ahead of jobpulse's that takes its time in on_end (e.g. a synchronous
    exporter): the span has ended, jobpulse's on_end has not come yet."""

    def __init__(self) -> None:
        self.ending = threading.Event()
        self.release = threading.Event()

    def on_end(self, span: ReadableSpan) -> None:
        self.ending.set()
        self.release.wait(30)


def test_a_run_ending_as_its_stall_deadline_passes_counts_once(
    make_monitor: MonitorFactory, otel: Otel, clock: FakeClock
) -> None:
    blocking = BlockingProcessor()
    otel.tracer_provider.add_span_processor(blocking)
    monitor = make_monitor(stall_after=60)

    def run() -> None:
        with monitor.run("export"):
            clock.advance(59)

    thread = threading.Thread(target=run)
    thread.start()
    assert blocking.ending.wait(30)
    clock.advance(2)  # the deadline passes while the ended span is still being exported
    blocking.release.set()
    thread.join(30)
    status = monitor.status("export")
    assert status is not None
    assert (status.run_count, status.active_runs, status.stalled_runs) == (1, 0, 0)
    assert status.success_count == 1


@pytest.mark.parametrize("held", ["registry lock", "watchdog lock"])
def test_a_lost_span_collected_while_a_lock_of_jobpulse_is_held_deadlocks_nothing(
    make_monitor: MonitorFactory, otel: Otel, clock: FakeClock, held: str
) -> None:
    """The garbage collector runs at any allocation, on any thread, whatever locks it holds:
    a stalled run's span that only a reference cycle kept alive is dropped there."""
    monitor = _monitor_with(make_monitor, otel, "on_start", "after")
    monitor.register("own", stall_after=60, schedule="@every 1h")
    tracer = otel.tracer_provider.get_tracer("app")
    cycle: list[object] = []
    try:
        gc.disable()
        try:
            tracer.start_span("own", attributes={"job.name": "own"})
        except RuntimeError as error:  # its traceback holds the span; the cycle holds it
            cycle.extend([error, cycle])
        del cycle
        clock.advance(61)  # stalled: jobpulse holds the span weakly from now on
        registry = monitor._registry
        lock = registry._lock if held == "registry lock" else registry._watchdog._cond

        def collect() -> None:
            with lock:
                gc.collect()

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        collector.join(30)
        deadlocked = collector.is_alive()
        if deadlocked:  # fresh locks, so that the monitor can be shut down after the test
            registry._lock = type(registry._lock)(registry._follow_up)
            registry._watchdog._cond = threading.Condition(threading.Lock())
        assert not deadlocked
    finally:
        gc.enable()
    status = monitor.status("own")
    assert status is not None
    assert (status.state, status.active_runs, status.last_error_category) == (
        JobState.FAILED,
        0,
        "lost",
    )
    assert status.run_count == 1


def test_the_monitor_keeps_no_span_once_its_run_is_over(monitor: JobMonitor) -> None:
    with monitor.run("brief") as run:
        span = weakref.ref(run.span)
    del run
    gc.collect()
    assert span() is None


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("hook", HOOKS)
def test_a_recorded_run_is_closed_whatever_the_applications_processors_raise(
    make_monitor: MonitorFactory,
    otel: Otel,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    hook: str,
    place: str,
) -> None:
    monitor = _monitor_with(make_monitor, otel, hook, place)
    end = clock.now()
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        monitor.record_run("elsewhere", start=end - timedelta(seconds=5), end=end)
    status = monitor.status("elsewhere")
    assert status is not None
    assert status.active_runs == 0  # nothing left running until a stall deadline
    monitored = not (hook == "on_start" and place == "before")
    assert status.run_count == (1 if monitored else 0)
    if monitored:
        assert status.last_duration_seconds == pytest.approx(5.0)
    assert "raised RuntimeError" in caplog.text  # the application's, not an internal error


def test_an_integrations_run_is_closed_when_span_end_raises(
    make_monitor: MonitorFactory, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """What the Celery event receiver does: a run started without a token, ended by span."""
    monitor = _monitor_with(make_monitor, otel, "on_end", "before")
    span, _ = monitor._start("from_events", {"job.name": "from_events"}, current=None)
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        monitor._finish(span, None)
    status = monitor.status("from_events")
    assert status is not None
    assert (status.active_runs, status.run_count) == (0, 1)
    assert "raised RuntimeError" in caplog.text


class _OtherSdkSpan:
    """A span as another SDK would hand one to span processors: public properties only."""

    def __init__(self, name: str, span_id: int, start_ns: int, end_ns: int | None) -> None:
        from opentelemetry.trace import SpanContext, Status

        self.attributes = {"job.name": name}
        self.context = SpanContext(trace_id=7, span_id=span_id, is_remote=False)
        self.start_time = start_ns
        self.end_time = end_ns
        self.status = Status(StatusCode.UNSET)
        self.events = ()

    def get_span_context(self) -> object:
        return self.context


def test_spans_of_another_sdk_are_read_through_their_public_properties(
    monitor: JobMonitor,
) -> None:
    processor = monitor._processor
    started = _OtherSdkSpan("elsewhere", 99, 1_000_000_000, None)
    processor.on_start(started)  # type: ignore[arg-type]
    assert monitor.status("elsewhere").state is JobState.RUNNING  # type: ignore[union-attr]
    processor.on_end(_OtherSdkSpan("elsewhere", 99, 1_000_000_000, 1_250_000_000))  # type: ignore[arg-type]
    status = monitor.status("elsewhere")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.last_duration_seconds == 0.25
