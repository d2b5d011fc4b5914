"""The threads of the Celery integration have owners that stop them (STYLE.md 15, as in
tests/test_integration_threads.py): the monitor the integration made (shut down by its
uninstrument), and Celery beat (its task event receiver and deadline thread stop with beat)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from celery import signals
from celery.beat import EmbeddedService

import jobpulse
from jobpulse import JobMonitor
from jobpulse.integrations import celery as celery_integration
from jobpulse.integrations.celery import CeleryJobInstrumentor, beat_job_name
from tests import celery_app, celery_support
from tests.celery_support import running_beat
from tests.conftest import Otel
from tests.prometheus_server import free_port
from tests.test_integration_threads import (
    before,
    jobpulse_threads,
    new_jobpulse_threads,
    status_of,
)

monitor = celery_support.monitor

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

__all__ = ["before", "monitor"]


def test_celery_uninstrument_shuts_down_the_monitor_it_made(
    otel: Otel, before: set[threading.Thread]
) -> None:
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        send_task_events=False,
    )
    try:
        assert celery_app.add.apply((1, 1)).get() == 2  # an eager run: the first use
        made = instrumentor.monitor
        assert made is not None
        assert "jobpulse-watchdog" in jobpulse_threads()
    finally:
        instrumentor.uninstrument()
    assert made.closed
    assert new_jobpulse_threads(before) == []


@pytest.mark.usefixtures("otel_globals")
def test_celery_uninstrument_leaves_the_monitor_of_setup_open(
    before: set[threading.Thread],
) -> None:
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(send_task_events=False)
    built = jobpulse.setup("threads-test", prometheus=False)  # after: still the one used
    try:
        celery_app.add.apply((1, 1))
        assert instrumentor.monitor is built
    finally:
        instrumentor.uninstrument()
    assert not built.closed
    assert status_of(built, "tests.add").success_count == 1


# -- beat ------------------------------------------------------------------------------


BEAT_THREADS = {"jobpulse-celery-events", "jobpulse-celery-beat"}
ENTRY = {"task": "tests.add", "schedule": 1.0, "args": (2, 2)}


@pytest.fixture
def beat_sent(monitor: JobMonitor) -> Iterator[threading.Event]:
    """The integration instrumented for the test; the Event is set once beat sent a task
    (an ``after_task_publish`` handler connected after the integration's, which by then
    armed the task's deadline: both of the watch's threads run)."""
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor, beat_grace=10)
    sent = threading.Event()

    def on_publish(**kwargs: object) -> None:
        sent.set()

    signals.after_task_publish.connect(on_publish, weak=False)
    try:
        yield sent
    finally:
        signals.after_task_publish.disconnect(on_publish)
        instrumentor.uninstrument()


@pytest.mark.slow
@pytest.mark.usefixtures("redis_url")
def test_a_stopped_beat_leaves_no_thread_and_expects_nothing(
    monitor: JobMonitor, beat_sent: threading.Event, before: set[threading.Thread]
) -> None:
    with running_beat({"every-second": ENTRY}):
        assert beat_sent.wait(30), "beat sent nothing"
        assert jobpulse_threads() >= BEAT_THREADS
        assert status_of(monitor, beat_job_name("every-second")).next_run_time is not None
    # Service.stop(wait=True) returned: beat's loop ended and closed its scheduler.
    assert not BEAT_THREADS & set(new_jobpulse_threads(before))
    # No missed run is armed for a beat that stopped.
    assert status_of(monitor, beat_job_name("every-second")).next_run_time is None


@pytest.mark.slow
@pytest.mark.usefixtures("redis_url")
def test_an_embedded_beat_thread_stopped_leaves_no_thread(
    monitor: JobMonitor, beat_sent: threading.Event, before: set[threading.Thread]
) -> None:
    celery_app.app.conf.beat_schedule = {"embedded": ENTRY}
    beat = EmbeddedService(celery_app.app, thread=True, scheduler_cls="celery.beat:Scheduler")
    try:
        beat.start()
        assert beat_sent.wait(30), "beat sent nothing"
        assert jobpulse_threads() >= BEAT_THREADS
    finally:
        beat.stop()
        beat.join(10)
        celery_app.app.conf.beat_schedule = {}
    assert not BEAT_THREADS & set(new_jobpulse_threads(before))
    assert status_of(monitor, beat_job_name("embedded")).next_run_time is None


@pytest.mark.slow
@pytest.mark.usefixtures("redis_url")
def test_a_beat_stopped_while_its_event_broker_is_unreachable_leaves_no_thread(
    monitor: JobMonitor,
    beat_sent: threading.Event,
    before: set[threading.Thread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An AMQP broker connects eagerly, and kombu retries a failed connect with sleeps.
    monkeypatch.setattr(celery_integration, "RECEIVER_READY_SECONDS", 0.5)
    monkeypatch.setitem(
        celery_app.app.conf, "broker_read_url", f"amqp://guest@127.0.0.1:{free_port()}//"
    )
    with running_beat({"unreachable": ENTRY}):
        assert beat_sent.wait(30), "beat sent nothing"
    assert not BEAT_THREADS & set(new_jobpulse_threads(before))
