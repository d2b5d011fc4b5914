"""Per-run overhead of jobpulse against the raw OpenTelemetry recipe, in one process.

Rows (microseconds per run, median of repeats; "x raw" is the median of the ratios to the
raw recipe measured in the same round):
  bare call              the job function alone
  raw OpenTelemetry      a current span, a histogram record, a counter add and two
                         up-down counter adds (active +1/-1): what the spec's Go code does,
                         written directly against the same SDK
  jobpulse sync          @monitor.job on a sync function
  jobpulse async         @monitor.job on an async function, awaited in a running loop
  plain span             a span without job.name, on a provider without and with
                         jobpulse's processor: what jobpulse costs spans that are not jobs
  N threads              the raw recipe and jobpulse (sync and async: an event loop per
                         thread) run by 8 and by 64 threads at once, started together; a
                         run's cost is the round's wall time over its runs, and "x raw" is
                         against the raw recipe at the same thread count
  SQLite / Redis store   jobpulse sync on a monitor with a store (a SQLite file in a
                         temporary folder; a redis-server this script starts, when
                         Debian's redis-server is installed): its publisher thread writes
                         every second
  histogram run by run   jobpulse sync with the duration histogram recorded by an inline
                         `record` per run, as when batching is refused (see
                         jobpulse._duration): what batching saves
  prometheus_client      the same instruments with prometheus_client alone (a histogram
                         observe, a counter inc and an in-progress gauge, labelled), what a
                         team would write without OpenTelemetry
  Sentry crons           sentry-sdk's crons decorator with a transport that sends nothing,
                         when sentry-sdk is installed (else the row says so)

Targets (each a ratio to the raw recipe run the same way, in the same rounds): jobpulse
sync and async at most 0.45x with one thread, and with a SQLite or a Redis store; at most
0.60x with 8 and with 64 threads. The ratio, not the absolute figures, is the result: both
sides run on the same SDK, the same machine, the same minute.

    python benchmarks/overhead.py [--runs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from jobpulse import JobMonitor, _duration

THREAD_COUNTS = (8, 64)
RAW = "raw OpenTelemetry recipe"
SYNC = "jobpulse @monitor.job sync"
ASYNC = "jobpulse @monitor.job async"
SQLITE = "jobpulse sync, SQLite store"
REDIS = "jobpulse sync, Redis store"
#: The most each row may cost, as a ratio to the raw recipe at the same thread count.
TARGETS = {
    SYNC: 0.45,
    ASYNC: 0.45,
    SQLITE: 0.45,
    REDIS: 0.45,
    **{f"jobpulse {kind}, {n} threads": 0.60 for n in THREAD_COUNTS for kind in ("sync", "async")},
}


def job() -> int:
    return 1


async def async_job() -> int:
    return 1


def threaded(loop: Callable[[int], None], threads: int) -> Callable[[int], None]:
    """`loop` run by `threads` threads at once for `n` runs in all, started together."""

    def run(n: int) -> None:
        share = max(n // threads, 1)
        gate = threading.Barrier(threads)

        def work() -> None:
            gate.wait()
            loop(share)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return run


def prometheus_client_loop() -> Callable[[int], None] | None:
    """The recipe with prometheus_client alone, or None without it."""
    try:
        import prometheus_client
    except ImportError:
        return None
    registry = prometheus_client.CollectorRegistry()
    duration = prometheus_client.Histogram(
        "job_duration_seconds", "Duration.", ["job_name", "status"], registry=registry
    )
    runs_total = prometheus_client.Counter(
        "job_runs", "Runs.", ["job_name", "status"], registry=registry
    )
    active = prometheus_client.Gauge("jobs_active", "Active.", ["job_name"], registry=registry)

    def loop(n: int) -> None:
        for _ in range(n):
            with active.labels("prom_job").track_inprogress():
                started = time.perf_counter()
                job()
                elapsed = time.perf_counter() - started
            duration.labels("prom_job", "success").observe(elapsed)
            runs_total.labels("prom_job", "success").inc()

    return loop


def sentry_crons_loop() -> Callable[[int], None] | None:
    """sentry-sdk's crons decorator on the job, with a transport that sends nothing; None
    without sentry-sdk."""
    try:
        import sentry_sdk
        from sentry_sdk.crons import monitor as sentry_monitor
        from sentry_sdk.transport import Transport
    except ImportError:
        return None

    class NoTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            pass

    # No default integrations: they would patch threads and logging for the other rows too.
    sentry_sdk.init(
        dsn="https://key@127.0.0.1/1",
        transport=NoTransport,
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    crons_job = sentry_monitor(monitor_slug="crons-job")(job)

    def loop(n: int) -> None:
        for _ in range(n):
            crons_job()

    return loop


def raw_recipe(meter_provider: MeterProvider, tracer: Tracer) -> Callable[[int], None]:
    """The raw recipe's loop: what the spec's Go code does for a run, written directly
    against the SDK (a current span, a histogram record, a counter add, and an up-down
    counter added to and taken from)."""
    meter = meter_provider.get_meter("raw")
    duration = meter.create_histogram("raw.background_job.duration", unit="s")
    runs_total = meter.create_counter("raw.background_job.runs")
    active = meter.create_up_down_counter("raw.background_jobs.active")
    job_attributes = {"job.name": "raw_job"}
    run_attributes = {"job.name": "raw_job", "status": "success"}

    def loop(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("raw_job", attributes=job_attributes):
                active.add(1, job_attributes)
                started = time.perf_counter()
                job()
                elapsed = time.perf_counter() - started
                active.add(-1, job_attributes)
            duration.record(elapsed, run_attributes)
            runs_total.add(1, run_attributes)

    return loop


def measure(
    loops: dict[str, Callable[[int], None]], runs: int, repeats: int
) -> dict[str, list[float]]:
    """Microseconds per run of each loop, one sample per round of `runs` runs.

    Rounds interleave the cases, so that a burst of load on the machine hits every case
    alike and per-round ratios stay meaningful.
    """
    for loop in loops.values():
        loop(min(runs, 1000))  # warm up
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            started = time.perf_counter()
            loop(runs)
            samples[name].append((time.perf_counter() - started) / runs * 1e6)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="runs per timed loop")
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per row")
    args = parser.parse_args(argv)

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    raw_tracer = TracerProvider(shutdown_on_exit=False).get_tracer("raw")
    raw_loop = raw_recipe(meter_provider, raw_tracer)

    tracer_provider = TracerProvider(shutdown_on_exit=False)
    monitor = JobMonitor(tracer_provider, meter_provider)
    monitored = monitor.job("monitored_job")(job)
    monitored_async = monitor.job("monitored_async_job")(async_job)

    bare_loop = repeat(job)

    sync_loop = repeat(monitored)

    def async_loop(n: int) -> None:
        async def body() -> None:
            for _ in range(n):
                await monitored_async()

        asyncio.run(body())

    plain_tracer = tracer_provider.get_tracer("app")

    def plain_span_loop(tracer: Tracer) -> Callable[[int], None]:
        def loop(n: int) -> None:
            for _ in range(n):
                with tracer.start_as_current_span("request"):
                    job()

        return loop

    folder = tempfile.TemporaryDirectory(prefix="jobpulse-overhead-")
    stores = {SQLITE: f"sqlite:///{Path(folder.name) / 'jobs.db'}"}
    redis_server = redis_backend(Path(folder.name))
    if redis_server is not None:
        stores[REDIS] = redis_server.url("overhead")
    store_providers = []
    store_monitors = []
    store_loops: dict[str, Callable[[int], None]] = {}
    for name, url in stores.items():
        provider = TracerProvider(shutdown_on_exit=False)
        stored = JobMonitor(provider, meter_provider, store=url)
        store_providers.append(provider)
        store_monitors.append(stored)
        store_loops[name] = repeat(stored.job("stored_job")(job))

    inline_provider = TracerProvider(shutdown_on_exit=False)
    refusal = _duration.batching_refusal
    _duration.batching_refusal = lambda histogram: "the benchmark's inline row"
    try:
        inline = JobMonitor(inline_provider, meter_provider, namespace="inline")
    finally:
        _duration.batching_refusal = refusal

    loops: dict[str, Callable[[int], None]] = {
        "bare call": bare_loop,
        RAW: raw_loop,
        SYNC: sync_loop,
        ASYNC: async_loop,
        "plain span, no jobpulse": plain_span_loop(raw_tracer),
        "plain span, jobpulse on": plain_span_loop(plain_tracer),
        **store_loops,
        "jobpulse sync, histogram run by run": repeat(inline.job("inline_job")(job)),
    }
    # Each row's ratio is to the raw recipe run the same way.
    baseline = dict.fromkeys(loops, RAW)
    for threads in THREAD_COUNTS:
        raw_name = f"{RAW}, {threads} threads"
        loops[raw_name] = threaded(raw_loop, threads)
        for kind, loop in (("sync", sync_loop), ("async", async_loop)):
            name = f"jobpulse {kind}, {threads} threads"
            loops[name] = threaded(loop, threads)
            baseline[name] = raw_name
        baseline[raw_name] = raw_name
    missing = []
    if REDIS not in loops:
        missing.append(REDIS)
    for name, optional in (
        ("prometheus_client alone", prometheus_client_loop()),
        ("Sentry crons decorator", sentry_crons_loop()),
    ):
        if optional is None:
            missing.append(name)
        else:
            loops[name] = optional
            baseline[name] = RAW
    samples = measure(loops, args.runs, args.repeats)
    status = monitor.status("monitored_job")
    assert status is not None
    assert status.success_count >= args.runs * args.repeats
    for each in (monitor, inline, *store_monitors):
        each.shutdown()
    if redis_server is not None:
        redis_server.close()
    folder.cleanup()
    for provider in (tracer_provider, inline_provider, *store_providers):
        provider.shutdown()
    meter_provider.shutdown()

    ratios = {
        name: statistics.median(
            value / raw for value, raw in zip(values, samples[baseline[name]], strict=True)
        )
        for name, values in samples.items()
    }
    print(f"{'case':<36} {'us/run':>9} {'x raw':>7}")
    for name, values in samples.items():
        print(f"{name:<36} {statistics.median(values):>9.2f} {ratios[name]:>7.2f}")
    for name in missing:
        print(f"{name:<36} {'-':>9} {'-':>7}  (not installed)")
    failed = 0
    for name, target in TARGETS.items():
        if name not in ratios:
            print(f"target: {name} <= {target}x: not measured (not installed)")
            continue
        verdict = "PASS" if ratios[name] <= target else "FAIL"
        failed += verdict == "FAIL"
        print(f"target: {name} <= {target}x: {ratios[name]:.3f}x {verdict}")
    print(f"({args.runs} runs x {args.repeats} repeats per row, Python {sys.version.split()[0]})")
    return 1 if failed else 0


def repeat(call: Callable[[], object]) -> Callable[[int], None]:
    """A loop calling `call` `n` times."""

    def loop(n: int) -> None:
        for _ in range(n):
            call()

    return loop


def redis_backend(folder: Path) -> Any:
    """A redis-server of this run's own (see benchmarks/store.py), or None without one."""
    try:
        import redis  # noqa: F401 - only whether it is there
    except ImportError:
        return None
    if shutil.which("redis-server") is None:
        return None
    from store import RedisBackend

    return RedisBackend(folder)


if __name__ == "__main__":
    sys.exit(main())
