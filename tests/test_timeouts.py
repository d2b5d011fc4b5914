"""Timeouts (decision 7): async jobs are cancelled, sync jobs are abandoned in their thread.

These use real time, with deadlines of a few hundredths of a second; nothing waits for a
deadline that is not part of the assertion.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading

import pytest
from opentelemetry.trace import StatusCode

from jobpulse import JobMonitor, JobSkippedError, JobState, JobTimeoutError, _monitor
from tests.conftest import MonitorFactory, Otel

SHORT = 0.05


@pytest.fixture
def monitor(make_monitor: MonitorFactory) -> JobMonitor:
    """A monitor on the real clock: thread waits and asyncio timers use real time."""
    return make_monitor(clock=None)


def test_sync_timeout_raises_at_the_deadline_and_abandons_the_thread(
    monitor: JobMonitor, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    returned = threading.Event()

    @monitor.job("btc_transaction_indexing", timeout=SHORT)
    def index() -> str:
        release.wait(30)
        returned.set()
        return "late"

    with pytest.raises(JobTimeoutError) as caught:
        index()
    assert isinstance(caught.value, TimeoutError)
    assert str(caught.value) == "job 'btc_transaction_indexing' timed out after 0.05s"
    assert caught.value.timeout_seconds == SHORT

    status = monitor.status("btc_transaction_indexing")
    assert status is not None
    assert status.state is JobState.FAILED
    assert status.timeout_count == 1
    assert status.last_error_category == "timeout"
    assert (
        status.last_error == "JobTimeoutError: job 'btc_transaction_indexing' timed out after 0.05s"
    )
    assert status.active_runs == 0
    assert monitor.abandoned_threads("btc_transaction_indexing") == 1
    (span,) = otel.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["job.timed_out"] is True
    runs = otel.metrics()["job.timeouts"]
    assert runs[(("job.name", "btc_transaction_indexing"),)] == 1

    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        release.set()
        assert returned.wait(10)
        for thread in threading.enumerate():
            if thread.name.startswith("jobpulse-job-btc"):
                thread.join(10)
    assert monitor.abandoned_threads("btc_transaction_indexing") == 0
    assert "abandoned at its 0.05s timeout returned after" in caplog.text
    assert "(ok); 0 abandoned threads of this job still running" in caplog.text
    status = monitor.status("btc_transaction_indexing")
    assert status is not None
    assert status.run_count == 1  # the late return is not a second run


def test_sync_job_with_timeout_that_finishes_in_time(monitor: JobMonitor, otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    threads: list[str] = []

    @monitor.job("quick", timeout=30)
    def quick(x: int) -> int:
        threads.append(threading.current_thread().name)
        with tracer.start_as_current_span("inner"):
            return x + 1

    assert quick(1) == 2
    assert threads == ["jobpulse-job-quick"]
    inner, job = otel.spans()
    assert inner.parent is not None
    assert inner.parent.span_id == job.context.span_id  # context follows the run into its thread
    status = monitor.status("quick")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.timeout_count == 0


def test_sync_job_with_timeout_reraises_its_own_exception(monitor: JobMonitor) -> None:
    error = PermissionError("denied")

    @monitor.job("strict", timeout=30)
    def strict() -> None:
        raise error

    with pytest.raises(PermissionError) as caught:
        strict()
    assert caught.value is error
    status = monitor.status("strict")
    assert status is not None
    assert status.failure_count == 1
    assert status.timeout_count == 0


def test_interrupt_while_waiting_is_recorded(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    @monitor.job("waited", timeout=30)
    def waited() -> None:
        release.wait(30)

    class InterruptedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the caller waits

    class InterruptedOutcome(_monitor._Outcome):
        def __init__(self) -> None:
            super().__init__()
            self.done = InterruptedEvent()

    monkeypatch.setattr(_monitor, "_Outcome", InterruptedOutcome)
    with pytest.raises(KeyboardInterrupt):
        waited()
    status = monitor.status("waited")
    assert status is not None
    assert status.last_error_category == "interrupted"
    assert monitor.abandoned_threads("waited") == 1
    release.set()


def test_async_timeout_cancels_the_job(monitor: JobMonitor, otel: Otel) -> None:
    cancelled = []

    @monitor.job("swap_request_processing", timeout=SHORT)
    async def process() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        with pytest.raises(JobTimeoutError) as caught:
            await process()
        assert isinstance(caught.value.__cause__, asyncio.CancelledError)
        task = asyncio.current_task()
        assert task is not None
        cancelling = getattr(task, "cancelling", lambda: 0)  # Python >= 3.11
        assert cancelling() == 0  # the task itself is not left cancelled

    asyncio.run(main())
    assert cancelled == [True]
    status = monitor.status("swap_request_processing")
    assert status is not None
    assert status.timeout_count == 1
    assert status.last_error_category == "timeout"
    (span,) = otel.spans()
    assert span.attributes is not None
    assert span.attributes["job.timed_out"] is True


def test_async_job_that_finishes_in_time(monitor: JobMonitor) -> None:
    @monitor.job("fast", timeout=30)
    async def fast() -> str:
        await asyncio.sleep(0)
        return "done"

    assert asyncio.run(fast()) == "done"
    assert monitor.status("fast").timeout_count == 0  # type: ignore[union-attr]


def test_async_jobs_own_timeout_error_is_not_the_jobs_timeout(monitor: JobMonitor) -> None:
    @monitor.job("own", timeout=30)
    async def own() -> None:
        await asyncio.wait_for(asyncio.sleep(30), timeout=0.001)

    with pytest.raises(asyncio.TimeoutError) as caught:  # TimeoutError from Python 3.11
        asyncio.run(own())
    assert not isinstance(caught.value, JobTimeoutError)
    status = monitor.status("own")
    assert status is not None
    assert status.timeout_count == 0
    assert status.last_error_category == "timeout"


def test_async_run_block_with_timeout(monitor: JobMonitor) -> None:
    monitor.register("block", timeout=SHORT)

    async def main() -> None:
        with pytest.raises(JobTimeoutError):
            async with monitor.run("block"):
                await asyncio.sleep(30)

    asyncio.run(main())
    assert monitor.status("block").timeout_count == 1  # type: ignore[union-attr]


@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="telling the two apart needs Task.uncancel (3.11+)"
)
def test_async_cancel_from_outside_is_not_a_timeout(monitor: JobMonitor) -> None:
    """A task cancelled by its owner while its timeout also fires stays cancelled."""
    monitor.register("both", timeout=SHORT)
    reached = []

    async def job() -> None:
        async with monitor.run("both"):
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                reached.append("cancelled")
                await asyncio.sleep(SHORT * 3)  # the timeout fires while we are still inside
                raise

    async def main() -> None:
        task = asyncio.create_task(job())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert reached == ["cancelled"]
    status = monitor.status("both")
    assert status is not None
    assert status.last_error_category == "cancelled"


def test_a_hung_sync_job_leaves_one_thread_behind_and_refuses_calls_meanwhile(
    monitor: JobMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    @monitor.job("hangs", timeout=0.01)
    def hang() -> None:
        release.wait(30)

    def job_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("jobpulse-job-hangs")]

    with pytest.raises(JobTimeoutError):
        hang()
    refused = 0
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        for _ in range(299):
            with pytest.raises(JobSkippedError) as caught:
                hang()
            refused += 1
    assert refused == 299
    assert caught.value.job_name == "hangs"
    assert caught.value.reason == "abandoned_thread"
    assert "still running in its thread" in str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert len(job_threads()) == 1
    assert monitor.abandoned_threads("hangs") == 1
    status = monitor.status("hangs")
    assert status is not None
    assert (status.run_count, status.timeout_count) == (1, 1)
    assert (status.skipped_count, status.last_skip_reason) == (299, "abandoned_thread")
    assert "a due run was skipped (abandoned_thread)" in caplog.text

    release.set()
    for thread in job_threads():
        thread.join(10)
    assert monitor.abandoned_threads("hangs") == 0
    hang()  # runs again once the hung thread has returned (and now returns at once)
    status = monitor.status("hangs")
    assert status is not None
    assert (status.run_count, status.state) == (2, JobState.SUCCESS)


def test_a_job_returning_as_its_caller_gives_up_on_it_leaves_no_thread_counted(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's thread returns right after its caller found it unfinished at the deadline,
    before the caller counted it as abandoned (real threads; the interleaving is forced)."""
    outcomes: list[_monitor._Outcome] = []

    class RecordedOutcome(_monitor._Outcome):
        def __init__(self) -> None:
            super().__init__()
            outcomes.append(self)

    go = threading.Event()
    job_counted = threading.Event()
    caller = threading.get_ident()

    class Interleaving:
        """The monitor's lock for its abandoned-thread counts; at the caller's second use
        (counting the thread it gives up on) the job's thread is let through first, unless
        the caller still holds the run's outcome lock (then the job thread cannot pass)."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.caller_uses = 0

        def __enter__(self) -> None:
            if threading.get_ident() == caller:
                self.caller_uses += 1
                if self.caller_uses == 2:
                    go.set()
                    if not outcomes[-1].lock.locked():
                        assert job_counted.wait(30)
            self.lock.acquire()

        def __exit__(self, *exc_info: object) -> None:
            self.lock.release()
            if threading.get_ident() != caller:
                job_counted.set()

    monkeypatch.setattr(_monitor, "_Outcome", RecordedOutcome)
    monkeypatch.setattr(monitor, "_abandoned_lock", Interleaving())

    @monitor.job("edge", timeout=SHORT)
    def edge() -> str:
        go.wait(30)
        return "late"

    with pytest.raises(JobTimeoutError):
        edge()
    for thread in threading.enumerate():
        if thread.name.startswith("jobpulse-job-edge"):
            thread.join(10)
    assert monitor.abandoned_threads("edge") == 0  # nothing of the job is running
    go.clear()
    go.set()
    edge()  # and it runs again
