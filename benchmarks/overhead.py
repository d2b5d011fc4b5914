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

Target: jobpulse sync costs at most 0.7x the raw recipe. The ratio, not the absolute
figures, is the result: both sides run on the same SDK, the same machine, the same minute.

    python benchmarks/overhead.py [--runs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from jobpulse import JobMonitor

TARGET_RATIO = 0.7


def job() -> int:
    return 1


async def async_job() -> int:
    return 1


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
    meter = meter_provider.get_meter("raw")
    raw_tracer = TracerProvider(shutdown_on_exit=False).get_tracer("raw")
    duration = meter.create_histogram("raw.background_job.duration", unit="s")
    runs_total = meter.create_counter("raw.background_job.runs")
    active = meter.create_up_down_counter("raw.background_jobs.active")
    job_attributes = {"job.name": "raw_job"}
    run_attributes = {"job.name": "raw_job", "status": "success"}

    def raw_loop(n: int) -> None:
        for _ in range(n):
            with raw_tracer.start_as_current_span("raw_job", attributes=job_attributes):
                active.add(1, job_attributes)
                started = time.perf_counter()
                job()
                elapsed = time.perf_counter() - started
                active.add(-1, job_attributes)
            duration.record(elapsed, run_attributes)
            runs_total.add(1, run_attributes)

    tracer_provider = TracerProvider(shutdown_on_exit=False)
    monitor = JobMonitor(tracer_provider, meter_provider)
    monitored = monitor.job("monitored_job")(job)
    monitored_async = monitor.job("monitored_async_job")(async_job)

    def bare_loop(n: int) -> None:
        for _ in range(n):
            job()

    def sync_loop(n: int) -> None:
        for _ in range(n):
            monitored()

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

    samples = measure(
        {
            "bare call": bare_loop,
            "raw OpenTelemetry recipe": raw_loop,
            "jobpulse @monitor.job sync": sync_loop,
            "jobpulse @monitor.job async": async_loop,
            "plain span, no jobpulse": plain_span_loop(raw_tracer),
            "plain span, jobpulse on": plain_span_loop(plain_tracer),
        },
        args.runs,
        args.repeats,
    )
    status = monitor.status("monitored_job")
    assert status is not None
    assert status.success_count >= args.runs * args.repeats
    monitor.shutdown()
    tracer_provider.shutdown()
    meter_provider.shutdown()

    raw = samples["raw OpenTelemetry recipe"]
    print(f"{'case':<30} {'us/run':>9} {'x raw':>7}")
    for name, values in samples.items():
        ratios = [value / base for value, base in zip(values, raw, strict=True)]
        print(f"{name:<30} {statistics.median(values):>9.2f} {statistics.median(ratios):>7.2f}")
    ratio = statistics.median(
        sync / base for sync, base in zip(samples["jobpulse @monitor.job sync"], raw, strict=True)
    )
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"target: jobpulse sync <= {TARGET_RATIO}x raw recipe: {ratio:.2f}x {verdict}")
    print(f"({args.runs} runs x {args.repeats} repeats per row, Python {sys.version.split()[0]})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
