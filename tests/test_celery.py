"""The Celery integration, against real workers and beat on a real Redis broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanContext, SpanKind

from jobpulse import JobMonitor, JobState
from jobpulse.integrations import celery as celery_integration
from jobpulse.integrations.celery import (
    BEAT_ENTRY_ATTRIBUTE,
    TASK_ID_ATTRIBUTE,
    CeleryJobInstrumentor,
    beat_job_name,
)
from tests import celery_app, celery_support
from tests.celery_support import SpanWaiter, running_beat, running_worker, runs_of
from tests.conftest import MonitorFactory, Otel, log_signal
from tests.otlp_receiver import ReceivedSpan, http_receiver
from tests.otlp_receiver import attributes as otlp_attributes
from tests.prometheus_server import free_port, stop_process

# Fixtures: the session's Redis server, a monitor on the real clock reporting to `otel`,
# the integration instrumented with it, and a span waiter.
monitor = celery_support.monitor
instrumented = celery_support.instrumented
waiter = celery_support.waiter

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.fixture(scope="module")
def solo_worker(redis_url: str) -> Iterator[Any]:
    with running_worker("solo") as worker:
        yield worker


def _monitor_of(instrumentor: CeleryJobInstrumentor) -> JobMonitor | None:
    return instrumentor.monitor


def _status(monitor: JobMonitor, name: str) -> Any:
    status = monitor.status(name)
    assert status is not None, f"{name} is not in the view"
    return status


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_a_task_run_is_a_job_run(monitor: JobMonitor, waiter: SpanWaiter) -> None:
    result = celery_app.add.delay(2, 3)
    [run] = waiter.wait_for_runs("tests.add")
    assert run.name == "tests.add"
    assert (run.attributes or {})[TASK_ID_ATTRIBUTE] == result.id
    assert BEAT_ENTRY_ATTRIBUTE not in (run.attributes or {})
    status = _status(monitor, "tests.add")
    assert (status.state, status.success_count, status.failure_count) == (JobState.SUCCESS, 1, 0)


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_a_failed_task_is_a_failed_run_and_the_error_is_re_raised(
    monitor: JobMonitor, waiter: SpanWaiter
) -> None:
    celery_app.fail.delay("disk full")
    [run] = waiter.wait_for_runs("tests.fail")
    attributes = run.attributes or {}
    assert attributes["error.type"] == "ValueError"
    assert run.status.description == "ValueError: disk full"
    status = _status(monitor, "tests.fail")
    assert (status.state, status.failure_count) == (JobState.FAILED, 1)
    assert status.last_error == "ValueError: disk full"


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_a_retried_attempt_is_a_failed_run_then_the_next_attempt_runs(
    monitor: JobMonitor, waiter: SpanWaiter
) -> None:
    result = celery_app.retry_once.delay()
    first, second = waiter.wait_for_runs("tests.retry_once", 2)
    assert (first.attributes or {})["job.error.category"] == "retry"
    assert (first.attributes or {})["error.type"] == "ConnectionError"
    assert second.status.is_ok
    assert (first.attributes or {})[TASK_ID_ATTRIBUTE] == result.id
    assert (second.attributes or {})[TASK_ID_ATTRIBUTE] == result.id
    history = monitor.history("tests.retry_once")
    assert [(record.outcome, record.error_category) for record in history] == [
        ("success", None),
        ("failed", "retry"),
    ]
    assert _status(monitor, "tests.retry_once").state is JobState.SUCCESS


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_rejected_is_a_failure_and_ignored_a_success(
    monitor: JobMonitor, waiter: SpanWaiter
) -> None:
    celery_app.rejected.delay()
    celery_app.ignored.delay()
    [rejected] = waiter.wait_for_runs("tests.rejected")
    [ignored] = waiter.wait_for_runs("tests.ignored")
    assert (rejected.attributes or {})["job.error.category"] == "rejected"
    assert ignored.status.is_ok
    assert _status(monitor, "tests.rejected").state is JobState.FAILED
    assert _status(monitor, "tests.ignored").state is JobState.SUCCESS


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_metadata_set_by_the_task_reaches_the_view(monitor: JobMonitor, waiter: SpanWaiter) -> None:
    celery_app.tagged.delay(42)
    waiter.wait_for_runs("tests.tagged")
    assert _status(monitor, "tests.tagged").metadata == {"rows": 42}


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_tasks_revoked_or_expired_before_they_start_are_skipped(
    monitor: JobMonitor, waiter: SpanWaiter, otel: Otel
) -> None:
    revoked_id = "jobpulse-test-revoked"
    # A connection of the test's own: a reply consumer left on a pooled one would be
    # inherited by the pool children of tests/test_celery_prefork.py (see there).
    with celery_app.app.connection_for_write() as connection:
        replies = celery_app.app.control.revoke(
            revoked_id, reply=True, timeout=10, limit=1, connection=connection
        )
    assert replies, "the worker did not answer the revoke"
    celery_app.add.apply_async((1, 1), task_id=revoked_id)
    celery_app.add.apply_async((1, 2), expires=-1)
    celery_app.add.delay(1, 3)  # the worker takes tasks in order: this one runs last
    waiter.wait_for_runs("tests.add")
    status = _status(monitor, "tests.add")
    assert (status.success_count, status.skipped_count) == (1, 2)
    assert status.last_skip_reason == "expired"
    skipped = otel.metrics()["background_job.skipped_runs"]
    assert {dict(key)["reason"]: value for key, value in skipped.items()} == {
        "revoked": 1,
        "expired": 1,
    }


def _one_run_span(otel: Otel, task_id: str) -> Any:
    """The one span that stands for the run of `task_id` (the caller's PRODUCER span and
    anything else about the task are not runs)."""
    spans = [
        span
        for span in otel.spans()
        if task_id
        in ((span.attributes or {}).get(key) for key in ("celery.task_id", "messaging.message.id"))
        and span.kind is not SpanKind.PRODUCER
    ]
    assert len(spans) == 1, [(span.name, span.kind, dict(span.attributes or {})) for span in spans]
    return spans[0]


@pytest.fixture
def otel_celery(otel: Otel) -> Iterator[BaseInstrumentor]:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


@pytest.mark.parametrize("theirs_first", [True, False], ids=["theirs-first", "ours-first"])
@pytest.mark.usefixtures("solo_worker")
def test_with_opentelemetry_instrumentation_celery_a_run_is_one_span(
    make_monitor: MonitorFactory,
    otel: Otel,
    otel_celery: BaseInstrumentor,
    theirs_first: bool,
) -> None:
    waiter = SpanWaiter()
    otel.tracer_provider.add_span_processor(waiter)
    ours = CeleryJobInstrumentor()
    if theirs_first:  # its tracer predates the monitor, its signal handlers come first
        otel_celery.instrument(tracer_provider=otel.tracer_provider)
        monitor = make_monitor(clock=None)
        ours.instrument(monitor=monitor)
    else:
        monitor = make_monitor(clock=None)
        ours.instrument(monitor=monitor)
        otel_celery.instrument(tracer_provider=otel.tracer_provider)
    try:
        ok = celery_app.add.delay(1, 2)
        failed = celery_app.fail.delay("upstream 503")
        retried = celery_app.retry_once.delay()
        waiter.wait_for(lambda spans: len(runs_of(spans, "tests.retry_once")) == 2)
        waiter.wait_for_runs("tests.add")
        waiter.wait_for_runs("tests.fail")
    finally:
        ours.uninstrument()
    run = _one_run_span(otel, ok.id)
    assert (run.name, run.kind) == ("run/tests.add", SpanKind.CONSUMER)
    assert (run.attributes or {})["job.name"] == "tests.add"
    failure = _one_run_span(otel, failed.id)
    assert (failure.attributes or {})["job.error.category"] == "unknown"
    assert (failure.attributes or {})["error.type"] == "ValueError"
    assert [event.name for event in failure.events] == ["exception"]
    assert not failure.status.is_ok
    first, second = runs_of(otel.spans(), "tests.retry_once")
    assert (first.name, (first.attributes or {})["job.error.category"]) == (
        "run/tests.retry_once",
        "retry",
    )
    assert (first.attributes or {})["celery.task_id"] == retried.id
    assert second.status.is_ok
    status = _status(monitor, "tests.fail")
    assert (status.failure_count, status.last_error) == (1, "ValueError: upstream 503")
    assert _status(monitor, "tests.add").success_count == 1


@pytest.mark.usefixtures("solo_worker")
def test_instrument_and_uninstrument_twice_are_safe(
    monitor: JobMonitor, waiter: SpanWaiter, otel: Otel
) -> None:
    instrumentor = CeleryJobInstrumentor()
    assert instrumentor.instrumentation_dependencies() == ("celery >= 5.3, < 6",)
    instrumentor.instrument(monitor=monitor)
    instrumentor.instrument(monitor=monitor)  # logged, ignored
    assert _monitor_of(instrumentor) is monitor
    instrumentor.uninstrument()
    instrumentor.uninstrument()  # logged, ignored
    assert _monitor_of(instrumentor) is None
    finished = threading.Event()
    unmonitored = "jobpulse-test-unmonitored"

    def on_postrun(task_id: str | None = None, **kwargs: Any) -> None:
        if task_id == unmonitored:
            finished.set()

    signals.task_postrun.connect(on_postrun, weak=False)
    try:
        celery_app.add.apply_async((5, 5), task_id=unmonitored)
        assert finished.wait(30), "the worker did not run the task"
    finally:
        signals.task_postrun.disconnect(on_postrun)
    instrumentor.instrument(monitor=monitor)
    try:
        result = celery_app.add.delay(6, 6)
        waiter.wait_for(
            lambda spans: any(
                (span.attributes or {}).get(TASK_ID_ATTRIBUTE) == result.id for span in spans
            )
        )
    finally:
        instrumentor.uninstrument()
    assert [(span.attributes or {}).get(TASK_ID_ATTRIBUTE) for span in otel.spans()] == [result.id]
    assert _status(monitor, "tests.add").success_count == 1


@pytest.mark.usefixtures("solo_worker")
def test_without_a_monitor_the_instrumentor_makes_one_on_the_given_providers(
    otel: Otel, waiter: SpanWaiter
) -> None:
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    monitor = instrumentor.monitor
    assert monitor is not None
    try:
        celery_app.add.delay(1, 1)
        waiter.wait_for_runs("tests.add")
    finally:
        instrumentor.uninstrument()
        monitor.shutdown()
    assert _status(monitor, "tests.add").success_count == 1


@pytest.mark.slow
@pytest.mark.usefixtures("solo_worker")
def test_beat_tags_its_runs_and_follows_each_entry_to_a_worker(
    monitor: JobMonitor, waiter: SpanWaiter, otel: Otel
) -> None:
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor, beat_grace=10)
    try:
        entry = {"task": "tests.add", "schedule": 1.0, "args": (2, 2)}
        with running_beat({"add-every-second": entry}):
            celery_app.fail.delay("not beat's")  # its task events are not beat's business
            task_run = waiter.wait_for_runs("tests.add")[0]
            entry_run = waiter.wait_for_runs(beat_job_name("add-every-second"))[0]
            assert _status(monitor, beat_job_name("add-every-second")).next_run_time is not None
    finally:
        instrumentor.uninstrument()
    assert (task_run.attributes or {})[BEAT_ENTRY_ATTRIBUTE] == "add-every-second"
    assert _status(monitor, "tests.add").metadata == {"beat_entry": "add-every-second"}
    entry_attributes = entry_run.attributes or {}
    assert entry_attributes[TASK_ID_ATTRIBUTE] == (task_run.attributes or {})[TASK_ID_ATTRIBUTE]
    assert entry_attributes[BEAT_ENTRY_ATTRIBUTE] == "add-every-second"
    assert entry_run not in otel.spans()  # the worker exports the task's run; beat does not
    status = _status(monitor, beat_job_name("add-every-second"))
    assert status.success_count >= 1
    assert status.missed_count == 0
    assert status.next_run_time is None  # beat stopped: no run is expected of it


@pytest.mark.slow
@pytest.mark.usefixtures("solo_worker")
def test_a_beat_task_no_worker_starts_within_its_grace_is_missed(monitor: JobMonitor) -> None:
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor, beat_grace=0.5)
    entry = {"task": "tests.add", "schedule": 1.0, "args": (3, 3), "options": {"queue": "nobody"}}
    try:
        with log_signal("missed its scheduled run") as missed, running_beat({"unserved": entry}):
            assert missed.wait(30), "no missed run reported"
        with running_beat({}):  # beat again in this process: the first one's watch is closed
            pass
    finally:
        instrumentor.uninstrument()
    status = _status(monitor, beat_job_name("unserved"))
    assert status.state is JobState.MISSED
    assert status.missed_count >= 1
    assert status.success_count == 0
    assert monitor.status("tests.add") is None  # nothing ran


ROOT = Path(__file__).resolve().parent.parent
CLI_QUEUE = "cli-prefork"  # not the module's solo worker's


@contextmanager
def _celery_worker_process(redis_url: str, otlp_endpoint: str, log: Path) -> Iterator[None]:
    """``celery worker`` with a prefork pool of two children, as a user would run it."""
    env = {
        **os.environ,
        "JOBPULSE_TEST_BROKER": redis_url,
        "JOBPULSE_TEST_OTLP": otlp_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    command = [
        sys.executable, "-m", "celery", "-A", "tests.celery_worker_app", "worker",
        "--pool=prefork", "--concurrency=2", "-O", "fair", "--without-mingle",
        "--without-gossip", "--queues", CLI_QUEUE,
        "--loglevel", os.environ.get("JOBPULSE_TEST_WORKER_LOGLEVEL", "WARNING"),
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        yield
    finally:
        stop_process(process, timeout=30.0)
        assert process.returncode == 0, log.read_text(errors="replace")[-4000:]


def _wait_until_active(task_id: str, timeout: float = 30.0) -> None:
    """Wait until a worker reports `task_id` running (asked every 0.2 s: nothing tells)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with celery_app.app.connection_for_write() as connection:  # not a pooled one
            inspect = celery_app.app.control.inspect(timeout=0.5, connection=connection)
            replies = inspect.query_task(task_id) or {}
        if any(task.get(task_id, [None])[0] == "active" for task in replies.values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not start within {timeout} s")


def _instance(span: ReceivedSpan) -> object:
    return span.resource["service.instance.id"]


def _runs(spans: list[ReceivedSpan], job: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.attributes.get("job.name") == job]


def _views_with_runs(metrics: list[tuple[dict[str, object], Any]], job: str) -> set[object]:
    """The instance ids whose exported ``background_job.runs`` counts runs of `job`."""
    return {
        resource["service.instance.id"]
        for resource, metric in metrics
        if metric.name == "background_job.runs"
        for point in metric.sum.data_points
        if otlp_attributes(point.attributes).get("job.name") == job
    }


@pytest.mark.slow
def test_a_prefork_worker_exports_each_process_view_under_its_own_instance_id(
    redis_url: str, tmp_path: Path
) -> None:
    def arrived(spans: list[ReceivedSpan]) -> bool:
        return (
            len(_runs(spans, "tests.slow")) == 3
            and len(_runs(spans, "tests.soft_limited")) == 1
            and len(_runs(spans, "tests.retry_once")) == 2
            and len(_runs(spans, "tests.hard_limited")) == 1
        )

    log = tmp_path / "worker.log"
    with http_receiver() as receiver, _celery_worker_process(redis_url, receiver.endpoint, log):
        # Two 1 s tasks at once: one in each child (prefetch 1, fair scheduling).
        pair = [celery_app.slow.apply_async((1.0,), queue=CLI_QUEUE) for _ in range(2)]
        spans = receiver.store.wait_for_spans(
            lambda spans: len(_runs(spans, "tests.slow")) == 2, timeout=60.0
        )
        children = {_instance(run) for run in _runs(spans, "tests.slow")}
        assert len(children) == 2, "each child exports under its own service.instance.id"
        # Each child's own status view works: its metrics count the run it made. The
        # receiver has no wait for these, so they are polled.
        deadline = time.monotonic() + 30.0
        while not children <= _views_with_runs(receiver.store.metrics(), "tests.slow"):
            assert time.monotonic() < deadline, "the children's views were not exported"
            time.sleep(0.2)
        sleeper = celery_app.slow.apply_async((60,), queue=CLI_QUEUE)
        _wait_until_active(sleeper.id)
        celery_app.app.control.revoke(sleeper.id, terminate=True)
        celery_app.soft_limited.apply_async(queue=CLI_QUEUE)
        celery_app.retry_once.apply_async(queue=CLI_QUEUE)
        celery_app.hard_limited.apply_async(queue=CLI_QUEUE)
        spans = receiver.store.wait_for_spans(arrived, timeout=60.0)
    assert {(run.attributes[TASK_ID_ATTRIBUTE], run.status_code) for run in spans[:2]} == {
        (result.id, 0) for result in pair
    }
    [hard] = _runs(spans, "tests.hard_limited")
    assert hard.attributes["job.error.category"] == "time_limit"
    parent = _instance(hard)
    assert parent not in children  # the parent exports what it records, as itself
    [terminated] = [run for run in _runs(spans, "tests.slow") if run.status_code == 2]
    assert terminated.attributes["job.error.category"] == "revoked"
    assert terminated.attributes[TASK_ID_ATTRIBUTE] == sleeper.id
    assert _instance(terminated) == parent
    [soft] = _runs(spans, "tests.soft_limited")
    assert soft.attributes["job.error.category"] == "timeout"
    assert soft.attributes["job.timed_out"] is True
    # the two attempts, in whichever order their children exported them
    retried, succeeded = sorted(_runs(spans, "tests.retry_once"), key=lambda run: -run.status_code)
    assert (retried.status_code, retried.attributes["job.error.category"]) == (2, "retry")
    assert succeeded.status_code != 2  # not an error
    assert parent not in {_instance(run) for run in (soft, retried, succeeded)}
    assert {span.resource["service.name"] for span in spans} == {"celery-prefork-test"}


@pytest.mark.slow
@pytest.mark.usefixtures("solo_worker")
def test_beat_follows_failures_retries_and_expiries_through_task_events(
    monitor: JobMonitor, waiter: SpanWaiter
) -> None:
    schedule = {
        "failing": {"task": "tests.fail", "schedule": 1.0, "args": ("disk full",)},
        "flaky": {"task": "tests.retry_once", "schedule": 1.0},
        "stale": {"task": "tests.add", "schedule": 1.0, "args": (1, 1), "options": {"expires": 0}},
    }

    def seen(spans: Sequence[ReadableSpan]) -> bool:
        flaky = runs_of(spans, beat_job_name("flaky"))
        return bool(runs_of(spans, beat_job_name("failing"))) and (
            {run.status.is_ok for run in flaky} == {True, False}
        )

    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor)  # the default grace: 1 s for a 1 s period
    try:
        with log_signal("skipped (expired)") as expired, running_beat(schedule):
            waiter.wait_for(seen)
            assert expired.wait(30), "the expired task was not counted"
    finally:
        instrumentor.uninstrument()
    [failing, *_] = runs_of(waiter.spans(), beat_job_name("failing"))
    assert (failing.attributes or {})["job.error.category"] == "unknown"
    assert (failing.attributes or {})["error.type"] == "ValueError"
    assert failing.status.description == "ValueError('disk full')"
    retried = [
        run for run in runs_of(waiter.spans(), beat_job_name("flaky")) if not run.status.is_ok
    ]
    assert (retried[0].attributes or {})["job.error.category"] == "retry"
    stale = _status(monitor, beat_job_name("stale"))
    assert (stale.skipped_count >= 1, stale.last_skip_reason) == (True, "expired")


