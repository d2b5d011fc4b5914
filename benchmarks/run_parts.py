"""What each part of a monitored run costs, measured one part at a time.

Rows (microseconds per call, median of rounds that interleave the rows):
  span alone                 a current span with jobpulse's two attributes, on a tracer
                             provider without jobpulse: the floor any run pays
  span on jobpulse's tracer  the same span on the provider jobpulse watches: its sampler
                             wrapper, its span processor and the status view's
                             start_run/end_run
  monitored run              @monitor.job on a no-op function: the above plus the
                             decorator (nested-run checks, clocks, context, timeout)
  histogram record           one Histogram.record, what each run cost before batching
  fold, per run              folding 1,024 waiting durations into the histogram, per run
  view start+end             StatusRegistry.start_run + end_run of one run
  history add                RunHistory.add at its capacity (4,096 runs)
  raw recipe                 the raw OpenTelemetry recipe of benchmarks/overhead.py
                             (the loop and the rounds are that script's)

The differences between rows are the parts: docs/performance.md explains them.

    python benchmarks/run_parts.py [--runs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from overhead import measure, raw_recipe

from jobpulse import JobMonitor
from jobpulse._duration import FOLD_AT, Batch, DurationRecorder
from jobpulse._history import RunHistory

ATTRIBUTES = {"job.name": "parts", "code.function.name": "__main__.job"}


def job() -> int:
    return 1


def span_loop(tracer: trace.Tracer) -> Callable[[int], None]:
    """A current span per call, started and ended as jobpulse's decorator does."""

    def loop(n: int) -> None:
        for _ in range(n):
            span = tracer.start_span("parts", attributes=ATTRIBUTES, start_time=time.time_ns())
            token = context_api.attach(trace.set_span_in_context(span))
            try:
                job()
            finally:
                context_api.detach(token)
                span.end(end_time=time.time_ns())

    return loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000, help="calls per timed loop")
    parser.add_argument("--repeats", type=int, default=7, help="timed loops per row")
    args = parser.parse_args(argv)

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    plain = TracerProvider(shutdown_on_exit=False)
    watched = TracerProvider(shutdown_on_exit=False)
    monitor = JobMonitor(watched, meter_provider)
    monitored = monitor.job("parts")(job)
    raw_meter = meter_provider.get_meter("parts")
    histogram = raw_meter.create_histogram("parts.duration", unit="s")
    run_attributes = {"job.name": "parts", "status": "success"}

    def monitored_loop(n: int) -> None:
        for _ in range(n):
            monitored()

    def record_loop(n: int) -> None:
        for _ in range(n):
            histogram.record(0.001, run_attributes)

    waiting: list[Batch] = []
    fold_histogram = raw_meter.create_histogram("fold.duration", unit="s")
    recorder = DurationRecorder(fold_histogram, lambda: [waiting.pop()] if waiting else [])

    def fold_loop(n: int) -> None:
        # FOLD_AT values at a time, as a collection or the FOLD_AT-th run folds them.
        for start in range(0, n, FOLD_AT):
            waiting.append((run_attributes, [0.001] * min(FOLD_AT, n - start)))
            recorder.fold()

    registry = monitor._registry
    ids = itertools.count(1)
    handle = object()

    def view_loop(n: int) -> None:
        for _ in range(n):
            run_id = next(ids)
            registry.start_run("parts", run_id, handle, 1_000)
            registry.end_run("parts", run_id, 1_000, 2_000)

    history = RunHistory(4096)
    clock = itertools.count(10**18, 1_000)

    def history_loop(n: int) -> None:
        for _ in range(n):
            now = next(clock)
            history.add(now - 500, 500, 0, now)

    loops: dict[str, Callable[[int], None]] = {
        "span alone": span_loop(plain.get_tracer("plain")),
        "span on jobpulse's tracer": span_loop(watched.get_tracer("watched")),
        "monitored run": monitored_loop,
        "histogram record": record_loop,
        "fold, per run": fold_loop,
        "view start+end": view_loop,
        "history add": history_loop,
        "raw recipe": raw_recipe(meter_provider, plain.get_tracer("raw")),
    }
    for loop in loops.values():
        loop(5000)  # the histories full, as in a long-running process
    samples = measure(loops, args.runs, args.repeats)
    monitor.shutdown()
    for provider in (plain, watched):
        provider.shutdown()
    meter_provider.shutdown()

    print(f"{'part':<28} {'us/call':>9}")
    for name, values in samples.items():
        print(f"{name:<28} {statistics.median(values):>9.2f}")
    print(f"({args.runs} calls x {args.repeats} repeats per row, Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
