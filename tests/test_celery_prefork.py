"""The Celery integration with a prefork pool forked from this process: what only the
parent process sees (a hard time limit, a lost child, also when Celery retries it).
tests/test_celery.py runs a prefork worker as a user does, as a command, and revokes a
running task there.

A module of its own: Celery runs one worker per process, and `tests/test_celery.py` keeps
a solo worker running for its whole module.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import kombu.pools
import pytest
from celery import signals

from jobpulse import JobMonitor, JobState
from jobpulse.integrations.celery import (
    BEAT_ENTRY_ATTRIBUTE,
    BEAT_HEADER,
    TASK_ID_ATTRIBUTE,
    CeleryJobInstrumentor,
)
from tests import celery_app, celery_support
from tests.celery_support import SpanWaiter, running_worker

# Fixtures (see tests/celery_support.py)
monitor = celery_support.monitor
instrumented = celery_support.instrumented
waiter = celery_support.waiter

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def _status(monitor: JobMonitor, name: str) -> Any:
    status = monitor.status(name)
    assert status is not None, f"{name} is not in the view"
    return status


@pytest.mark.slow
def test_the_prefork_parent_records_the_failures_only_it_sees(
    redis_url: str, monitor: JobMonitor, waiter: SpanWaiter, instrumented: CeleryJobInstrumentor
) -> None:
    queue = "in-process-prefork"  # not the solo worker's of tests/test_celery.py
    # The pool's children inherit this process's pooled broker connections and close them
    # after the fork (kombu does): one left waiting for a reply (a broadcast's, with a reply
    # consumer) would block a child for good, as the parent may read that reply. The tests
    # of this process broadcast and publish on connections of their own.
    with (
        running_worker("prefork", concurrency=2, queue=queue) as worker,
        celery_app.app.connection_for_write() as connection,
    ):
        assert worker.task_events  # turned on by the integration at worker_init
        # One received before the integration was (re)instrumented: no start time known.
        received = threading.Event()
        unseen = "jobpulse-test-received-unseen"

        def on_received(request: Any = None, **kwargs: Any) -> None:
            if request.id == unseen:
                received.set()

        signals.task_received.connect(on_received, weak=False)
        try:
            celery_app.hard_limited.apply_async(queue=queue, connection=connection, task_id=unseen)
            assert received.wait(30)
        finally:
            signals.task_received.disconnect(on_received)
        instrumented.uninstrument()
        instrumented.instrument(monitor=monitor)
        started = time.monotonic()
        hard = celery_app.hard_limited.apply_async(
            queue=queue, connection=connection, headers={BEAT_HEADER: "hourly-cleanup"}
        )
        lost = celery_app.lose_worker.apply_async(queue=queue, connection=connection)
        retried = celery_app.lose_worker_once.apply_async(queue=queue, connection=connection)
        [lost_run] = waiter.wait_for_runs("tests.lose_worker")
        [retried_run] = waiter.wait_for_runs("tests.lose_worker_once")
        hard_runs = waiter.wait_for_runs("tests.hard_limited", 2)
        elapsed = time.monotonic() - started
    # This process (the worker's parent) published on pooled connections (the lost child's
    # retry) that the children it forked afterwards inherited and closed: the later tests
    # of this process get fresh pools, as a new process would.
    kombu.pools.reset()  # type: ignore[no-untyped-call]
    celery_app.app._after_fork()
    [hard_run] = [run for run in hard_runs if (run.attributes or {})[TASK_ID_ATTRIBUTE] == hard.id]
    [unseen_run] = [run for run in hard_runs if run is not hard_run]
    assert unseen_run.end_time is not None
    assert unseen_run.start_time is not None
    # without the request's start time, the run lasted its time limit, up to its end
    assert (unseen_run.end_time - unseen_run.start_time) / 1e9 == pytest.approx(1.0)
    assert (retried_run.attributes or {})["job.error.category"] == "worker_lost"
    assert (retried_run.attributes or {})[TASK_ID_ATTRIBUTE] == retried.id
    assert (hard_run.attributes or {})[BEAT_ENTRY_ATTRIBUTE] == "hourly-cleanup"
    assert (hard_run.attributes or {})["job.error.category"] == "time_limit"
    assert (hard_run.attributes or {})["error.type"] == "billiard.exceptions.TimeLimitExceeded"
    assert (hard_run.attributes or {})[TASK_ID_ATTRIBUTE] == hard.id
    # The child that ran it, whose own open run a store takes for this one.
    child = (hard_run.attributes or {})["job.ran_in.pid"]
    assert isinstance(child, int)
    assert child != os.getpid()
    assert "job.ran_in.pid" not in (unseen_run.attributes or {})  # accepted before: unknown
    assert hard_run.end_time is not None
    assert hard_run.start_time is not None
    duration = (hard_run.end_time - hard_run.start_time) / 1e9
    assert 0.9 <= duration <= elapsed + 1.0  # from the child's start to the kill
    assert (lost_run.attributes or {})["job.error.category"] == "worker_lost"
    assert (lost_run.attributes or {})[TASK_ID_ATTRIBUTE] == lost.id
    # a hard time limit sends task_failure twice in the parent: one run each
    assert len(waiter.wait_for_runs("tests.hard_limited")) == 2
    status = _status(monitor, "tests.hard_limited")
    assert (status.state, status.failure_count, status.last_error_category) == (
        JobState.FAILED,
        2,
        "time_limit",
    )