def test_an_eager_call_is_a_run_too(monitor: JobMonitor, otel: Otel) -> None:
    monitor.register("tests.add", schedule="@every 1m")
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor, send_task_events=False)
    try:
        assert celery_app.add.apply((2, 2)).get() == 4
        with pytest.raises(SystemExit):
            celery_app.interrupted.apply()
    finally:
        instrumentor.uninstrument()
    add_run, interrupted_run = otel.spans()
    assert (add_run.attributes or {})["faas.cron"] == "@every 1m"
    assert (interrupted_run.attributes or {})["job.error.category"] == "interrupted"
    assert _status(monitor, "tests.interrupted").state is JobState.FAILED


@pytest.mark.parametrize("elsewhere", ["another provider", "no SDK"])
@pytest.mark.usefixtures("solo_worker")
def test_with_opentelemetry_instrumentation_celery_elsewhere_ours_is_the_run(
    monitor: JobMonitor,
    waiter: SpanWaiter,
    otel: Otel,
    otel_celery: BaseInstrumentor,
    elsewhere: str,
) -> None:
    other = TracerProvider(shutdown_on_exit=False)
    theirs = InMemorySpanExporter()
    other.add_span_processor(SimpleSpanProcessor(theirs))
    otel_celery.instrument(
        tracer_provider=other if elsewhere == "another provider" else NoOpTracerProvider()
    )
    ours = CeleryJobInstrumentor()
    ours.instrument(monitor=monitor)
    try:
        result = celery_app.add.delay(3, 4)
        waiter.wait_for_runs("tests.add")
    finally:
        ours.uninstrument()
        other.shutdown()
    run = _one_run_span(otel, result.id)
    assert (run.name, (run.attributes or {})["job.name"]) == ("tests.add", "tests.add")
    if elsewhere == "another provider":  # its span is its provider's, not a run
        [their_run] = [span for span in theirs.get_finished_spans() if span.name.startswith("run/")]
        assert "job.name" not in (their_run.attributes or {})


