"""Memory of a day of runs: 100 scheduled jobs, each running once a minute for 24 hours.

That is 144,000 runs, 1 in 50 failing, driven through `JobMonitor.run` on a fake clock (the
day passes in under a minute). Measured with tracemalloc: everything allocated from the
moment the monitor is created (its instruments and the SDK's aggregation state included) and
still alive at the end, after a health document has been built. The baseline, measured in
the same run, is the same monitor with the same jobs registered and no runs.

Target: at most 4 MB added by the day of runs, history included.

    python benchmarks/memory.py [--jobs N] [--minutes N]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tracemalloc
from datetime import timedelta

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import JobMonitor
from jobpulse.testing import FakeClock

TARGET_BYTES = 4 * 1024 * 1024


class Boom(RuntimeError):
    pass


def day_of_runs(jobs: int, minutes: int) -> tuple[int, int, int]:
    """(bytes with the jobs registered, bytes after the runs, runs held in histories)."""
    clock = FakeClock()
    tracer_provider = TracerProvider(shutdown_on_exit=False)  # no exporter: spans are dropped
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    gc.collect()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    monitor = JobMonitor(tracer_provider, meter_provider, clock=clock)
    names = [f"job_{i:03d}" for i in range(jobs)]
    for name in names:
        monitor.register(name, schedule="@every 1m")
    monitor.health()
    gc.collect()
    registered = tracemalloc.get_traced_memory()[0] - start

    run_seconds = 4.0 / jobs  # every job starts within 4 s of its slot (grace: 6 s)
    for minute in range(minutes):
        clock.advance(60.0 - run_seconds * jobs)
        for index, name in enumerate(names):
            try:
                with monitor.run(name):
                    clock.advance(run_seconds)
                    if (minute + index) % 50 == 0:
                        raise Boom("failed on purpose")
            except Boom:
                pass
    report = monitor.health()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    held = sum(status.history_runs for status in report.jobs.values())
    missed = sum(status.missed_count for status in report.jobs.values())
    assert missed == 0, f"{missed} runs missed: the benchmark's runs must start on time"
    monitor.shutdown()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return registered, after, held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=24 * 60)
    args = parser.parse_args(argv)
    logging.getLogger("jobpulse").setLevel(logging.ERROR)  # one failure log line per 50 runs
    if args.jobs < 1 or args.minutes < 1:
        parser.error("--jobs and --minutes must be at least 1")

    registered, after, held = day_of_runs(args.jobs, args.minutes)
    runs = args.jobs * args.minutes
    added = after - registered
    print(f"jobs: {args.jobs}, runs: {runs:,} over {timedelta(minutes=args.minutes)}")
    print(f"runs held in histories:    {held:>12,}")
    print(f"baseline (jobs, no runs):  {registered / 2**20:>12.2f} MB")
    print(f"after the runs:            {after / 2**20:>12.2f} MB")
    print(f"added by the runs:         {added / 2**20:>12.2f} MB  ({added / runs:.1f} bytes/run)")
    passed = added <= TARGET_BYTES
    print(f"target: added <= {TARGET_BYTES / 2**20:.0f} MB: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
