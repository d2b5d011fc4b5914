"""The Celery application and tasks the Celery tests run, in-process or in a real worker.

The broker is ``JOBPULSE_TEST_BROKER`` (tests set it, or ``app.conf.broker_url``, to the
Redis server they started). Task bodies are plain: everything jobpulse sees comes from the
integration's signal handlers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject
from opentelemetry import trace

import jobpulse

__all__ = [
    "add",
    "app",
    "current_span",
    "current_spans",
    "fail",
    "hard_limited",
    "ignored",
    "interrupted",
    "lose_worker",
    "lose_worker_once",
    "rejected",
    "retry_once",
    "slow",
    "soft_limited",
    "tagged",
]

app = Celery("jobpulse_tests", broker=os.environ.get("JOBPULSE_TEST_BROKER", "memory://"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    worker_lost_wait=1.0,  # WorkerLostError 1 s after a child dies, not 10 s
    beat_max_loop_interval=0.2,
)


def _task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a name (Celery has no type hints)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(name=name, **options)
    return decorator


@_task("tests.add")
def add(x: int, y: int) -> int:
    return x + y


@_task("tests.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@_task("tests.retry_once", bind=True, max_retries=1, default_retry_delay=0)
def retry_once(self: Task) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("flaky upstream"), countdown=0)
    return "second attempt"


@_task("tests.soft_limited", soft_time_limit=0.3)
def soft_limited() -> None:
    time.sleep(10)


@_task("tests.hard_limited", time_limit=1)
def hard_limited() -> None:
    time.sleep(30)


@_task("tests.lose_worker")
def lose_worker() -> None:
    os._exit(3)


@_task("tests.lose_worker_once", bind=True, retry_on_worker_lost=True, max_retries=1)
def lose_worker_once(self: Task) -> str:
    if self.request.retries == 0:
        os._exit(3)
    return "second attempt"


@_task("tests.interrupted")
def interrupted() -> None:
    raise SystemExit(2)


@_task("tests.slow")
def slow(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@_task("tests.rejected")
def rejected() -> None:
    raise Reject("not for us", requeue=False)


@_task("tests.ignored")
def ignored() -> None:
    raise Ignore()


@_task("tests.tagged")
def tagged(rows: int) -> int:
    jobpulse.set_metadata(rows=rows)
    return rows


#: The span current in each run of `current_span` (the parent of the spans a task makes), by
#: task id: (trace id, span id).
current_spans: dict[str, tuple[int, int]] = {}


@_task("tests.current_span", bind=True)
def current_span(self: Task) -> None:
    context = trace.get_current_span().get_span_context()
    current_spans[self.request.id] = (context.trace_id, context.span_id)