@pytest.mark.slow
@pytest.mark.usefixtures("solo_worker")
def test_beat_goes_on_when_task_events_cannot_be_received(
    monitor: JobMonitor, waiter: SpanWaiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celery_integration, "RECEIVER_READY_SECONDS", 0.5)
    # Only the event receiver reads from this broker URL: beat and the worker use the other.
    monkeypatch.setitem(
        celery_app.app.conf, "broker_read_url", f"redis://127.0.0.1:{free_port()}/0"
    )
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor, beat_grace=0.5)
    entry = {"task": "tests.add", "schedule": 1.0, "args": (5, 5)}
    try:
        with (
            log_signal("task event receiver was not ready") as not_ready,
            log_signal("task events unavailable") as unavailable,
            log_signal("missed its scheduled run") as missed,
            running_beat({"blind": entry}),
        ):
            assert not_ready.wait(30)  # beat_init waited, then went on
            assert unavailable.wait(30)
            waiter.wait_for_runs("tests.add")  # beat sends, the worker runs
            assert missed.wait(30)  # but beat's view cannot see it start
    finally:
        instrumentor.uninstrument()  # stops the receiver between two attempts
    assert _status(monitor, beat_job_name("blind")).state is JobState.MISSED


@pytest.mark.slow
@pytest.mark.usefixtures("solo_worker")
def test_uninstrument_ends_the_runs_in_progress(
    monitor: JobMonitor, waiter: SpanWaiter, otel: Otel
) -> None:
    started, finished = threading.Event(), threading.Event()

    def on_prerun(**kwargs: Any) -> None:
        started.set()

    def on_postrun(**kwargs: Any) -> None:
        finished.set()

    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor)
    # connected after the integration: they run after its handlers
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    try:
        celery_app.slow.delay(1.0)
        assert started.wait(30)
        instrumentor.uninstrument()  # the run in progress ends now, not with the task
        assert [span.name for span in otel.spans()] == ["tests.slow"]
        instrumentor.instrument(monitor=monitor)  # and its end is not that of an unknown run
        assert finished.wait(30)
    finally:
        instrumentor.uninstrument()
        signals.task_prerun.disconnect(on_prerun)
        signals.task_postrun.disconnect(on_postrun)
    assert len(otel.spans()) == 1
    assert _status(monitor, "tests.slow").success_count == 1
    # The ended run stopped being current on the worker's thread at the task's end: the next
    # task there (nothing instrumented) has no current span.
    ran = threading.Event()

    def on_current_span_postrun(task_id: str | None = None, **kwargs: Any) -> None:
        ran.set()

    signals.task_postrun.connect(on_current_span_postrun, weak=False)
    try:
        result = celery_app.current_span.delay()
        assert ran.wait(30)
    finally:
        signals.task_postrun.disconnect(on_current_span_postrun)
    assert celery_app.current_spans[result.id] == (0, 0)


