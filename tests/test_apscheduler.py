"""The APScheduler 3 integration, on real schedulers, executors and processes: runs timed in
the thread or task that runs them, next run times from the triggers, misfires and refused
runs, paused, removed and dead schedulers, process pools, log redaction, the instrumentor and
its entry point, and the example app."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
)
from apscheduler.executors import asyncio as executors_asyncio
from apscheduler.executors import base as executors_base
from apscheduler.executors import pool as executors_pool
from apscheduler.executors.debug import DebugExecutor
from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import jobpulse
from jobpulse import JobMonitor, JobState, JobStatus
from jobpulse.integrations import apscheduler as integration
from jobpulse.integrations.apscheduler import (
    APSchedulerInstrumentor,
    instrument_scheduler,
    job_name,
    uninstrument_scheduler,
)
from jobpulse.testing import FakeClock
from tests import aps_jobs
from tests.conftest import MonitorFactory, Otel
from tests.prometheus_server import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # generous: the machine is slow and noisy; a passing test never waits this long


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def wait(event: threading.Event, what: str) -> None:
    if not event.wait(WAIT):
        pytest.fail(f"timed out after {WAIT:g}s waiting for {what}")


def status_of(monitor: JobMonitor, name: str) -> JobStatus:
    status = monitor.status(name)
    assert status is not None, f"{name!r} is not in the view: {sorted(monitor.statuses())}"
    return status


def now() -> datetime:
    return datetime.now(timezone.utc)


def on_event(scheduler: BaseScheduler, mask: int) -> list[Any]:
    """The scheduler's events of `mask`, as a list that fills up (added after jobpulse's
    listener, so jobpulse has handled an event by the time it is in the list)."""
    events: list[Any] = []
    scheduler.add_listener(events.append, mask)
    return events


@pytest.fixture
def live_monitor(make_monitor: MonitorFactory) -> JobMonitor:
    """A monitor on the `otel` providers and the real clock."""
    return make_monitor(clock=None)


Schedulers = Callable[..., BackgroundScheduler]


@pytest.fixture
def schedulers() -> Iterator[list[BaseScheduler]]:
    """Schedulers the test made: shut down and uninstrumented afterwards."""
    made: list[BaseScheduler] = []
    yield made
    for scheduler in made:
        if scheduler.running:
            scheduler.shutdown(wait=False)
        uninstrument_scheduler(scheduler)
        assert scheduler not in integration._states


@pytest.fixture
def background(schedulers: list[BaseScheduler]) -> Schedulers:
    def make(**options: Any) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(timezone="UTC", **options)
        schedulers.append(scheduler)
        return scheduler

    return make


def span_of(otel: Otel, name: str) -> ReadableSpan:
    spans = [span for span in otel.spans() if span.name == name]
    assert len(spans) == 1, [span.name for span in otel.spans()]
    return spans[0]


# -- job names ---------------------------------------------------------------------------


def report() -> None:
    """A job function with a module-level reference."""


class Reports:
    def send(self) -> None:
        pass


def test_job_names_are_stable_across_restarts(background: Schedulers) -> None:
    scheduler = background()
    closure_value = 1
    named = scheduler.add_job(report, id="nightly_report")
    auto = scheduler.add_job(report)
    by_reference = scheduler.add_job("tests.aps_jobs:work", args=(0,))
    lam = scheduler.add_job(lambda: closure_value)
    method = scheduler.add_job(Reports().send)
    too_long = scheduler.add_job(report, id="x" * 201)
    partial = scheduler.add_job(functools.partial(aps_jobs.work, 0))

    assert job_name(named) == "nightly_report"
    assert len(auto.id) == 32  # APScheduler's uuid4().hex: never used as a name
    assert job_name(auto) == "tests.test_apscheduler:report"
    assert job_name(by_reference) == "tests.aps_jobs:work"
    assert job_name(lam) == (
        "tests.test_apscheduler:test_job_names_are_stable_across_restarts.<locals>.<lambda>"
    )
    assert job_name(method) == "tests.test_apscheduler:Reports.send"
    assert job_name(too_long) == "tests.test_apscheduler:report"
    assert job_name(too_long) == "tests.test_apscheduler:report"  # and warned once
    assert job_name(partial) == "tests.aps_jobs:work"
    proxy = integration._JobProxy(named, aps_jobs.work)
    assert (proxy.id, proxy.func, proxy.args) == ("nightly_report", aps_jobs.work, ())
    assert (str(proxy), repr(proxy)) == (str(named), repr(named))


# -- runs on a BackgroundScheduler's thread pool -----------------------------------------


class SettlementError(RuntimeError):
    pass


def test_thread_pool_runs_are_spans_in_the_executing_thread(
    background: Schedulers, live_monitor: JobMonitor, otel: Otel
) -> None:
    scheduler = background(executors={"default": ThreadPoolExecutor(2)})
    assert instrument_scheduler(scheduler, live_monitor) is live_monitor
    tracer = otel.tracer_provider.get_tracer("the job's own")
    seen: dict[str, Any] = {}
    raised: list[BaseException] = []

    def index_blocks() -> int:
        seen["span"] = trace.get_current_span()
        seen["thread"] = threading.get_ident()
        seen["start"] = time.time_ns()
        with tracer.start_as_current_span("fetch block"):
            time.sleep(0.05)
        seen["end"] = time.time_ns()
        return 42

    def settle() -> None:
        error = SettlementError("cannot reach postgres://user:secret@db/x")
        raised.append(error)
        raise error

    results = on_event(scheduler, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.add_job(index_blocks, "interval", hours=1, next_run_time=now(), id="index")
    scheduler.add_job(settle, "interval", hours=1, next_run_time=now(), id="settle")
    scheduler.start()
    wait_for(lambda: len(results) == 2, "both runs")

    run = span_of(otel, "index")
    assert run.attributes == {
        "job.name": "index",
        "code.function.name": (
            "tests.test_apscheduler:"
            "test_thread_pool_runs_are_spans_in_the_executing_thread.<locals>.index_blocks"
        ),
        "faas.trigger": "timer",
        "apscheduler.job_id": "index",
        "apscheduler.trigger": "interval[1:00:00]",
    }
    assert seen["span"].get_span_context() == run.context
    assert seen["thread"] != threading.get_ident()
    child = span_of(otel, "fetch block")
    assert child.parent is not None
    assert child.parent.span_id == run.context.span_id
    assert run.start_time is not None
    assert run.end_time is not None
    assert run.start_time <= seen["start"] < seen["end"] <= run.end_time
    status = status_of(live_monitor, "index")
    assert status.success_count == 1
    assert status.last_duration_seconds is not None
    assert status.last_duration_seconds >= 0.05

    # The job's exception reaches APScheduler unchanged, and the view redacted.
    (error_event,) = [event for event in results if event.code == EVENT_JOB_ERROR]
    assert error_event.exception is raised[0]
    assert error_event.retval is None
    (executed,) = [event for event in results if event.code == EVENT_JOB_EXECUTED]
    assert executed.retval == 42
    failed = span_of(otel, "settle")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "tests.test_apscheduler.SettlementError"
    settle_status = status_of(live_monitor, "settle")
    assert settle_status.state is JobState.FAILED
    assert settle_status.last_error == "SettlementError: cannot reach postgres://user:***@db/x"


def test_job_exception_logged_by_apscheduler_is_redacted(
    background: Schedulers, live_monitor: JobMonitor
) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    records: list[logging.LogRecord] = []
    formatted: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            formatted.append(self.format(record))

    executor_logger = logging.getLogger("apscheduler.executors.default")
    handler = Capture(level=logging.ERROR)
    executor_logger.addHandler(handler)
    error = RuntimeError("cannot reach postgres://user:secret@db/x")

    def connect() -> None:
        raise error

    try:
        results = on_event(scheduler, EVENT_JOB_ERROR)
        scheduler.add_job(connect, "interval", hours=1, next_run_time=now(), id="connect")
        scheduler.start()
        wait_for(lambda: bool(results), "the failed run")
    finally:
        executor_logger.removeHandler(handler)
    (record,) = records
    assert record.exc_info is not None
    assert record.exc_info[1] is error  # kept for handlers that read the exception
    (text,) = formatted
    assert "<locals>.connect (trigger: interval[1:00:00]" in text
    assert "RuntimeError: cannot reach postgres://user:***@db/x" in text
    assert "Traceback (most recent call last)" in text
    assert "secret" not in text

    scheduler.shutdown()
    uninstrument_scheduler(scheduler)
    assert integration._REDACTOR not in executor_logger.filters


def test_redaction_filter_leaves_clean_and_malformed_records_alone() -> None:
    clean = logging.LogRecord("x", logging.INFO, __file__, 1, "ran %s", ("job",), None)
    malformed = logging.LogRecord("x", logging.INFO, __file__, 1, "ran %s %s", ("job",), None)
    secret = logging.LogRecord("x", logging.INFO, __file__, 1, "at %s", ("ftp://a:b@c",), None)
    for record in (clean, malformed, secret):
        assert integration._REDACTOR.filter(record)
    assert (clean.msg, clean.args) == ("ran %s", ("job",))
    assert (malformed.msg, malformed.args) == ("ran %s %s", ("job",))
    assert secret.getMessage() == "at ftp://a:***@c"


# -- AsyncIOScheduler --------------------------------------------------------------------


def test_asyncio_scheduler_runs_coroutines_on_the_loop_and_sync_jobs_in_threads(
    live_monitor: JobMonitor, otel: Otel, schedulers: list[BaseScheduler]
) -> None:
    seen: dict[str, Any] = {}
    live_monitor.register("slow_fetch", timeout=0.2)

    async def main() -> None:
        loop_thread = threading.get_ident()
        scheduler = AsyncIOScheduler(timezone="UTC")
        schedulers.append(scheduler)
        instrument_scheduler(scheduler, live_monitor)
        both_done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def results(event: Any) -> None:
            if status_count() >= 3:
                loop.call_soon_threadsafe(both_done.set)

        def status_count() -> int:
            return sum(
                status.run_count
                for name, status in live_monitor.statuses().items()
                if name in ("fetch", "compact", "slow_fetch")
            )

        async def fetch() -> None:
            seen["fetch task"] = asyncio.current_task()
            seen["fetch thread"] = threading.get_ident()
            seen["fetch span"] = trace.get_current_span()
            await asyncio.sleep(0.02)

        def compact() -> None:
            seen["compact thread"] = threading.get_ident()
            seen["compact span"] = trace.get_current_span()

        async def slow_fetch() -> None:
            await asyncio.sleep(30)

        scheduler.add_listener(results, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        for func, job_id in ((fetch, "fetch"), (compact, "compact"), (slow_fetch, "slow_fetch")):
            scheduler.add_job(func, "interval", hours=1, next_run_time=now(), id=job_id)
        scheduler.start()
        await asyncio.wait_for(both_done.wait(), WAIT)
        scheduler.shutdown()
        while scheduler.running:  # AsyncIOScheduler shuts down on the loop
            await asyncio.sleep(0.01)
        seen["loop thread"] = loop_thread

    asyncio.run(main())
    assert seen["fetch task"] is not None
    assert seen["fetch thread"] == seen["loop thread"]
    assert seen["fetch span"].get_span_context() == span_of(otel, "fetch").context
    assert seen["compact thread"] != seen["loop thread"]
    assert seen["compact span"].get_span_context() == span_of(otel, "compact").context
    assert status_of(live_monitor, "fetch").success_count == 1
    assert status_of(live_monitor, "compact").success_count == 1
    # A coroutine job's timeout is enforced (the run is cancelled), as for @monitor.job.
    slow = status_of(live_monitor, "slow_fetch")
    assert slow.failure_count == 1
    assert slow.timeout_count == 1
    assert slow.last_error_category == "timeout"


# -- next run times ----------------------------------------------------------------------


def test_next_run_time_is_the_triggers(background: Schedulers, live_monitor: JobMonitor) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    submitted = on_event(scheduler, EVENT_JOB_SUBMITTED)
    ran = threading.Event()
    # APScheduler counts weekdays from Monday = 0 and has its own DST rules: the view takes
    # the time the trigger computed, never a re-parsed expression.
    weekly = scheduler.add_job(
        report,
        CronTrigger(day_of_week="mon", hour=2, minute=30, timezone="Europe/Berlin"),
        id="weekly",
    )
    scheduler.add_job(ran.set, "interval", hours=1, next_run_time=now(), id="hourly")
    scheduler.start()
    weekly_next = status_of(live_monitor, "weekly").next_run_time
    assert weekly_next == weekly.next_run_time
    assert weekly.next_run_time.astimezone(weekly.trigger.timezone).weekday() == 0

    wait(ran, "the hourly run")
    wait_for(lambda: bool(submitted), "its submission")
    wait_for(lambda: status_of(live_monitor, "hourly").success_count == 1, "its end")
    hourly_next = scheduler.get_job("hourly").next_run_time
    assert hourly_next > now() + timedelta(minutes=59)
    assert status_of(live_monitor, "hourly").next_run_time == hourly_next
    assert status_of(live_monitor, "hourly").state is JobState.SUCCESS


def test_next_run_applies_after_the_run_it_follows_started_in_either_order(
    background: Schedulers, live_monitor: JobMonitor
) -> None:
    """APScheduler's SUBMITTED event may come before or after the run starts. The next run
    time it brings is applied once the run has taken the slot it was submitted for."""
    scheduler = background(executors={"default": ThreadPoolExecutor(1)})
    blocker_running, release_blocker = threading.Event(), threading.Event()
    late_running, release_submitted = threading.Event(), threading.Event()

    def block() -> None:
        blocker_running.set()
        release_blocker.wait(WAIT)

    def hold_submitted(event: Any) -> None:
        # Added before jobpulse's listener: jobpulse sees "late"'s SUBMITTED only after
        # the run started.
        if event.job_id == "late":
            release_submitted.wait(WAIT)

    scheduler.add_listener(hold_submitted, EVENT_JOB_SUBMITTED)
    instrument_scheduler(scheduler, live_monitor)
    submitted = on_event(scheduler, EVENT_JOB_SUBMITTED)
    first = now()
    scheduler.add_job(block, "interval", hours=1, next_run_time=first, id="blocker")
    scheduler.add_job(report, "interval", hours=1, next_run_time=first, id="queued")
    scheduler.start()
    wait(blocker_running, "the blocker")
    wait_for(lambda: {event.job_id for event in submitted} == {"blocker", "queued"}, "submits")
    # SUBMITTED before the run: "queued" waits in the pool; its slot stays the one due.
    queued = status_of(live_monitor, "queued")
    assert queued.next_run_time == first
    assert queued.state is JobState.PENDING
    release_blocker.set()
    wait_for(lambda: status_of(live_monitor, "queued").success_count == 1, "the queued run")
    queued = status_of(live_monitor, "queued")
    assert queued.next_run_time == scheduler.get_job("queued").next_run_time
    assert queued.next_run_time > first + timedelta(minutes=59)
    assert queued.missed_count == 0

    # The run before SUBMITTED: a listener ahead of jobpulse's holds the event back.
    scheduler.add_job(late_running.set, "interval", hours=1, next_run_time=now(), id="late")
    wait(late_running, "the late job's run")
    wait_for(lambda: status_of(live_monitor, "late").success_count == 1, "its end")
    release_submitted.set()
    wait_for(lambda: "late" in {event.job_id for event in submitted}, "its submission")
    late = status_of(live_monitor, "late")
    assert late.next_run_time == scheduler.get_job("late").next_run_time
    assert late.next_run_time > now() + timedelta(minutes=59)


# -- missed, skipped, paused, removed, dead -----------------------------------------------


def test_misfire_is_counted_as_missed_with_no_run(
    background: Schedulers, live_monitor: JobMonitor, otel: Otel
) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    live_monitor.register("late", grace=3600)  # jobpulse's own deadline is far away
    missed = on_event(scheduler, EVENT_JOB_MISSED)
    due = now() - timedelta(seconds=30)  # past its misfire_grace_time of 1 s
    scheduler.add_job(report, "interval", hours=1, next_run_time=due, id="late")
    scheduler.add_job(report, "date", run_date=due, id="one_shot", misfire_grace_time=1)
    scheduler.start()
    wait_for(lambda: len(missed) == 2, "two MISSED events")
    late = status_of(live_monitor, "late")
    assert late.state is JobState.MISSED
    assert late.missed_count == 1
    assert late.last_missed_run_time == due
    assert late.run_count == 0
    assert otel.spans() == ()
    # APScheduler removes a one-shot job as it submits it; the view keeps it.
    assert scheduler.get_job("one_shot") is None
    assert status_of(live_monitor, "one_shot").missed_count == 1
    assert otel.metrics()["background_job.missed_runs"] == {
        (("job.name", "late"),): 1,
        (("job.name", "one_shot"),): 1,
    }


def test_max_instances_refusals_are_counted_as_skipped(
    background: Schedulers, live_monitor: JobMonitor, otel: Otel
) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    refused = on_event(scheduler, EVENT_JOB_MAX_INSTANCES)
    release = threading.Event()
    scheduler.add_job(release.wait, "interval", seconds=0.1, args=(WAIT,), id="overlapping")
    scheduler.start()
    wait_for(lambda: bool(refused), "a refused run")
    scheduler.pause_job("overlapping")
    release.set()
    wait_for(lambda: status_of(live_monitor, "overlapping").success_count >= 1, "the run's end")
    status = status_of(live_monitor, "overlapping")
    assert status.skipped_count >= 1
    assert status.last_skip_reason == "max_instances"
    assert status.missed_count == 0
    assert status.next_run_time is None  # paused
    skipped = otel.metrics()["background_job.skipped_runs"]
    assert skipped == {
        (("job.name", "overlapping"), ("reason", "max_instances")): status.skipped_count
    }


@pytest.fixture
def fake_clock_monitor(make_monitor: MonitorFactory) -> tuple[JobMonitor, FakeClock]:
    """A monitor whose clock starts at the real time and then moves only when told: a
    scheduled run that does not start can be waited for without waiting."""
    clock = FakeClock(now())
    return make_monitor(clock=clock), clock


def test_a_run_that_does_not_come_is_missed_unless_paused(
    background: Schedulers, fake_clock_monitor: tuple[JobMonitor, FakeClock]
) -> None:
    """To the monitor, a scheduler that stops running its jobs without a word (a dead
    thread, a hung loop) is one whose expected runs do not start: with the monitor's clock
    moved past them (APScheduler's is not), they are missed. Paused ones are not."""
    monitor, clock = fake_clock_monitor
    running, paused = background(), background()
    for scheduler in (running, paused):
        instrument_scheduler(scheduler, monitor)
    running.add_job(report, "interval", hours=1, id="hourly")
    running.add_job(report, "interval", hours=1, id="paused_job")
    paused.add_job(report, "interval", hours=1, id="idle")
    running.start()
    paused.start()
    running.pause_job("paused_job")
    paused.pause()
    assert status_of(monitor, "hourly").next_run_time == running.get_job("hourly").next_run_time
    assert status_of(monitor, "paused_job").next_run_time is None
    assert status_of(monitor, "idle").next_run_time is None

    clock.advance(timedelta(hours=2))
    hourly = status_of(monitor, "hourly")
    assert hourly.state is JobState.MISSED
    assert hourly.missed_count == 1
    assert status_of(monitor, "paused_job").state is JobState.PENDING
    assert status_of(monitor, "idle").state is JobState.PENDING
    assert monitor.health().status.value == "degraded"

    paused.resume()  # its job is expected again, and long overdue in the monitor's time
    assert status_of(monitor, "idle").next_run_time == paused.get_job("idle").next_run_time
    clock.advance(2)
    assert status_of(monitor, "idle").state is JobState.MISSED


def test_removed_jobs_leave_the_view(background: Schedulers, live_monitor: JobMonitor) -> None:
    scheduler = background()
    scheduler.add_job(report, "interval", hours=1, id="kept")
    scheduler.add_job(report, "interval", hours=1, id="dropped")
    scheduler.add_job(report, "interval", hours=1)  # two jobs with no id share a name
    scheduler.add_job(report, "interval", hours=1)
    scheduler.add_job(report, "interval", hours=1, id="elsewhere", jobstore="other")
    scheduler.add_job(report, "date", run_date=now() + timedelta(hours=1), id="not_yet")
    scheduler.add_jobstore("memory", "other")
    shared = "tests.test_apscheduler:report"
    instrument_scheduler(scheduler, live_monitor)  # before start: jobs appear, pending
    assert set(live_monitor.statuses()) == {"kept", "dropped", "elsewhere", "not_yet", shared}
    assert status_of(live_monitor, "kept").next_run_time is None
    scheduler.start(paused=True)
    assert status_of(live_monitor, "kept").next_run_time is None  # paused: none expected
    scheduler.resume()
    assert status_of(live_monitor, "kept").next_run_time is not None

    scheduler.remove_job("dropped")
    assert live_monitor.status("dropped") is None
    scheduler.remove_job("not_yet")  # a one-shot job, removed before its time
    assert live_monitor.status("not_yet") is None
    # One whose schedule ran out stays, with its last outcome, until retention drops it.
    executed = on_event(scheduler, EVENT_JOB_EXECUTED)
    scheduler.add_job(report, "date", run_date=now(), id="once")
    wait_for(lambda: bool(executed), "the one-shot run")
    assert scheduler.get_job("once") is None
    assert status_of(live_monitor, "once").success_count == 1
    unnamed = [job for job in scheduler.get_jobs() if job_name(job) == shared]
    scheduler.remove_job(unnamed[0].id)
    assert live_monitor.status(shared) is not None  # the other one still runs under it
    scheduler.remove_all_jobs(jobstore="other")
    assert set(live_monitor.statuses()) == {"kept", "once", shared}
    scheduler.remove_all_jobs()
    assert set(live_monitor.statuses()) == {"once"}


def test_modified_job_moves_its_expected_run_and_its_name(
    background: Schedulers, live_monitor: JobMonitor
) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    scheduler.start()
    job = scheduler.add_job(report, "interval", hours=1)
    scheduler.reschedule_job(job.id, trigger="interval", hours=5)
    assert status_of(live_monitor, job_name(job)).next_run_time == job.next_run_time
    twin = scheduler.add_job(report, "interval", hours=1)
    job.modify(func=aps_jobs.work, args=(0,))  # no id: the name follows the function
    assert status_of(live_monitor, "tests.aps_jobs:work").next_run_time is not None
    assert live_monitor.status("tests.test_apscheduler:report") is not None  # the twin's
    twin.modify(func=aps_jobs.fail, args=("",))
    assert live_monitor.status("tests.test_apscheduler:report") is None


# -- shutdown ----------------------------------------------------------------------------


def test_shutdown_with_wait_returns_while_a_run_ends(
    background: Schedulers, live_monitor: JobMonitor
) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    started = threading.Event()

    def finish_soon() -> None:
        started.set()
        time.sleep(0.2)

    scheduler.add_job(finish_soon, "interval", hours=1, next_run_time=now(), id="ending")
    scheduler.start()
    wait(started, "the run")
    stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "shutdown(wait=True) hangs"
    status = status_of(live_monitor, "ending")
    assert status.success_count == 1
    assert status.next_run_time is None  # a stopped scheduler runs nothing


# -- process pools -----------------------------------------------------------------------


def test_child_process_runs_are_measured_and_recorded_in_the_parent(
    background: Schedulers, live_monitor: JobMonitor, otel: Otel
) -> None:
    """In process (what a pool's child does with the job it unpickles): the run function
    measures the run and hands it back on the event; the parent's listener records it."""
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    scheduler.start(paused=True)
    worked = scheduler.add_job(aps_jobs.work, "interval", hours=1, args=(0.02,), id="worked")
    failed = scheduler.add_job(aps_jobs.fail, "interval", hours=1, args=("no disk",))
    due = now()
    results = []
    for job in (worked, failed):
        unpickled = pickle.loads(pickle.dumps(job))
        events = executors_pool.run_job(unpickled, "default", [due], "apscheduler.executors.x")
        results.extend(pickle.loads(pickle.dumps(events)))  # as they come back to the parent
    for event in results:
        scheduler._dispatch_event(event)
    worked_status = status_of(live_monitor, "worked")
    assert worked_status.success_count == 1
    assert worked_status.last_duration_seconds is not None
    assert worked_status.last_duration_seconds >= 0.02
    failed_status = status_of(live_monitor, "tests.aps_jobs:fail")
    assert failed_status.failure_count == 1
    assert failed_status.last_error == "ReportError: no disk"
    span = span_of(otel, "worked")
    assert span.attributes is not None
    assert span.attributes["process.pid"] == os.getpid()
    assert span.attributes["code.function.name"] == "tests.aps_jobs:work"
    # A run declared missed in the child comes back as missed.
    unpickled = pickle.loads(pickle.dumps(worked))
    events = executors_pool.run_job(
        unpickled, "default", [due - timedelta(minutes=1)], "apscheduler.executors.x"
    )
    assert [event.code for event in events] == [EVENT_JOB_MISSED]
    scheduler._dispatch_event(events[0])
    assert status_of(live_monitor, "worked").missed_count == 1


@pytest.mark.slow
def test_process_pool_runs_in_children_are_in_the_parents_view(
    background: Schedulers, live_monitor: JobMonitor, otel: Otel
) -> None:
    scheduler = background(executors={"default": ProcessPoolExecutor(1)})
    instrument_scheduler(scheduler, live_monitor)
    results = on_event(scheduler, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    # However long the child takes to start (a second or more on a loaded machine), run:
    # APScheduler's default misfire_grace_time of 1 s would declare the runs missed.
    options: dict[str, Any] = {"next_run_time": now(), "misfire_grace_time": None}
    scheduler.add_job(aps_jobs.work, "interval", hours=1, args=(0.05,), **options)
    scheduler.add_job(aps_jobs.fail, "interval", hours=1, args=("no disk",), **options)
    scheduler.start()
    wait_for(lambda: len(results) == 2, "both runs in the child process", timeout=60)
    work = status_of(live_monitor, "tests.aps_jobs:work")
    assert work.success_count == 1
    assert work.last_duration_seconds is not None
    assert work.last_duration_seconds >= 0.05
    (work_job,) = [job for job in scheduler.get_jobs() if job.func is aps_jobs.work]
    assert work.next_run_time == work_job.next_run_time
    fail = status_of(live_monitor, "tests.aps_jobs:fail")
    assert fail.failure_count == 1
    assert fail.last_error == "ReportError: no disk"
    (error,) = [event for event in results if event.code == EVENT_JOB_ERROR]
    assert isinstance(error.exception, aps_jobs.ReportError)
    span = span_of(otel, "tests.aps_jobs:work")
    assert span.attributes is not None
    assert span.attributes["process.pid"] != os.getpid()


# -- instrumenting and uninstrumenting ---------------------------------------------------


def test_instrument_and_uninstrument_twice(
    background: Schedulers, live_monitor: JobMonitor, make_monitor: MonitorFactory, otel: Otel
) -> None:
    scheduler = background(executors={"default": DebugExecutor()})  # runs in its thread
    assert instrument_scheduler(scheduler, live_monitor) is live_monitor
    assert instrument_scheduler(scheduler) is live_monitor
    assert instrument_scheduler(scheduler, live_monitor) is live_monitor
    with pytest.raises(ValueError, match="already instrumented"):
        instrument_scheduler(scheduler, make_monitor())
    with pytest.raises(TypeError, match="APScheduler 3 scheduler"):
        instrument_scheduler(object())
    assert executors_pool.run_job is integration._run_job
    listeners = len(scheduler._listeners)

    uninstrument_scheduler(scheduler)
    uninstrument_scheduler(scheduler)
    assert len(scheduler._listeners) == listeners - 1
    assert executors_pool.run_job is executors_base.run_job
    executed = on_event(scheduler, EVENT_JOB_EXECUTED)
    scheduler.add_job(report, "interval", hours=1, next_run_time=now(), id="unmonitored")
    scheduler.start()
    wait_for(lambda: len(executed) == 1, "the unmonitored run")
    assert live_monitor.status("unmonitored") is None

    instrument_scheduler(scheduler, live_monitor)
    scheduler.add_job(report, "interval", hours=1, next_run_time=now(), id="monitored")
    wait_for(lambda: len(executed) == 2, "the monitored run")
    monitored = status_of(live_monitor, "monitored")
    assert monitored.success_count == 1
    assert monitored.next_run_time == scheduler.get_job("monitored").next_run_time
    scheduler.modify_job("monitored", next_run_time=now())  # once more
    wait_for(lambda: len(executed) == 3, "the second monitored run")
    assert status_of(live_monitor, "monitored").success_count == 2
    first, second = [span for span in otel.spans() if span.name == "monitored"]
    assert first.attributes == second.attributes


def test_run_functions_of_uninstrumented_schedulers_pass_through(
    background: Schedulers, live_monitor: JobMonitor, otel: Otel
) -> None:
    instrumented, plain = background(), background()
    instrument_scheduler(instrumented, live_monitor)
    ran = threading.Event()
    plain.add_job(ran.set, "interval", hours=1, next_run_time=now(), id="plain")
    plain.start()
    wait(ran, "the plain scheduler's run")

    async def ping() -> str:
        return "pong"

    job = plain.add_job(ping, "interval", hours=1, id="ping")
    run = executors_asyncio.run_coroutine_job(job, "default", [now()], "apscheduler.executors.x")
    assert [event.retval for event in asyncio.run(run)] == ["pong"]
    assert live_monitor.statuses() == {}
    assert otel.spans() == ()


def test_instrumentor_adopts_running_and_starting_schedulers(
    background: Schedulers, live_monitor: JobMonitor, make_monitor: MonitorFactory
) -> None:
    instrumentor = APSchedulerInstrumentor()
    original_start = BaseScheduler.start
    assert instrumentor.instrumentation_dependencies() == ("apscheduler >= 3.10, < 4",)
    with pytest.raises(RuntimeError, match="not instrumented"):
        _ = instrumentor.monitor
    running = background()
    running.start(paused=True)
    own_monitor = make_monitor(clock=None)
    own = background()
    instrument_scheduler(own, own_monitor)

    instrumentor.instrument(monitor=live_monitor)
    instrumentor.instrument(monitor=live_monitor)  # a warning, nothing more
    try:
        assert instrumentor.monitor is live_monitor
        assert running in integration._states
        later = background()
        later.add_job(report, "interval", hours=1, id="later_job")
        later.start(paused=True)
        assert status_of(live_monitor, "later_job").next_run_time is None
        own.add_job(report, "interval", hours=1, id="own_job")
        own.start(paused=True)
        assert live_monitor.status("own_job") is None
        assert own_monitor.status("own_job") is not None
    finally:
        instrumentor.uninstrument()
        instrumentor.uninstrument()
    assert BaseScheduler.start is original_start
    assert running not in integration._states
    assert later not in integration._states
    assert own in integration._states  # the application's own instrumentation stays
    with pytest.raises(TypeError, match="JobMonitor"):
        instrumentor._instrument(monitor="not a monitor")


def test_instrumenting_with_a_dead_weak_proxy_in_memory_adopts_running_schedulers(
    background: Schedulers, live_monitor: JobMonitor
) -> None:
    class Target:
        pass

    target = Target()
    dead = [weakref.proxy(target)]  # as another library may leave behind
    del target
    running = background()
    running.start(paused=True)
    instrumentor = APSchedulerInstrumentor()
    instrumentor.instrument(monitor=live_monitor)  # raised ReferenceError into the host
    try:
        assert running in integration._states
    finally:
        instrumentor.uninstrument()
    assert dead  # kept alive until here


@pytest.mark.usefixtures("otel_globals")
def test_instrumentor_reports_to_the_monitor_of_setup() -> None:
    monitor = jobpulse.setup("aps-test", prometheus=False)
    instrumentor = APSchedulerInstrumentor()
    instrumentor.instrument()
    try:
        assert instrumentor.monitor is monitor
    finally:
        instrumentor.uninstrument()


@pytest.mark.slow
def test_opentelemetry_instrument_turns_it_on_with_no_code_change() -> None:
    command = Path(sys.executable).with_name("opentelemetry-instrument")
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "celery,jobpulse_celery"
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    script = str(ROOT / "tests" / "aps_autoinstrumented.py")
    result = subprocess.run(
        [str(command), sys.executable, script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["instrumented"] is True, result.stderr
    assert document["job"]["job_name"] == "report"
    assert document["job"]["success_count"] == 1


# -- the supported range -----------------------------------------------------------------


def _import_fresh_copy() -> None:
    spec = importlib.util.spec_from_file_location("jobpulse_apscheduler_copy", integration.__file__)
    assert spec is not None
    assert spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.parametrize(
    ("installed", "message"),
    [
        ("4.0.0a6", r"supports apscheduler >=3\.10,<4; 4\.0\.0a6 is installed.*APScheduler 4"),
        ("3.9.1", r"supports apscheduler >=3\.10,<4; 3\.9\.1 is installed"),
        (None, r"needs apscheduler: pip install 'jobpulse\[apscheduler\]'"),
    ],
)
def test_import_fails_clearly_outside_the_supported_range(
    monkeypatch: pytest.MonkeyPatch, installed: str | None, message: str
) -> None:
    def version(distribution: str) -> str:
        if installed is None:
            raise metadata.PackageNotFoundError(distribution)
        return installed

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(ImportError, match=message):
        _import_fresh_copy()


def test_event_for_a_job_of_no_known_name_is_ignored(
    background: Schedulers, live_monitor: JobMonitor
) -> None:
    scheduler = background()
    instrument_scheduler(scheduler, live_monitor)
    scheduler._dispatch_event(JobExecutionEvent(EVENT_JOB_MISSED, "nobody", "default", now()))
    scheduler._dispatch_event(JobExecutionEvent(EVENT_JOB_EXECUTED, "nobody", "default", now()))
    assert live_monitor.statuses() == {}


# -- the example -------------------------------------------------------------------------


EXAMPLE_JOBS = ("refresh_prices", "expire_sessions")


@pytest.mark.slow
def test_example_serves_the_health_of_its_scheduled_jobs(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update({"PORT": str(port), "JOB_INTERVAL": "0.5"})
    log = tmp_path / "example.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "examples/apscheduler_starlette.py"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        document: dict[str, Any] = {}

        def ran_both() -> bool:
            nonlocal document
            if process.poll() is not None:
                pytest.fail(f"the example exited:\n{log.read_text()}")
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/health/jobs", timeout=5)
            except httpx.TransportError:
                return False
            document = response.json()
            jobs = document["jobs"]
            return all(jobs.get(name, {}).get("success_count", 0) >= 1 for name in EXAMPLE_JOBS)

        wait_for(ran_both, "the example's jobs to run", timeout=60)
        jobs = document["jobs"]
        assert jobs["refresh_prices"]["critical"] is True
        assert jobs["refresh_prices"]["next_run_time"] is not None
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert 'job_name="refresh_prices"' in metrics.text
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        stop_process(process)
    assert "Traceback" not in log.read_text()


# -- one monitor, chosen at first use ------------------------------------------------------


def test_instrument_with_a_monitor_switches_an_instrumentor_instrumented_without_one(
    background: Schedulers, live_monitor: JobMonitor, make_monitor: MonitorFactory, otel: Otel
) -> None:
    instrumentor = APSchedulerInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)  # as opentelemetry-instrument
    try:
        scheduler = background(executors={"default": DebugExecutor()})
        scheduler.add_job(report, "interval", hours=1, id="switched")
        scheduler.start(paused=True)
        made = instrumentor.monitor
        assert made is not live_monitor
        instrumentor.instrument(monitor=live_monitor)  # the application's own call
        assert instrumentor.monitor is live_monitor
        assert made.closed  # the instrumentor's own monitor is shut down
        executed = on_event(scheduler, EVENT_JOB_EXECUTED)
        scheduler.resume()
        scheduler.modify_job("switched", next_run_time=now())
        wait_for(lambda: len(executed) == 1, "the run")
        assert status_of(live_monitor, "switched").success_count == 1
        instrumentor.instrument(monitor=live_monitor)  # the same: nothing more
        with pytest.raises(ValueError, match="another monitor"):
            instrumentor.instrument(monitor=make_monitor())
    finally:
        instrumentor.uninstrument()
    assert not live_monitor.closed  # given, not the instrumentor's to shut down


@pytest.mark.usefixtures("otel_globals")
def test_instrumentor_uses_a_setup_made_after_it_was_instrumented(
    background: Schedulers,
) -> None:
    instrumentor = APSchedulerInstrumentor()
    instrumentor.instrument()
    try:
        monitor = jobpulse.setup("aps-test", prometheus=False)
        scheduler = background()
        scheduler.add_job(report, "interval", hours=1, id="late_setup")
        scheduler.start(paused=True)
        assert instrumentor.monitor is monitor
        assert monitor.status("late_setup") is not None
    finally:
        instrumentor.uninstrument()
    assert not monitor.closed


def test_instrument_scheduler_shuts_down_the_monitor_it_made(background: Schedulers) -> None:
    scheduler = background()
    made = instrument_scheduler(scheduler)
    uninstrument_scheduler(scheduler)
    assert made.closed


# -- a job decorated with monitor.job ------------------------------------------------------


def flaky_report() -> None:
    raise ConnectionError("upstream down")


@pytest.mark.parametrize(
    ("wrap", "job_id"),
    [
        (lambda func: func, None),
        (lambda func: functools.partial(func), None),
        (lambda func: func, "nightly_report"),  # an id equal to the decorator's name
    ],
    ids=["decorated", "partial", "same-id"],
)
def test_a_decorated_job_function_run_by_the_scheduler_is_one_run(
    background: Schedulers,
    live_monitor: JobMonitor,
    otel: Otel,
    wrap: Callable[[Callable[[], None]], Callable[[], None]],
    job_id: str | None,
) -> None:
    decorated = live_monitor.job("nightly_report", critical=True, failure_threshold=3)(flaky_report)
    scheduler = background(executors={"default": DebugExecutor()})
    instrument_scheduler(scheduler, live_monitor)
    errors = on_event(scheduler, EVENT_JOB_ERROR)
    job = scheduler.add_job(wrap(decorated), "interval", hours=1, id=job_id)
    assert job_name(job) == "nightly_report"
    scheduler.start()
    health = []
    for count in (1, 2, 3):
        scheduler.modify_job(job.id, next_run_time=now())
        wait_for(lambda count=count: len(errors) == count, f"failed run {count}")  # type: ignore[misc]
        health.append(live_monitor.health().status.value)
    assert health == ["degraded", "degraded", "unhealthy"]  # unhealthy at the threshold
    assert sorted(live_monitor.statuses()) == ["nightly_report"]
    status = status_of(live_monitor, "nightly_report")
    assert (status.failure_count, status.consecutive_failures) == (3, 3)
    runs = [span for span in otel.spans() if (span.attributes or {}).get("job.name")]
    assert [span.name for span in runs] == ["nightly_report"] * 3  # one span per run
    assert [len(span.events) for span in runs] == [1, 1, 1]  # one exception event each


def test_an_explicit_id_wins_over_the_decorators_name(live_monitor: JobMonitor) -> None:
    decorated = live_monitor.job("nightly_report")(flaky_report)
    scheduler = BackgroundScheduler(timezone="UTC")
    job = scheduler.add_job(decorated, "interval", hours=1, id="reports")
    assert job_name(job) == "reports"
