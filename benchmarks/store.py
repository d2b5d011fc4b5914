"""What a store costs, SQLite and Redis, against the same monitor without a store, in one run.

Each case runs on each backend (`--backends`, both by default): SQLite files in a temporary
folder, and keys under a prefix per case in a redis-server this script starts on 127.0.0.1
(needs Debian's redis-server). Every store monitor runs its publisher thread,
"jobpulse-store", with its flush_interval as given, 1 s unless said otherwise. Cases:
  overhead     microseconds per run of @monitor.job on a sync function with a store and
               without, in alternated rounds of `--runs` runs; the publisher writes at its
               interval during the store rounds and competes for the GIL. "runs" is the
               rounds' loops alone; "runs + flush" also waits, in the store round, for the
               write of what the round left pending, so that every write of a round's runs
               is charged to it: the target is on that one. Ratio: the median of the
               rounds' ratios; also with CPU time (the job's thread, plus the publisher
               thread's own clock in store rounds), which other processes on a shared host
               inflate far less than wall time.
  flush        one write of 1,000 changed jobs with 10 finished runs each: `monitor.flush()`
               (the hand-off to the publisher's thread and back included), and the
               publisher's collect (under the registry's lock) and write (one transaction)
               timed apart, on the publisher's own object while its thread waits
               (flush_interval 1 h). Medians of `--rounds` rounds. The floor: SQLite alone
               executing the same statements with values made beforehand.
  fleet        health_json() of a reader monitor over 1,000 jobs written by 4 writer
               processes (10 on Redis) on the same store, each running its share of the jobs. The
               reader's view is invalidated before every poll (what its refresh interval
               passing does), so every poll reads the store. "steady": nothing changed
               between polls (the writers' threads keep their heartbeats going); "all
               changed": between polls every job runs once and the writers flush, so every
               poll reads 1,000 rows and 1,000 runs and rebuilds every row of the document.
               `--polls` steady polls (400), half as many all changed: a p99 of 200 is
               their third slowest (of 100 it would be the second, as often a full
               collection of the garbage collector's, 15 to 25 ms here, as not). The
               baseline: a monitor without a store whose every job ran between polls
               (what building the document costs without the store's part).
  seed         a store holding 100 jobs x 24 h of once-a-minute runs (144,000 runs, built
               with monitors on a FakeClock advancing a minute per run); a new process
               (this script, --seed) times JobMonitor(store=...) until its first health
               document, checked complete (100 jobs, 144,000 runs counted). Median of
               `--seeds` processes. The store's size: the database and its -wal file after
               a checkpoint; on Redis, MEMORY USAGE of its keys, and how much INFO memory's
               used_memory grew while it was built.
  outage       the store refuses writes for 10 s (SQLite: another connection holds the file
               with BEGIN EXCLUSIVE; Redis: the server is stopped, its data saved, and started
               again) while 10,000 runs (10 jobs) happen in ten one-second rounds, each
               alternated with as many runs of a monitor without a store; then the store
               comes back and the time is taken until it holds all 10,000 runs, and until a
               reader monitor's counts and history do.

Targets (issues 14 and 15), on both backends: overhead <= 1.1x; flush <= 50 ms; fleet p99
<= 5 ms steady and <= 50 ms all changed; seed <= 1 s; the store under 20 MB (SQLite) and at
most 30 MB (Redis); outage runs in the store <= 5 s after the store returns. Exit status 1
if one fails.

    python benchmarks/store.py [--runs N] [--repeats N] [--rounds N] [--polls N] [--seeds N]
        [--only overhead,flush,fleet,seed,outage] [--backends sqlite,redis]

--jobs, --seed-jobs, --seed-minutes and --outage-seconds make the cases smaller than the
issue's, to try the script out (tests/test_examples.py does); the targets hold for the
issue's sizes only.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import JobMonitor
from jobpulse.testing import FakeClock

TARGET_OVERHEAD_RATIO = 1.1
TARGET_FLUSH_MS = 50.0
TARGET_STEADY_P99_MS = 5.0
TARGET_CHANGED_P99_MS = 50.0
TARGET_SEED_SECONDS = 1.0
TARGET_SEED_MB = 20.0
TARGET_SEED_REDIS_MB = 30.0
TARGET_OUTAGE_SECONDS = 5.0

# The sizes (smaller ones, from the command line, only to try the script out).
FLEET_JOBS = 1000
SEED_JOBS = 100
SEED_MINUTES = 24 * 60
OUTAGE_SECONDS = 10
OUTAGE_RUNS_PER_SECOND = 1000
OUTAGE_JOBS = 10


def stored_runs(connection: sqlite3.Connection) -> int:
    """The runs in a SQLite store: a row per write, each with its number of jobs n, then n
    ids and n counts, then 26 bytes a run (jobpulse.store.sqlite._pack_runs)."""
    total = 0
    for (value,) in connection.execute("SELECT runs FROM run_writes"):
        jobs = int.from_bytes(value[:8], "little")
        total += (len(value) - 8 - 16 * jobs) // 26
    return total


class Table:
    """The figures, each with its target and verdict, printed as they come."""

    def __init__(self) -> None:
        self.failed = False
        self.prefix = ""  # the backend's name
        print(f"{'figure':<60} {'value':>12} {'target':>10} {'':>5}")

    def row(self, figure: str, value: float, unit: str, target: float | None = None) -> None:
        figure = self.prefix + figure
        shown = f"{value:.2f} {unit}" if unit != "x" else f"{value:.3f}x"
        if target is None:
            print(f"{figure:<60} {shown:>12}", flush=True)
            return
        passed = value <= target
        self.failed |= not passed
        limit = f"<= {target:g}{unit if unit == 'x' else ' ' + unit}"
        print(f"{figure:<60} {shown:>12} {limit:>10} {'PASS' if passed else 'FAIL':>5}", flush=True)


def monitor(**options: Any) -> JobMonitor:
    """A monitor on providers of its own (a shared provider would feed every monitor's
    processor every monitor's spans)."""
    return JobMonitor(
        TracerProvider(shutdown_on_exit=False), MeterProvider(shutdown_on_exit=False), **options
    )


class Backend(abc.ABC):
    """Where the cases' stores are."""

    name = ""
    #: The writer processes of the fleet case.
    writers = 4

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    @abc.abstractmethod
    def url(self, name: str) -> str: ...

    @abc.abstractmethod
    def stored_runs(self, url: str) -> int: ...

    @abc.abstractmethod
    def size(self, url: str) -> tuple[str, float]:
        """What the store at `url` takes, in MB, and what that figure is."""

    @abc.abstractmethod
    def out(self, url: str) -> AbstractContextManager[None]:
        """The store at `url` refuses writes for the block."""

    def close(self) -> None:
        return None


class SQLiteBackend(Backend):
    """SQLite files in the run's folder."""

    name = "SQLite"

    def url(self, name: str) -> str:
        return f"sqlite:///{self.folder / name}.db"

    def path(self, url: str) -> Path:
        return Path(url.removeprefix("sqlite:///"))

    def stored_runs(self, url: str) -> int:
        with sqlite3.connect(self.path(url)) as connection:
            return stored_runs(connection)

    def size(self, url: str) -> tuple[str, float]:
        path = self.path(url)
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        files = (path, path.with_name(path.name + "-wal"))
        total = sum(file.stat().st_size for file in files if file.exists())
        return "database + wal after checkpoint", total / 1e6

    @contextmanager
    def out(self, url: str) -> Iterator[None]:
        holder = sqlite3.connect(self.path(url), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another connection holds the file
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()


class RedisBackend(Backend):
    """Keys under a prefix per case in a redis-server of the run's own (on 127.0.0.1, its
    data saved in the run's folder only when the outage case stops it)."""

    name = "Redis"
    writers = 10

    def __init__(self, folder: Path) -> None:
        import redis

        super().__init__(folder)
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self._redis = redis
        self._binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = f"redis://127.0.0.1:{self.port}/0"
        self._client = redis.Redis.from_url(self.server)  # reconnects after a restart
        self._start()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            [
                *(self._binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return
            except self._redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self) -> Any:
        return self._client

    def url(self, name: str) -> str:
        return f"{self.server}?prefix=bench:{name}:"

    def _keys(self, url: str) -> list[bytes]:
        prefix = url.split("?prefix=", 1)[1]
        return list(self.client().scan_iter(match=prefix + "*", count=1000))

    def stored_runs(self, url: str) -> int:
        client = self.client()
        total = 0
        for key in self._keys(url):
            if b":runs:" in key:
                for _, fields in client.xrange(key):
                    total += len(fields[b"r"]) // 24
        return total

    def size(self, url: str) -> tuple[str, float]:
        client = self.client()
        used = sum(client.memory_usage(key, samples=0) or 0 for key in self._keys(url))
        return "Redis memory of its keys (MEMORY USAGE)", used / 1e6

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    @contextmanager
    def out(self, url: str) -> Iterator[None]:
        with contextlib.suppress(self._redis.ConnectionError):  # it closes it as it stops
            self.client().shutdown(save=True)  # stopped, its data kept
        self._process.wait(30)
        try:
            yield
        finally:
            self._start()

    def close(self) -> None:
        self._client.close()
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(30)


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank `q`-quantile: the smallest sample with at least q of them at or
    below it (p99 of 100 samples is the 99th, not the largest)."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def job() -> int:
    return 1


# -- overhead --------------------------------------------------------------------------


def overhead(backend: Backend, runs: int, repeats: int, table: Table) -> None:
    plain = monitor()
    stored = monitor(store=backend.url("overhead"))
    plain_job = plain.job("bench_job")(job)
    stored_job = stored.job("bench_job")(job)

    def loop(function: Callable[[], int], n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            function()
        return time.perf_counter() - started

    link = stored._store
    assert link is not None
    # The publisher thread's own CPU clock (Linux, macOS): what it spends, whenever it runs.
    ident = link.publisher._thread.ident
    assert ident is not None
    publisher_clock = time.pthread_getcpuclockid(ident)

    def publisher_cpu() -> float:
        return time.clock_gettime(publisher_clock)

    for function in (plain_job, stored_job):
        loop(function, min(runs, 2000))  # warm up
    assert stored.flush()
    plain_us: list[float] = []
    stored_us: list[float] = []
    flushed_us: list[float] = []
    plain_cpu: list[float] = []
    flushed_cpu: list[float] = []
    publisher_us: list[float] = []
    round_seconds: list[float] = []
    for index in range(repeats):
        # Alternated order: neither side always follows the other's leftovers.
        for side in ("plain", "stored") if index % 2 == 0 else ("stored", "plain"):
            cpu = time.thread_time()
            if side == "plain":
                plain_us.append(loop(plain_job, runs) / runs * 1e6)
                plain_cpu.append((time.thread_time() - cpu) / runs * 1e6)
                continue
            publisher_started = publisher_cpu()
            started = time.perf_counter()
            elapsed = loop(stored_job, runs)
            assert stored.flush(timeout=30)
            total = time.perf_counter() - started
            published = (publisher_cpu() - publisher_started) / runs * 1e6
            publisher_us.append(published)
            flushed_cpu.append((time.thread_time() - cpu) / runs * 1e6 + published)
            stored_us.append(elapsed / runs * 1e6)
            flushed_us.append(total / runs * 1e6)
            round_seconds.append(elapsed)
    status = stored.status("bench_job")
    assert status is not None
    assert status.success_count >= runs * repeats, status
    plain.shutdown()
    stored.shutdown()

    def ratio(values: list[float], base: list[float]) -> float:
        return statistics.median(v / b for v, b in zip(values, base, strict=True))

    table.row("overhead: no store, us/run", statistics.median(plain_us), "us")
    table.row("overhead: store, runs only, us/run", statistics.median(stored_us), "us")
    table.row("overhead: store, runs + flush, us/run", statistics.median(flushed_us), "us")
    table.row("overhead: runs only, x no store", ratio(stored_us, plain_us), "x")
    table.row(
        "overhead: runs + flush, x no store",
        ratio(flushed_us, plain_us),
        "x",
        TARGET_OVERHEAD_RATIO,
    )
    table.row("overhead: publisher thread's CPU, us/run", statistics.median(publisher_us), "us")
    table.row(
        "overhead: runs + flush, CPU (job's + publisher's), x", ratio(flushed_cpu, plain_cpu), "x"
    )
    print(
        f"  ({runs} runs x {repeats} rounds a side; a store round's loop took "
        f"{statistics.median(round_seconds):.2f} s, flush_interval 1 s)"
    )


# -- flush -----------------------------------------------------------------------------


def register_fleet_jobs(target: JobMonitor, names: list[str]) -> None:
    for index, name in enumerate(names):
        target.register(name, critical=index % 10 == 0, schedule="@every 1h" if index % 2 else None)


def run_jobs(target: JobMonitor, names: list[str], times: int, fail_every: int = 0) -> None:
    count = 0
    for _ in range(times):
        for name in names:
            count += 1
            try:
                with target.run(name):
                    if fail_every and count % fail_every == 0:
                        raise ValueError("simulated failure")
            except ValueError:
                pass


def flush(backend: Backend, rounds: int, jobs: int, table: Table) -> None:
    names = [f"job_{index:04d}" for index in range(jobs)]
    target = monitor(
        store=backend.url("flush"),
        max_jobs=jobs,
        flush_interval=3600,
        instance_ttl=7200,
    )
    register_fleet_jobs(target, names)
    run_jobs(target, names, 10, fail_every=7)
    assert target.flush()  # the rows exist from here on: what follows updates them
    link = target._store
    assert link is not None
    publisher = link.publisher
    registry = publisher._registry
    collect_changes = registry.collect_changes
    held_ms: list[float] = []

    def timed_collect_changes(*, full: bool = False) -> Any:
        started = time.perf_counter()
        try:
            return collect_changes(full=full)
        finally:
            held_ms.append((time.perf_counter() - started) * 1000)

    # The publisher's copy under the registry's lock, timed apart from the deltas it makes
    # of the copies afterwards.
    registry.collect_changes = timed_collect_changes  # type: ignore[method-assign]
    flush_ms: list[float] = []
    collect_ms: list[float] = []
    write_ms: list[float] = []
    cycle_cpu_ms: list[float] = []
    lock_ms: list[float] = []
    for _ in range(rounds):
        run_jobs(target, names, 10, fail_every=7)
        started = time.perf_counter()
        assert target.flush(timeout=30)
        flush_ms.append((time.perf_counter() - started) * 1000)

        run_jobs(target, names, 10, fail_every=7)
        # The publisher's thread waits (flush_interval 1 h, nothing requested): its object
        # is ours for the moment. _cycle collects again (nothing new) and writes.
        cpu = time.process_time()
        held_ms.clear()
        started = time.perf_counter()
        publisher._collect()
        collected = time.perf_counter()
        assert len(publisher._pending) == jobs
        assert publisher._cycle()
        done = time.perf_counter()
        cycle_cpu_ms.append((time.process_time() - cpu) * 1000)
        lock_ms.append(held_ms[0])
        collect_ms.append((collected - started) * 1000)
        write_ms.append((done - collected) * 1000)
    status = target.status(names[0])
    assert status is not None
    assert status.success_count + status.failure_count == 10 * (1 + 2 * rounds), status
    target.shutdown()
    table.row(
        f"flush: monitor.flush(), {jobs:,} jobs x 10 runs",
        statistics.median(flush_ms),
        "ms",
        TARGET_FLUSH_MS,
    )
    totals = [c + w for c, w in zip(collect_ms, write_ms, strict=True)]
    table.row("flush: publisher collect + write", statistics.median(totals), "ms", TARGET_FLUSH_MS)
    table.row("flush:   collect (copies and deltas)", statistics.median(collect_ms), "ms")
    table.row("flush:     of which the registry's lock held", statistics.median(lock_ms), "ms")
    table.row("flush:   write (one transaction)", statistics.median(write_ms), "ms")
    table.row("flush:   collect + write, CPU", statistics.median(cycle_cpu_ms), "ms")
    if isinstance(backend, SQLiteBackend):
        table.row(
            "flush: raw SQLite, the same rows and runs (floor)",
            raw_write_ms(backend.folder, rounds, jobs),
            "ms",
        )
    print(f"  (median of {rounds} rounds; max flush() {max(flush_ms):.1f} ms)")


def raw_write_ms(folder: Path, rounds: int, jobs: int) -> float:
    """What SQLite alone takes for one flush's statements on the store's schema, as the store
    makes them: 1,000 rows updated and 10,000 runs inserted (one row, 10 per job) in one
    transaction, the values made beforehand."""
    from jobpulse.store._base import FleetRow
    from jobpulse.store._rows import KnownRows
    from jobpulse.store.sqlite import (
        _INSERT_JOB,
        _INSERT_RUNS,
        _UPDATE_JOB,
        SQLiteStore,
        _pack_runs,
    )

    store = SQLiteStore(folder / "raw.db")
    db = store._writer
    assert db is not None
    settings = {"critical": False, "failure_threshold": 3, "timeout": None, "stall_after": 300.0}

    def rows(seq: int) -> list[list[Any]]:
        # The values as the store makes them of a row (whatever its schema's version).
        known = KnownRows()
        return [
            known.values(
                FleetRow(f"job_{index:04d}", 1, seq, settings=settings, settings_instance="i"),
                seq,
                index + 1,
            )
            for index in range(jobs)
        ]

    db.execute("BEGIN IMMEDIATE")
    db.executemany(_INSERT_JOB, [[index + 1, *values] for index, values in enumerate(rows(1))])
    db.execute("COMMIT")
    samples = []
    for round_index in range(rounds):
        updates = [[*values[1:], index + 1] for index, values in enumerate(rows(round_index + 2))]
        base = 10**18 + round_index * 10**9
        runs = _pack_runs(
            [
                (index + 1, [(base + k, 1000, base + k + 1000, None) for k in range(10)])
                for index in range(jobs)
            ],
            {None: 0},
        )
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_UPDATE_JOB, updates)
        db.execute(_INSERT_RUNS, (base + 2000, runs))
        db.execute("COMMIT")
        samples.append((time.perf_counter() - started) * 1000)
    store.close()
    return statistics.median(samples)


# -- fleet health document -------------------------------------------------------------


def fleet_writer(url: str, index: int, jobs: int, writers: int) -> int:
    """In a process of its own: one of the fleet's writers. Registers every job and runs its
    share 20 times, then at each "run" line of stdin runs its share once and flushes."""
    names = [f"job_{number:04d}" for number in range(jobs)]
    share = names[index::writers]
    writer = monitor(store=url, max_jobs=jobs)
    register_fleet_jobs(writer, names)  # every worker registers every job
    run_jobs(writer, share, 20, fail_every=9)
    assert writer.flush(timeout=30)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        run_jobs(writer, share, 1)
        assert writer.flush(timeout=30)
        print("ok", flush=True)
    writer.shutdown()
    return 0


class Writers:
    """The fleet's writer processes, driven over their stdin and stdout."""

    def __init__(self, url: str, jobs: int, writers: int) -> None:
        self._processes = [
            subprocess.Popen(
                [
                    *(sys.executable, __file__, "--fleet-writer", url),
                    *(str(index), str(jobs), str(writers)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for index in range(writers)
        ]
        self._expect("ready")

    def run_all(self) -> None:
        """Every writer runs its share once and flushes: every job changed."""
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.write("run\n")
            process.stdin.flush()
        self._expect("ok")

    def _expect(self, answer: str) -> None:
        for process in self._processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line == answer, (line, process.poll())

    def stop(self) -> None:
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self._processes:
            process.wait(timeout=30)
            assert process.stdout is not None
            process.stdout.close()


def fleet(backend: Backend, polls: int, jobs: int, table: Table) -> None:
    url = backend.url("fleet")
    writers_count = backend.writers
    names = [f"job_{index:04d}" for index in range(jobs)]
    # Writers of their own, as a service's workers are: the reader's process holds only
    # what a reader holds (its heap is what its garbage collector walks).
    writers = Writers(url, jobs, writers_count)
    reader = monitor(store=url, max_jobs=jobs)
    link = reader._store
    assert link is not None

    cpu_ms: list[float] = []

    def poll() -> tuple[float, bytes]:
        link.fleet.invalidate()  # the reader's refresh interval has passed
        cpu = time.thread_time()
        started = time.perf_counter()
        _, body = reader.health_json()
        elapsed = (time.perf_counter() - started) * 1000
        cpu_ms.append((time.thread_time() - cpu) * 1000)
        return elapsed, body

    _, body = poll()
    document = json.loads(body)
    assert len(document["jobs"]) == jobs
    assert len(document["instances"]) >= writers_count  # the reader's too once it has written
    cpu_ms.clear()
    steady = [poll()[0] for _ in range(polls)]
    steady_cpu, cpu_ms = cpu_ms, []
    changed: list[float] = []
    for _ in range(max(polls // 2, 20)):
        writers.run_all()
        elapsed, body = poll()
        changed.append(elapsed)
    runs = sum(
        entry["success_count"] + entry["failure_count"]
        for entry in json.loads(body)["jobs"].values()
    )
    writers.stop()
    reader.shutdown()
    table.row(
        "fleet: health_json p99, nothing changed",
        percentile(steady, 0.99),
        "ms",
        TARGET_STEADY_P99_MS,
    )
    table.row(
        "fleet: health_json p99, every job changed",
        percentile(changed, 0.99),
        "ms",
        TARGET_CHANGED_P99_MS,
    )
    table.row("fleet:   p99 CPU of the polling thread, steady", percentile(steady_cpu, 0.99), "ms")
    table.row("fleet:   p99 CPU of the polling thread, changed", percentile(cpu_ms, 0.99), "ms")
    baseline = process_changed(names, len(changed))
    table.row("fleet: no store, every job changed, p50 (baseline)", percentile(baseline, 0.5), "ms")
    table.row(
        "fleet: no store, every job changed, p99 (baseline)", percentile(baseline, 0.99), "ms"
    )
    print(
        f"  (p50 {percentile(steady, 0.5):.2f} / {percentile(changed, 0.5):.2f} ms; "
        f"{len(steady)} / {len(changed)} polls; {jobs} jobs, {writers_count} writers; "
        f"document {len(body) / 1024:.0f} KB, {runs} runs counted)"
    )


def process_changed(names: list[str], polls: int) -> list[float]:
    """health_json() of a monitor without a store whose every job ran since the last call:
    the document's own cost of 1,000 changed jobs, without the store's."""
    alone = monitor(max_jobs=len(names))
    register_fleet_jobs(alone, names)
    run_jobs(alone, names, 20, fail_every=9)
    alone.health_json()
    samples = []
    for _ in range(polls):
        run_jobs(alone, names, 1)
        started = time.perf_counter()
        alone.health_json()
        samples.append((time.perf_counter() - started) * 1000)
    alone.shutdown()
    return samples


# -- seeding a restarted process -------------------------------------------------------


def build_seed_store(url: str, jobs: int, minutes: int) -> float:
    """100 jobs, a run of each every minute for 24 h up to now, written by one monitor on a
    FakeClock (each run takes 2 s; one in 50 fails) that writes every minute, as its
    publisher would; returns the seconds it took."""
    started = time.perf_counter()
    # The first run 3 minutes inside the 24 h window, so that it is still in it when the
    # restarted processes read the store; the last ones end a minute or two from now.
    clock = FakeClock(datetime.now(timezone.utc) - timedelta(minutes=minutes - 3))
    names = [f"seed_{index:03d}" for index in range(jobs)]
    writer = monitor(store=url, clock=clock, max_jobs=jobs, flush_interval=3600, instance_ttl=7200)
    for index, name in enumerate(names):
        writer.register(name, critical=index % 10 == 0, schedule="@every 1m")
    failure = ValueError("simulated failure")
    for minute in range(minutes):
        runs = [writer.run(name) for name in names]
        for run in runs:
            run.__enter__()
        clock.advance(2)
        for index, run in enumerate(runs):
            if (minute + index) % 50 == 0:
                run.__exit__(ValueError, failure, None)
            else:
                run.__exit__(None, None, None)
        clock.advance(58)
        assert writer.flush(timeout=30)
    assert writer.flush(timeout=30)
    for name in names[:1]:
        status = writer.status(name)
        assert status is not None
        assert status.success_count + status.failure_count == minutes
    writer.shutdown()
    return time.perf_counter() - started


def seed_child(url: str, jobs: int) -> int:
    """In a new process: the seconds from JobMonitor(store=...) to its first complete health
    document, printed as JSON."""
    started = time.perf_counter()
    restarted = monitor(store=url, max_jobs=jobs)
    opened = time.perf_counter()
    _, body = restarted.health_json()
    done = time.perf_counter()
    document = json.loads(body)
    members = document["jobs"]
    counted = sum(entry["success_count"] + entry["failure_count"] for entry in members.values())
    history = sum(len(restarted.history(name)) for name in restarted.statuses())
    restarted.shutdown()
    print(
        json.dumps(
            {
                "construct": opened - started,
                "document": done - opened,
                "total": done - started,
                "jobs": len(members),
                "counted": counted,
                "history": history,
            }
        )
    )
    return 0


def seed(backend: Backend, seeds: int, jobs: int, minutes: int, table: Table) -> None:
    url = backend.url("seed")
    memory_before = backend.used_memory() if isinstance(backend, RedisBackend) else 0
    built = build_seed_store(url, jobs, minutes)
    stored = backend.stored_runs(url)
    what, size = backend.size(url)
    totals: list[float] = []
    opened: list[float] = []
    for _ in range(seeds):
        output = subprocess.run(
            [sys.executable, __file__, "--seed", url, "--seed-jobs", str(jobs)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        expected = jobs * minutes
        assert result["jobs"] == jobs, result
        assert result["counted"] == expected, result
        assert result["history"] == expected, result
        totals.append(result["total"])
        opened.append(result["construct"])
    table.row(
        "seed: JobMonitor(store) to first health document",
        statistics.median(totals),
        "s",
        TARGET_SEED_SECONDS,
    )
    table.row("seed:   of which JobMonitor(store=...)", statistics.median(opened), "s")
    target = TARGET_SEED_REDIS_MB if isinstance(backend, RedisBackend) else TARGET_SEED_MB
    table.row(f"seed: {what}", size, "MB", target)
    if isinstance(backend, RedisBackend):
        grown = (backend.used_memory() - memory_before) / 1e6
        table.row("seed:   Redis used_memory grown by it (INFO memory)", grown, "MB", target)
    print(
        f"  ({stored} runs in the store, built in {built:.1f} s; median of {seeds} processes, "
        f"max {max(totals):.2f} s)"
    )


# -- outage ----------------------------------------------------------------------------


def outage(backend: Backend, seconds: int, table: Table) -> None:
    total = seconds * OUTAGE_RUNS_PER_SECOND
    url = backend.url("outage")
    names = [f"outage_{index}" for index in range(OUTAGE_JOBS)]
    writer = monitor(store=url)
    reader = monitor(store=url)
    plain = monitor()
    for name in names:
        writer.register(name)
        plain.register(name)
    assert writer.flush()
    per_round = OUTAGE_RUNS_PER_SECOND // OUTAGE_JOBS

    def round_of(target: JobMonitor) -> float:
        started = time.perf_counter()
        for _ in range(per_round):
            for name in names:
                with target.run(name):
                    pass
        return (time.perf_counter() - started) / (per_round * OUTAGE_JOBS) * 1e6

    round_of(plain)  # warm up
    stored_us: list[float] = []
    plain_us: list[float] = []
    with backend.out(url):
        began = time.monotonic()
        for index in range(seconds):
            if index % 2:
                plain_us.append(round_of(plain))
                stored_us.append(round_of(writer))
            else:
                stored_us.append(round_of(writer))
                plain_us.append(round_of(plain))
            # A round a second, for the outage's length.
            time.sleep(max(began + index + 1 - time.monotonic(), 0))
        writer_link = writer._store
        assert writer_link is not None
        # The store was really out (a short outage may end before the publisher's first try).
        assert writer_link.publisher.error is not None or not writer.flush(timeout=5)
        buffered = writer_link.publisher._buffered_runs
    released = time.monotonic()
    in_store = in_reader = None
    deadline = released + 30
    while time.monotonic() < deadline and (in_store is None or in_reader is None):
        stored = backend.stored_runs(url)
        if in_store is None and stored >= total:
            in_store = time.monotonic() - released
        if in_reader is None:
            statuses = reader.statuses()
            counts = sum(s.success_count for s in statuses.values())
            if counts >= total and sum(len(reader.history(n)) for n in names) >= total:
                in_reader = time.monotonic() - released
        time.sleep(0.02)  # polling another process's view: nothing to wait on
    for member in (writer, reader, plain):
        member.shutdown()
    ratio = statistics.median(s / p for s, p in zip(stored_us, plain_us, strict=True))
    table.row(
        f"outage: {total:,} runs in the store after it returns",
        float("inf") if in_store is None else in_store,
        "s",
        TARGET_OUTAGE_SECONDS,
    )
    table.row(
        "outage:   seen by a reader's counts and history",
        float("inf") if in_reader is None else in_reader,
        "s",
    )
    table.row("outage: per run during the outage, x no store", ratio, "x")
    table.row("outage: finished runs buffered when it returned", buffered, "runs")
    print(
        f"  ({statistics.median(stored_us):.1f} vs {statistics.median(plain_us):.1f} us/run; "
        f"{total} runs over {seconds} s, {OUTAGE_JOBS} jobs)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30_000, help="runs per overhead round")
    parser.add_argument("--repeats", type=int, default=7, help="overhead rounds per side")
    parser.add_argument("--rounds", type=int, default=10, help="flush rounds")
    parser.add_argument("--polls", type=int, default=400, help="health polls, steady")
    parser.add_argument("--seeds", type=int, default=3, help="restarted processes timed")
    parser.add_argument("--jobs", type=int, default=FLEET_JOBS, help="jobs (flush, fleet)")
    parser.add_argument("--seed-jobs", type=int, default=SEED_JOBS, help="jobs in the seed store")
    parser.add_argument("--seed-minutes", type=int, default=SEED_MINUTES, help="runs of each")
    parser.add_argument("--outage-seconds", type=int, default=OUTAGE_SECONDS)
    parser.add_argument("--only", help="run only these cases (comma-separated)")
    parser.add_argument(
        "--backends", default="sqlite,redis", help="the stores to measure (comma-separated)"
    )
    parser.add_argument("--seed", help=argparse.SUPPRESS)
    parser.add_argument("--fleet-writer", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.getLogger("jobpulse").setLevel(logging.ERROR)  # simulated failures, the outage
    if args.seed:
        return seed_child(args.seed, args.seed_jobs)
    if args.fleet_writer:
        url, index, jobs, writers = args.fleet_writer
        return fleet_writer(url, int(index), int(jobs), int(writers))
    cases: dict[str, Callable[[Backend, Table], None]] = {
        "overhead": lambda backend, table: overhead(backend, args.runs, args.repeats, table),
        "flush": lambda backend, table: flush(backend, args.rounds, args.jobs, table),
        "fleet": lambda backend, table: fleet(backend, args.polls, args.jobs, table),
        "seed": lambda backend, table: seed(
            backend, args.seeds, args.seed_jobs, args.seed_minutes, table
        ),
        "outage": lambda backend, table: outage(backend, args.outage_seconds, table),
    }
    backends: dict[str, Callable[[Path], Backend]] = {
        "sqlite": SQLiteBackend,
        "redis": RedisBackend,
    }
    chosen = args.only.split(",") if args.only else list(cases)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="jobpulse-bench-") as folder:
        for name in args.backends.split(","):
            backend = backends[name](Path(folder) / name)
            table.prefix = f"{backend.name} "
            try:
                for case in chosen:
                    cases[case](backend, table)
            finally:
                backend.close()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"(Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, load average {load})"
    )
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