# -- whose span is the parent ----------------------------------------------------------


def _span_id(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


@pytest.mark.usefixtures("solo_worker", "instrumented")
def test_without_opentelemetry_instrumentation_celery_the_tasks_spans_are_the_runs_children(
    waiter: SpanWaiter,
) -> None:
    result = celery_app.current_span.delay()
    [run] = waiter.wait_for_runs("tests.current_span")
    assert celery_app.current_spans[result.id] == _span_id(run)


@pytest.mark.usefixtures("solo_worker")
def test_with_opentelemetry_instrumentation_celery_on_our_provider_its_run_span_is_the_run(
    monitor: JobMonitor, waiter: SpanWaiter, otel: Otel, otel_celery: BaseInstrumentor
) -> None:
    otel_celery.instrument(tracer_provider=otel.tracer_provider)
    ours = CeleryJobInstrumentor()
    ours.instrument(monitor=monitor)
    try:
        result = celery_app.current_span.delay()
        [run] = waiter.wait_for_runs("tests.current_span")
    finally:
        ours.uninstrument()
    assert run.name == "run/tests.current_span"
    assert celery_app.current_spans[result.id] == _span_id(run)


@pytest.mark.parametrize("use_span_links", [True, False], ids=["links", "parent"])
@pytest.mark.usefixtures("solo_worker")
def test_with_opentelemetry_instrumentation_celery_on_another_provider_its_trace_is_unchanged(
    monitor: JobMonitor, waiter: SpanWaiter, otel_celery: BaseInstrumentor, use_span_links: bool
) -> None:
    other = TracerProvider(shutdown_on_exit=False)
    theirs = SpanWaiter()
    other.add_span_processor(theirs)
    otel_celery.instrument(tracer_provider=other, use_span_links=use_span_links)
    ours = CeleryJobInstrumentor()
    ours.instrument(monitor=monitor)
    try:
        result = celery_app.current_span.delay()
        [our_run] = waiter.wait_for_runs("tests.current_span")
        spans = theirs.wait_for(
            lambda spans: any(span.name == "run/tests.current_span" for span in spans)
        )
        celery_app.tagged.delay(7)  # set_metadata still finds jobpulse's run
        waiter.wait_for_runs("tests.tagged")
    finally:
        ours.uninstrument()
        other.shutdown()
    assert _status(monitor, "tests.tagged").metadata == {"rows": 7}
    [consumer] = [span for span in spans if span.name == "run/tests.current_span"]
    [producer] = [span for span in spans if span.name == "apply_async/tests.current_span"]
    if use_span_links:  # as opentelemetry-instrumentation-celery's own test expects
        assert consumer.parent is None
        assert [_span_id_of(link.context) for link in consumer.links] == [_span_id(producer)]
    else:
        assert consumer.parent is not None
        assert _span_id_of(consumer.parent) == _span_id(producer)
    # The task's own spans are children of run/<task>, not of jobpulse's run.
    assert celery_app.current_spans[result.id] == _span_id(consumer)
    assert _span_id(our_run) not in {_span_id_of(span.parent) for span in spans if span.parent}
    assert _status(monitor, "tests.current_span").success_count == 1


def _span_id_of(context: SpanContext) -> tuple[int, int]:
    return context.trace_id, context.span_id


# -- one monitor -------------------------------------------------------------------------


@pytest.mark.usefixtures("solo_worker")
def test_instrument_with_a_monitor_switches_an_instrumentor_instrumented_without_one(
    monitor: JobMonitor, make_monitor: MonitorFactory, waiter: SpanWaiter, otel: Otel
) -> None:
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)  # as opentelemetry-instrument
    try:
        made = instrumentor.monitor
        assert made is not None
        assert made is not monitor
        instrumentor.instrument(monitor=monitor)  # the application's own call
        assert instrumentor.monitor is monitor
        assert made.closed
        revoked_id = "jobpulse-test-switch-revoked"
        with celery_app.app.connection_for_write() as connection:
            celery_app.app.control.revoke(
                revoked_id, reply=True, timeout=10, limit=1, connection=connection
            )
        celery_app.add.apply_async((1, 1), task_id=revoked_id)
        celery_app.add.delay(1, 2)
        waiter.wait_for_runs("tests.add")
        with pytest.raises(ValueError, match="another monitor"):
            instrumentor.instrument(monitor=make_monitor())
    finally:
        instrumentor.uninstrument()
    status = _status(monitor, "tests.add")
    assert (status.success_count, status.skipped_count) == (1, 1)
    assert made.status("tests.add") is None
    assert not monitor.closed


