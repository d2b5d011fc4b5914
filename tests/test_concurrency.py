"""The spec's thread-safety test, at scale: counts stay exact under contention."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import JobMonitor, JobState
from tests.conftest import MonitorFactory, Otel

THREADS = 64
RUNS_PER_THREAD = 1000


def test_64_threads_of_1000_runs_count_exactly(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """64 threads each run one job 1,000 times, half through the decorator and half through
    run(), one run in 50 failing. Every count, in the view and in the metrics, is exact."""
    caplog.set_level(logging.ERROR, logger="jobpulse")  # 1,280 failure warnings otherwise
    provider = TracerProvider(shutdown_on_exit=False)  # no exporter: only the view matters
    monitor = JobMonitor(provider, otel.meter_provider)
    barrier = threading.Barrier(THREADS)

    @monitor.job("shared")
    def shared(fail: bool) -> None:
        if fail:
            raise ValueError("one in fifty")

    def worker(index: int) -> None:
        barrier.wait()
        for run in range(RUNS_PER_THREAD):
            fail = run % 50 == 0
            try:
                if index % 2:
                    shared(fail)
                else:
                    with monitor.run("shared"):
                        shared.__wrapped__(fail)  # type: ignore[attr-defined]
            except ValueError:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = otel.metrics()
    finally:
        monitor.shutdown()
        provider.shutdown()

    total = THREADS * RUNS_PER_THREAD
    failures = total // 50
    status = monitor.status("shared")
    assert status is not None
    assert status.state in (JobState.SUCCESS, JobState.FAILED)
    assert status.success_count == total - failures
    assert status.failure_count == failures
    assert status.active_runs == 0
    runs = metrics["background_job.runs"]
    assert runs[(("job.name", "shared"), ("status", "success"))] == total - failures
    assert runs[(("job.name", "shared"), ("status", "failed"))] == failures
    failed = metrics["background_job.duration"][(("job.name", "shared"), ("status", "failed"))]
    assert isinstance(failed, HistogramDataPoint)
    assert failed.count == failures


def test_concurrent_async_runs_overlap(monitor: JobMonitor) -> None:
    @monitor.job("fanout")
    async def fanout(gate: asyncio.Event) -> None:
        await gate.wait()

    async def main() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(fanout(gate)) for _ in range(50)]
        await asyncio.sleep(0)
        assert monitor.status("fanout").active_runs == 50  # type: ignore[union-attr]
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    status = monitor.status("fanout")
    assert status is not None
    assert (status.success_count, status.active_runs) == (50, 0)


def test_readers_while_writers_run(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(clock=None)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        while not stop.is_set():
            with monitor.run("busy"):
                pass

    def read() -> None:
        try:
            for _ in range(200):
                document = monitor.health().to_dict()
                summary = document["summary"]
                assert summary["total_jobs"] == len(document["jobs"])
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for thread in writers:
        thread.start()
    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    stop.set()
    for thread in writers:
        thread.join()
    assert errors == []
    assert monitor.status("busy").active_runs == 0  # type: ignore[union-attr]
