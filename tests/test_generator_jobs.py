"""`@monitor.job` on generator and async generator functions: a run spans the iteration
(not the creation of the generator), and a consumer that stops early is not a failure."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Generator, Iterator

import pytest
from opentelemetry import trace

from jobpulse import JobMonitor, JobState
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, Otel


def test_a_generator_run_spans_its_iteration(
    monitor: JobMonitor, clock: FakeClock, otel: Otel
) -> None:
    @monitor.job("pages")
    def pages() -> Iterator[int]:
        for page in range(3):
            clock.advance(0.1)
            yield page
        return None

    generator = pages()
    assert monitor.status("pages").run_count == 0  # type: ignore[union-attr]  # not started
    assert next(generator) == 0
    assert monitor.status("pages").state is JobState.RUNNING  # type: ignore[union-attr]
    clock.advance(1)  # the consumer's own time counts: the run is the iteration
    assert list(generator) == [1, 2]
    status = monitor.status("pages")
    assert status is not None
    assert (status.state, status.run_count) == (JobState.SUCCESS, 1)
    assert status.last_duration_seconds == pytest.approx(1.3)
    (span,) = otel.spans()
    assert span.name == "pages"


def test_the_span_is_current_only_while_the_generator_runs(monitor: JobMonitor, otel: Otel) -> None:
    seen: list[str] = []
    tracer = otel.tracer_provider.get_tracer("app")

    @monitor.job("rows")
    def rows() -> Iterator[int]:
        with tracer.start_as_current_span("fetch"):
            yield 1
        yield 2

    for _ in rows():
        seen.append(getattr(trace.get_current_span(), "name", ""))
    assert "rows" not in seen
    by_name = {span.name: span for span in otel.spans()}
    assert by_name["fetch"].parent is not None
    assert by_name["fetch"].parent.span_id == by_name["rows"].context.span_id


def test_a_consumer_that_stops_early_is_not_a_failure(monitor: JobMonitor) -> None:
    closed: list[bool] = []

    @monitor.job("stream")
    def stream() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    for item in stream():
        if item == 2:
            break
    assert closed == [True]
    status = monitor.status("stream")
    assert status is not None
    assert (status.state, status.run_count, status.active_runs) == (JobState.SUCCESS, 1, 0)


def test_a_generator_that_raises_fails_its_run_with_its_own_exception(
    monitor: JobMonitor,
) -> None:
    error = ValueError("bad row")

    @monitor.job("parse")
    def parse() -> Iterator[int]:
        yield 1
        raise error

    generator = parse()
    assert next(generator) == 1
    with pytest.raises(ValueError, match="bad row") as caught:
        next(generator)
    assert caught.value is error
    status = monitor.status("parse")
    assert status is not None
    assert (status.state, status.last_error) == (JobState.FAILED, "ValueError: bad row")


def test_send_throw_and_the_return_value_pass_through(monitor: JobMonitor) -> None:
    @monitor.job("echo")
    def echo() -> Generator[object, object, str]:
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "handled"
        return "done"

    generator = echo()
    assert next(generator) == "ready"
    assert generator.send(5) == "got 5"
    assert generator.throw(KeyError("k")) == "handled"
    with pytest.raises(StopIteration) as stop:
        next(generator)
    assert stop.value.value == "done"
    assert monitor.status("echo").state is JobState.SUCCESS  # type: ignore[union-attr]


def test_async_generator_runs_span_the_iteration(
    monitor: JobMonitor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    @monitor.job("feed")
    async def feed() -> AsyncIterator[int]:
        for item in range(5):
            clock.advance(0.2)
            await asyncio.sleep(0)
            yield item

    @monitor.job("broken_feed")
    async def broken_feed() -> AsyncIterator[int]:
        yield 1
        raise ConnectionResetError("socket closed")

    async def consume() -> None:
        async for item in feed():
            if item == 1:
                break  # the event loop's finalizer closes it, in a task of its own
        for _ in range(3):
            await asyncio.sleep(0)  # that task runs
        with pytest.raises(ConnectionResetError, match="socket closed"):
            async for _ in broken_feed():
                pass

    with caplog.at_level(logging.ERROR):
        asyncio.run(consume())
    assert "Failed to detach context" not in caplog.text
    status = monitor.status("feed")
    assert status is not None
    assert (status.state, status.run_count, status.active_runs) == (JobState.SUCCESS, 1, 0)
    assert status.last_duration_seconds == pytest.approx(0.4)
    broken = monitor.status("broken_feed")
    assert broken is not None
    assert (broken.state, broken.last_error_category) == (JobState.FAILED, "network")


def test_a_stalled_generator_collected_in_a_reference_cycle_counts_once(
    make_monitor: MonitorFactory, clock: FakeClock
) -> None:
    """The collector clears the weak reference to the run's span (closing the run as lost)
    before it finalizes the generator (closing the run again): one run all the same."""
    monitor = make_monitor(stall_after=60)

    class Indexer:
        def __init__(self) -> None:
            self.pages = self.stream()  # the generator's frame holds self: a cycle

        @monitor.job("stream")
        def stream(self) -> Iterator[int]:
            yield 1
            yield 2

    indexer = Indexer()
    assert next(indexer.pages) == 1
    clock.advance(61)  # stalled: its span is held weakly from now on
    del indexer
    gc.collect()
    status = monitor.status("stream")
    assert status is not None
    assert (status.run_count, status.active_runs) == (1, 0)


def test_the_generators_own_current_span_lasts_across_its_yields(
    monitor: JobMonitor, otel: Otel
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")

    @monitor.job("pages")
    def pages() -> Iterator[int]:
        with tracer.start_as_current_span("page"):
            yield 1
            with tracer.start_as_current_span("after_yield"):  # still inside "page"
                pass

    assert list(pages()) == [1]
    by_name = {span.name: span for span in otel.spans()}
    assert by_name["after_yield"].parent is not None
    assert by_name["after_yield"].parent.span_id == by_name["page"].context.span_id


def test_the_async_generators_own_current_span_lasts_across_its_yields(
    monitor: JobMonitor, otel: Otel
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")

    @monitor.job("feed")
    async def feed() -> AsyncIterator[int]:
        with tracer.start_as_current_span("batch"):
            yield 1
            await asyncio.sleep(0)
            with tracer.start_as_current_span("after_yield"):
                pass

    async def consume() -> list[int]:
        return [item async for item in feed()]

    assert asyncio.run(consume()) == [1]
    by_name = {span.name: span for span in otel.spans()}
    assert by_name["after_yield"].parent is not None
    assert by_name["after_yield"].parent.span_id == by_name["batch"].context.span_id
    assert by_name["batch"].parent is not None
    assert by_name["batch"].parent.span_id == by_name["feed"].context.span_id