# -- a task over monitor.job ---------------------------------------------------------------


def flaky_export() -> None:
    raise ConnectionError("upstream down")


@pytest.mark.slow
@pytest.mark.usefixtures("redis_url", "instrumented")
def test_a_task_over_a_decorated_function_of_the_same_name_is_one_run(
    monitor: JobMonitor, waiter: SpanWaiter, otel: Otel
) -> None:
    decorated = monitor.job("tests.flaky_export", critical=True, failure_threshold=3)(flaky_export)
    task = celery_app.app.task(name="tests.flaky_export")(decorated)
    health = []
    with running_worker("solo", queue="decorated"):  # a worker that knows the new task
        for count in (1, 2, 3):
            task.apply_async(queue="decorated")
            waiter.wait_for_runs("tests.flaky_export", count)
            health.append(monitor.health().status.value)
    assert health == ["degraded", "degraded", "unhealthy"]  # unhealthy at the threshold
    status = _status(monitor, "tests.flaky_export")
    assert (status.failure_count, status.consecutive_failures) == (3, 3)
    runs = runs_of(otel.spans(), "tests.flaky_export")
    assert len(runs) == 3  # one span per run
    assert [len(run.events) for run in runs] == [1, 1, 1]


def test_a_task_whose_request_is_none_is_a_run(monitor: JobMonitor, otel: Otel) -> None:
    # As in Celery's own test_trace_catches_exception: its signals come with no request.
    from celery.app.trace import trace_task

    @celery_app.app.task(name="tests.no_request", request=None, shared=False)  # type: ignore[untyped-decorator]
    def no_request() -> None:
        raise KeyError("baz")

    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor, send_task_events=False)
    try:
        with warnings.catch_warnings():  # Celery may warn of the request it lacks
            warnings.simplefilter("ignore", RuntimeWarning)
            trace_task(no_request, "jobpulse-test-no-request", [], {}, app=celery_app.app)
    finally:
        instrumentor.uninstrument()
        celery_app.app.tasks.pop("tests.no_request", None)
    [run] = otel.spans()
    assert (run.attributes or {})[TASK_ID_ATTRIBUTE] == "jobpulse-test-no-request"
    assert _status(monitor, "tests.no_request").failure_count == 1
