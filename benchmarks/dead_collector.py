"""Per-run cost of jobs when the OTLP collector is dead, against a live one.

Cases (microseconds per run, median of rounds):
  no exporter      setup(prometheus=True) with a fresh registry: one metric reader, no
                   span exporter; what an application without a collector runs (reported)
  live collector   setup(prometheus=False, otlp_endpoint=<a real OTLP/gRPC receiver in
                   this process>): the OTLP span exporter and metric reader (every 0.5 s)
  dead collector   the same with the endpoint a closed port: every export is refused

Each case runs in a child process of its own, since `setup()` sets the global providers
once per process. Children run in rounds of the three cases, and a ratio is the median of
the per-round ratios, so that a burst of load on the machine hits every case alike. Each
child first runs 3000 untimed runs, so that the dead collector is measured in its steady
state. (Without `setup()`'s backoff exporter that state costs a lot: the span queue stays
full, the SDK logs every dropped span, and its thread re-encodes every batch for another
refused attempt, holding the GIL the jobs need.)

The dead-collector child also times ``monitor.shutdown()``, which `setup()` bounds by its
``shutdown_timeout`` (2 s) where the SDK alone waits for its exporters' retries (about 15 s
at exit with a 10 s export timeout, the SDK's default).

Two jobs are timed in each child: a no-op job, which shows that fixed cost bare (reported,
no target), and a job doing 1 ms of CPU work (``--work-us``), the shortest a real
background job is likely to be, on which "jobs are not slowed" is judged.

Targets: with the dead collector each job costs at most 1.1x what it costs with a live
collector (jobs are not slowed), and ``monitor.shutdown()`` returns within 3 s.

    python benchmarks/dead_collector.py [--runs N] [--rounds N] [--pairs N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jobpulse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.otlp_receiver import grpc_receiver

TARGET_RATIO = 1.1
TARGET_SHUTDOWN_SECONDS = 3.0
CASES = {"none": "no exporter", "live": "live collector", "dead": "dead collector"}
#: Untimed runs first: past the span queue (2048) and a batch in flight (512), a dead
#: collector's cost is the steady one, with every new span dropped.
WARM_UP_RUNS = 3000


def job() -> int:
    return 1


def busy(microseconds: float) -> None:
    """Keep the CPU busy for `microseconds` (a job's own work, holding the GIL as Python
    code does)."""
    deadline = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < deadline:
        pass


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def child(case: str, port: int, runs: int, rounds: int, work_us: float) -> dict[str, object]:
    """Run in a fresh process: set up `case`, time `rounds` loops of `runs` runs, shut down."""
    if case in ("live", "dead"):
        monitor = jobpulse.setup(
            "dead-collector-benchmark",
            prometheus=False,
            otlp_endpoint=f"http://127.0.0.1:{port}",
            metric_export_interval=0.5,
        )
    else:  # the Prometheus reader on the global registry: this process is the child's own
        monitor = jobpulse.setup("dead-collector-benchmark")
    monitored = monitor.job("noop")(job)
    for _ in range(WARM_UP_RUNS):
        monitored()
    working = monitor.job("work")(busy)
    work_runs = max(1, int(runs * 20 / max(work_us, 1.0)))  # about as long as the no-op loop
    noop_samples, work_samples = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(runs):
            monitored()
        noop_samples.append((time.perf_counter() - started) / runs * 1e6)
        started = time.perf_counter()
        for _ in range(work_runs):
            working(work_us)
        work_samples.append((time.perf_counter() - started) / work_runs * 1e6)
    status = monitor.status("noop")
    assert status is not None
    assert status.success_count == WARM_UP_RUNS + runs * rounds
    started = time.perf_counter()
    monitor.shutdown()
    return {
        "noop": noop_samples,
        "work": work_samples,
        "shutdown_seconds": time.perf_counter() - started,
    }


def spawn(case: str, port: int, runs: int, rounds: int, work_us: float) -> dict[str, object]:
    environment = {name: value for name, value in os.environ.items() if "OTEL_" not in name}
    command = [sys.executable, __file__, "--child", case, "--port", str(port)]
    command += ["--runs", str(runs), "--rounds", str(rounds), "--work-us", str(work_us)]
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"the {case} child failed:\n{result.stderr}")
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5_000, help="runs per timed loop")
    parser.add_argument("--rounds", type=int, default=5, help="timed loops per child")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of child processes")
    parser.add_argument("--work-us", type=float, default=1000.0, help="the working job's CPU")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        print(json.dumps(child(args.child, args.port, args.runs, args.rounds, args.work_us)))
        return 0

    dead_port = closed_port()
    jobs = {"noop": "no-op job", "work": f"{args.work_us:.0f} us job"}
    per_run: dict[tuple[str, str], list[float]] = {}
    shutdowns: list[float] = []
    with grpc_receiver() as receiver:
        live_port = int(receiver.endpoint.rsplit(":", 1)[1])
        for _ in range(args.pairs):
            for case in CASES:
                port = dead_port if case == "dead" else live_port
                report = spawn(case, port, args.runs, args.rounds, args.work_us)
                for name in jobs:
                    samples = report[name]
                    assert isinstance(samples, list)
                    per_run.setdefault((name, case), []).append(statistics.median(samples))
                if case == "dead":
                    seconds = report["shutdown_seconds"]
                    assert isinstance(seconds, float)
                    shutdowns.append(seconds)
        received = len(receiver.store.trace_requests())

    def ratio_of(name: str, case: str) -> float:
        pairs = zip(per_run[(name, case)], per_run[(name, "live")], strict=True)
        return statistics.median(value / live for value, live in pairs)

    print(f"{'case':<30} {'us/run':>9} {'x live':>7}")
    for name, job_label in jobs.items():
        for case, label in CASES.items():
            median = statistics.median(per_run[(name, case)])
            print(f"{job_label + ', ' + label:<30} {median:>9.2f} {ratio_of(name, case):>7.2f}")
    assert received > 0, "the live collector received no spans"
    ratio = max(ratio_of("noop", "dead"), ratio_of("work", "dead"))
    shutdown = max(shutdowns)
    ratio_verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    shutdown_verdict = "PASS" if shutdown <= TARGET_SHUTDOWN_SECONDS else "FAIL"
    print(f"dead collector: monitor.shutdown() took {shutdown:.2f} s (slowest of {len(shutdowns)})")
    print(f"target: dead collector <= {TARGET_RATIO}x live: {ratio:.2f}x {ratio_verdict}")
    print(f"target: shutdown <= {TARGET_SHUTDOWN_SECONDS} s: {shutdown:.2f} s {shutdown_verdict}")
    print(
        f"({args.runs} runs x {args.rounds} rounds per child, {args.pairs} pairs, "
        f"Python {sys.version.split()[0]})"
    )
    return 0 if ratio_verdict == shutdown_verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
