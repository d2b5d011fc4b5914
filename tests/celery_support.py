"""Helpers for the Celery tests: waiting for spans, and running real workers and beat."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from celery.beat import Service
from celery.contrib.testing.worker import TestWorkController, start_worker
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from jobpulse import JobMonitor
from jobpulse.integrations.celery import CeleryJobInstrumentor
from tests.celery_app import app
from tests.conftest import MonitorFactory, Otel

__all__ = [
    "SpanWaiter",
    "instrumented",
    "monitor",
    "running_beat",
    "running_worker",
    "runs_of",
    "waiter",
]

WAIT_SECONDS = 30.0


class SpanWaiter(SpanProcessor):
    """Keeps every span that ends (on any thread) and lets a test wait for a condition on
    them without polling."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        with self._condition:
            self._spans.append(span)
            self._condition.notify_all()

    def spans(self) -> list[ReadableSpan]:
        with self._condition:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[Sequence[ReadableSpan]], bool], timeout: float = WAIT_SECONDS
    ) -> list[ReadableSpan]:
        """The spans ended so far, once `predicate` holds for them; AssertionError (naming
        what did end) after `timeout` seconds."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._spans), timeout):
                names = [(span.name, dict(span.attributes or {})) for span in self._spans]
                raise AssertionError(f"no matching spans within {timeout} s; ended: {names}")
            return list(self._spans)

    def wait_for_runs(self, job: str, count: int = 1) -> list[ReadableSpan]:
        """Wait until `count` runs of `job` ended; return those runs."""
        self.wait_for(lambda spans: len(runs_of(spans, job)) >= count)
        return runs_of(self.spans(), job)


def runs_of(spans: Sequence[ReadableSpan], job: str) -> list[ReadableSpan]:
    """The spans of `spans` that are runs of `job`."""
    return [span for span in spans if (span.attributes or {}).get("job.name") == job]


@contextmanager
def running_worker(
    pool: str = "solo", concurrency: int = 1, queue: str = "celery"
) -> Iterator[Any]:
    """A real worker of `tests.celery_app.app` in a thread of this process (with `pool`'s
    children, if any, forked from it), consuming `queue` and sending task events.

    Without kombu's event loop: it is process-global, and this process also publishes from
    its own threads (the pool's parent side is the same: billiard's threads time the tasks
    and watch the children).
    """
    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        queues=[queue],
        use_eventloop=False,
        perform_ping_check=False,
        loglevel=os.environ.get("JOBPULSE_TEST_WORKER_LOGLEVEL", "WARNING"),
        task_events=True,
        shutdown_timeout=30.0,
    ) as worker:
        try:
            yield worker
        finally:
            listener = getattr(worker, "queue_listener", None)
            if listener is not None:  # the prefork test worker leaves these behind
                root = logging.getLogger()
                for handler in list(root.handlers):
                    if isinstance(handler, TestWorkController.QueueHandler):
                        root.removeHandler(handler)
    if listener is not None:
        listener.stop()


@contextmanager
def running_beat(schedule: dict[str, dict[str, Any]]) -> Iterator[Service]:
    """Celery beat running `schedule` in a thread (an in-memory scheduler, no file)."""
    app.conf.beat_schedule = schedule
    service = Service(app, scheduler_cls="celery.beat:Scheduler", max_interval=0.2)
    thread = threading.Thread(target=service.start, name="beat", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop(wait=True)
        thread.join(10.0)
        app.conf.beat_schedule = {}


@pytest.fixture
def waiter(otel: Otel) -> SpanWaiter:
    """A `SpanWaiter` on the `otel` tracer provider."""
    waiter = SpanWaiter()
    otel.tracer_provider.add_span_processor(waiter)
    return waiter


@pytest.fixture
def monitor(make_monitor: MonitorFactory) -> JobMonitor:
    """A monitor on the `otel` providers and the real clock (workers run in real time)."""
    return make_monitor(clock=None)


@pytest.fixture
def instrumented(monitor: JobMonitor) -> Iterator[CeleryJobInstrumentor]:
    """The Celery integration reporting to `monitor`, for the test."""
    instrumentor = CeleryJobInstrumentor()
    instrumentor.instrument(monitor=monitor)
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()
