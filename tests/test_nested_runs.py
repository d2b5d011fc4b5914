"""One run is one run: a run of a job inside a run of the same job, on the same thread or
task, is that run (a decorated function that a scheduler's monitored run calls)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import JobMonitor, JobState, JobTimeoutError
from tests.conftest import MonitorFactory, Otel


def test_a_decorated_job_called_inside_its_own_run_is_one_run(
    monitor: JobMonitor, otel: Otel
) -> None:
    @monitor.job("settle", critical=True)
    def settle() -> None:
        raise ValueError("declined")

    for _ in range(2):
        with pytest.raises(ValueError, match="declined"), monitor.run("settle"):
            settle()
    status = monitor.status("settle")
    assert status is not None
    assert (status.failure_count, status.consecutive_failures) == (2, 2)
    assert monitor.health().http_status == 206  # 2 failures, threshold 3: not yet unhealthy
    spans = otel.spans()
    assert len(spans) == 2
    assert all(len([e for e in s.events if e.name == "exception"]) == 1 for s in spans)


def test_nested_metadata_goes_to_the_outer_run(monitor: JobMonitor) -> None:
    @monitor.job("report")
    def report() -> None:
        with monitor.run("report") as run:
            run.set_metadata(rows=3)

    with monitor.run("report"):
        report()
    status = monitor.status("report")
    assert status is not None
    assert status.run_count == 1
    assert status.metadata == {"rows": 3}


def test_a_job_inside_another_job_is_a_run_of_its_own(monitor: JobMonitor, otel: Otel) -> None:
    @monitor.job("inner")
    def inner() -> None:
        pass

    with monitor.run("outer"):
        inner()
    outer, inner_status = monitor.status("outer"), monitor.status("inner")
    assert outer is not None
    assert inner_status is not None
    assert (outer.run_count, inner_status.run_count) == (1, 1)
    by_name = {span.name: span for span in otel.spans()}
    assert by_name["inner"].parent is not None
    assert by_name["inner"].parent.span_id == by_name["outer"].context.span_id


def test_after_a_run_the_same_job_runs_again(monitor: JobMonitor) -> None:
    @monitor.job("again")
    def again() -> None:
        pass

    again()
    again()
    with monitor.run("again"):
        pass
    status = monitor.status("again")
    assert status is not None
    assert status.run_count == 3


def test_async_nested_run_is_one_run_and_keeps_the_timeout(
    make_monitor: MonitorFactory,
) -> None:
    monitor = make_monitor(clock=None)

    @monitor.job("fetch", timeout=0.05)
    async def fetch() -> None:
        await asyncio.sleep(30)

    async def scheduled() -> None:
        async with monitor.run("fetch"):
            await fetch()

    with pytest.raises(TimeoutError):
        asyncio.run(scheduled())
    status = monitor.status("fetch")
    assert status is not None
    assert (status.run_count, status.timeout_count) == (1, 1)


def test_a_sync_timeout_inside_its_own_run_counts_once(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(clock=None)
    release = threading.Event()

    @monitor.job("slow", timeout=0.02)
    def slow() -> None:
        release.wait(30)

    with pytest.raises(TimeoutError), monitor.run("slow"):
        slow()
    release.set()
    status = monitor.status("slow")
    assert status is not None
    assert (status.run_count, status.timeout_count, status.last_error_category) == (
        1,
        1,
        "timeout",
    )


def test_a_run_in_an_async_generator_finalized_elsewhere_logs_no_detach_error(
    monitor: JobMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    async def pages() -> AsyncIterator[int]:
        async with monitor.run("pages"):
            yield 1
            yield 2

    async def consume() -> None:
        generator = pages()
        assert await generator.__anext__() == 1
        # Closed from another context than the one the run began in, as the event loop's
        # async generator finalizer does.
        await contextvars.Context().run(asyncio.ensure_future, _close(generator))

    with caplog.at_level(logging.ERROR):
        asyncio.run(consume())
    assert "Failed to detach context" not in caplog.text
    status = monitor.status("pages")
    assert status is not None
    assert (status.run_count, status.active_runs) == (1, 0)


async def _close(generator: AsyncIterator[int]) -> None:
    await generator.aclose()  # type: ignore[attr-defined]


def test_a_run_in_a_task_started_inside_a_run_is_a_run_of_its_own(monitor: JobMonitor) -> None:
    """A task copies the context it was created in, the outer run's span with it; it is still
    another task, whose run may outlive the run that started it."""
    later: list[asyncio.Task[None]] = []

    @monitor.job("poll")
    async def poll(schedule_next: bool) -> None:
        if schedule_next:
            later.append(asyncio.create_task(poll(False)))  # the next poll, on its own
            await asyncio.sleep(0)  # it starts while this run is still open
            return
        await asyncio.sleep(0)
        raise ValueError("the next poll failed")

    async def main() -> None:
        await poll(True)
        with pytest.raises(ValueError, match="next poll failed"):
            await later[0]

    asyncio.run(main())
    status = monitor.status("poll")
    assert status is not None
    assert (status.run_count, status.failure_count, status.state) == (2, 1, JobState.FAILED)


def test_runs_gathered_inside_a_run_of_the_same_job_are_runs_of_their_own(
    monitor: JobMonitor,
) -> None:
    @monitor.job("crawl")
    async def crawl(depth: int) -> None:
        if depth:
            await asyncio.gather(crawl(depth - 1), crawl(depth - 1))  # tasks of their own
            async with monitor.run("crawl"):  # this task: the same run
                pass

    asyncio.run(crawl(1))
    status = monitor.status("crawl")
    assert status is not None
    assert status.run_count == 3


def test_a_run_inside_another_monitors_run_of_that_name_is_a_run(
    make_monitor: MonitorFactory,
) -> None:
    mine = make_monitor()
    theirs = make_monitor(tracer_provider=TracerProvider(shutdown_on_exit=False))

    @mine.job("sync")
    def sync() -> None:
        pass

    with theirs.run("sync"):
        sync()
    status = mine.status("sync")
    assert status is not None
    assert status.run_count == 1


def test_a_nested_call_of_a_job_with_a_timeout_runs_in_the_outer_runs_thread(
    make_monitor: MonitorFactory,
) -> None:
    monitor = make_monitor(clock=None)
    threads: list[int] = []

    @monitor.job("walk", timeout=30)
    def walk(depth: int) -> None:
        threads.append(threading.get_ident())
        if depth:
            walk(depth - 1)  # part of this run: its timeout is this run's

    walk(1)
    assert len(threads) == 2
    assert threads[0] == threads[1]
    status = monitor.status("walk")
    assert status is not None
    assert status.run_count == 1


def test_the_abandoned_runs_own_nested_call_is_not_refused(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(clock=None)
    release = threading.Event()
    done = threading.Event()
    seen: list[object] = []

    @monitor.job("hangs", timeout=0.02)
    def hangs(nested: bool) -> str:
        if nested:
            return "nested"
        release.wait(30)
        try:
            seen.append(hangs(True))  # the abandoned run goes on: a call inside it is part of it
        except BaseException as exc:  # noqa: BLE001 - what the job got is the assertion
            seen.append(exc)
        done.set()
        return "outer"

    with pytest.raises(JobTimeoutError):
        hangs(False)
    release.set()
    assert done.wait(30)
    assert seen == ["nested"]
