"""The fleet view: the store's rows as the jobs a reader shows, refreshed incrementally.

A reader holds one `Job` per fleet job (the registry's own per-job class, so that a job's
record, its state and its member of the health document are built by the same code for the
process and for the fleet) and one `RunHistory` per job, fed with the runs written since
its last read. It reads the store at most once per `refresh_interval`; between reads, and
for every job whose row did not move, it serves what it built before. What changes with
time alone (a run passing its ``stall_after``, a slot passing its grace, an instance whose
heartbeat stops) is re-judged at each refresh, for the jobs it can concern.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Sequence

from jobpulse._shared import (
    CATEGORIES,
    Clock,
    HealthRow,
    Job,
    JobState,
    JobStatus,
    RunHistory,
    RunRecord,
    collect_rows,
    finish_rows,
    run_records,
)
from jobpulse.store._base import Cursor, FleetRow, Instance, OpenRun, Store
from jobpulse.store._merge import is_missed, schedule_of

__all__ = ["FleetView"]

_FOREVER = 1 << 63


class FleetView:
    """What every instance writing to `store` has seen, merged. Thread-safe."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        refresh_interval: float,
        instance_ttl: float,
        default_stall_after: float,
        max_history: int,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = refresh_interval
        self._ttl_ns = int(instance_ttl * 1e9)
        self._default_stall_after = default_stall_after
        self._max_history = max_history
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._cursor: Cursor | None = None
        self._refreshed = -float("inf")
        self._jobs: dict[str, Job] = {}
        self._listed: set[str] = set()  # the jobs of the rows read
        self._settings: dict[str, object] = {}  # the settings each job's Job was given
        self._open: dict[str, list[OpenRun]] = {}
        self._runners: dict[str, str] = {}  # the instance that started each job's latest run
        self._all_open: Sequence[OpenRun] = ()
        self._alive: frozenset[str] = frozenset()
        self._instances: Sequence[Instance] = ()
        self._sorted: list[str] | None = None
        # (when the job's state may change with time alone, name); stale entries are skipped
        self._timers: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}
        self._categories: list[str] = list(CATEGORIES)
        self._codes = {name: i + 1 for i, name in enumerate(self._categories)}
        # Bumped with every change to what the view shows; the last health rows, served
        # again while the view is at the version they were built at and no history can yet
        # lose a run to its window: (view version, that time in epoch ns, rows).
        self._view_version = 0
        self._rows: tuple[int, int, list[HealthRow]] | None = None

    @property
    def cursor(self) -> Cursor | None:
        """Where the last read of the store ended (None before the first)."""
        return self._cursor

    def invalidate(self) -> None:
        """Read the store at the next call, whatever the interval (after a flush)."""
        self._refreshed = -float("inf")

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._refreshed = -float("inf")

    # -- refreshing --------------------------------------------------------------------

    def _refresh(self) -> int:
        """Bring the view up to date if the interval passed; returns now in epoch ns.
        Raises what the store raises (the caller falls back to the process's view)."""
        now_ns = self._clock.time_ns()
        started = time.monotonic()
        if started - self._refreshed < self._interval:
            self._expire(now_ns)
            return now_ns
        read = self._store.read(self._cursor, now_ns=now_ns, instance_ttl_ns=self._ttl_ns)
        if read.reset:
            self._reset()
        self._refreshed = started
        self._instances = read.instances
        alive = frozenset(instance.id for instance in read.instances if instance.alive)
        touched: set[str] = set()
        for row in read.rows:
            self._take_row(row, now_ns)
            touched.add(row.name)
        if read.open_runs is not None:
            self._all_open = read.open_runs
        if read.open_runs is not None or alive != self._alive:
            self._alive = alive
            previous = self._open
            self._open = {}
            for run in self._all_open:
                if run.instance in alive:
                    self._open.setdefault(run.name, []).append(run)
            touched.update(previous.keys() ^ self._open.keys())
            touched.update(name for name in self._open if previous.get(name) != self._open[name])
        # A restarted process reads a day of runs at once: one lookup per batch, not per run.
        code = self._code
        for name, runs in read.runs:
            job = self._job(name, now_ns)
            history = job.history
            if history is None:
                history = job.history = RunHistory(self._max_history)
            add = history.add
            for start_ns, duration_ns, _, category in runs:
                add(start_ns, duration_ns, 0 if category is None else code(category), now_ns)
            touched.add(name)
        listed, jobs = self._listed, self._jobs
        for name in touched:
            if name in listed:  # else runs or open runs of a job whose row is not read yet
                job = jobs[name]
                self._judge(job, now_ns)
                job.version += 1
        if touched:
            self._view_version += 1
        self._cursor = Cursor(read.store_id, read.seq, read.generation, read.run_cursor)
        self._expire(now_ns)
        return now_ns

    def _code(self, category: str) -> int:
        code = self._codes.get(category)
        if code is None:
            if len(self._categories) >= 255:
                return self._codes["unknown"]
            self._categories.append(category)
            code = self._codes[category] = len(self._categories)
        return code

    def _job(self, name: str, now_ns: int) -> Job:
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = Job(name, now_ns, self._default_stall_after)
        return job

    def _take_row(self, row: FleetRow, now_ns: int) -> None:
        """Make the job's `Job` say what its row says. The row is not kept: the `Job` holds
        all that judging it with time needs."""
        name = row.name
        job = self._job(name, now_ns)
        if name not in self._listed:
            self._listed.add(name)
            self._sorted = None
        settings = row.settings
        if settings is not self._settings.get(name):  # the store's rows share equal ones
            self._settings[name] = settings
            job.critical = bool(settings.get("critical", False))
            job.failure_threshold = int(settings.get("failure_threshold", 3))
            job.timeout = settings.get("timeout")
            job.stall_after = float(settings.get("stall_after", self._default_stall_after))
            job.auto_stall = bool(settings.get("stall_after_auto", False))
            job.schedule = schedule_of(settings)
        job.created_ns, job.updated_ns = row.created_ns, row.updated_ns
        failed = row.last_failed
        job.last_outcome = (
            JobState.PENDING if failed is None else JobState.FAILED if failed else JobState.SUCCESS
        )
        job.last_run_ns = row.last_start_ns
        job.last_duration_ns = row.last_duration_ns
        job.last_success_ns = row.last_success_ns
        job.total_duration_ns = row.total_duration_ns
        job.min_ns, job.max_ns = row.min_ns, row.max_ns
        job.success_count, job.failure_count = row.success_count, row.failure_count
        job.consecutive_failures = row.consecutive_failures
        job.timeout_count = row.timeout_count
        job.last_error, job.last_error_category = row.last_error, row.last_error_category
        job.metadata = row.metadata
        job.next_run_ns = row.next_run_ns
        job.slot_grace_ns = row.grace_ns
        job.missed_count, job.last_missed_ns = row.missed_count, row.last_missed_ns
        job.skipped_count, job.last_skip_reason = row.skipped_count, row.last_skip_reason
        job.store_dropped = row.history_dropped
        self._runners[name] = row.runner

    def _judge(self, job: Job, now_ns: int) -> None:
        """Set what depends on the open runs and the time (running, stalled, missed) and
        when that next changes."""
        due = _FOREVER
        open_runs = self._open.get(job.name)
        if open_runs:
            # Keyed by position: the fleet's runs have no one id space.
            job.runs = {index: (0.0, None, run.start_ns) for index, run in enumerate(open_runs)}
            stalled = set()
            for index, run in enumerate(open_runs):
                deadline = run.start_ns + run.stall_after_ns
                if deadline <= now_ns:
                    stalled.add(index)
                else:
                    due = min(due, deadline)
            job.stalled_ids = stalled
        elif job.runs or job.stalled_ids:
            job.runs, job.stalled_ids = {}, set()
        next_run_ns = job.next_run_ns
        job.missed = is_missed(
            next_run_ns,
            job.slot_grace_ns,
            job.last_run_ns,
            job.last_missed_ns,
            job.schedule,
            now_ns,
        )
        if not job.missed and next_run_ns is not None:
            due = min(due, max(next_run_ns + job.slot_grace_ns, now_ns + 1))
        if due < _FOREVER and self._due.get(job.name) != due:
            self._due[job.name] = due
            timers = self._timers
            heapq.heappush(timers, (due, job.name))
            if len(timers) > 2 * len(self._due) + 64:  # mostly entries replaced since
                self._timers = [(when, name) for name, when in self._due.items()]
                heapq.heapify(self._timers)

    def _expire(self, now_ns: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now_ns:
            due, name = heapq.heappop(timers)
            if self._due.get(name) != due:
                continue
            del self._due[name]
            job = self._jobs.get(name)
            if job is None or name not in self._listed:
                continue
            state, stalled = job.missed, len(job.stalled_ids)
            self._judge(job, now_ns)
            if (job.missed, len(job.stalled_ids)) != (state, stalled):
                job.version += 1
                self._view_version += 1

    def _prune_history(self, job: Job, now_ns: int) -> None:
        """`Job.prune_history`, counted as a change of the view when it drops anything."""
        if job.prune_history(now_ns):
            self._view_version += 1

    def _sorted_names(self) -> list[str]:
        names = self._sorted
        if names is None:
            names = self._sorted = sorted(self._listed)
        return names

    # -- reading -----------------------------------------------------------------------

    def health_rows(self) -> list[HealthRow]:
        """Every job's row of the health document, sorted by name; while the view did not
        change (see `StatusRegistry.health_rows`), the very list of the last call."""
        with self._lock:
            now_ns = self._refresh()
            last = self._rows
            if last is not None and last[0] == self._view_version and now_ns < last[1]:
                return last[2]
            jobs = map(self._jobs.__getitem__, self._sorted_names())
            # No job's thread waits for this lock: what could not be built is reported
            # with it held.
            pending = collect_rows(jobs, now_ns)
            rows = finish_rows(pending)
            self._rows = (self._view_version, pending.quiet_until, rows)
            return rows

    def snapshots(self) -> dict[str, JobStatus]:
        with self._lock:
            now_ns = self._refresh()
            snapshots = {}
            for name in self._sorted_names():
                job = self._jobs[name]
                self._prune_history(job, now_ns)
                snapshots[name] = job.cached_status(now_ns)
            return snapshots

    def snapshot(self, name: str) -> JobStatus | None:
        with self._lock:
            now_ns = self._refresh()
            job = self._jobs.get(name)
            if job is None or name not in self._listed:
                return None
            self._prune_history(job, now_ns)
            return job.cached_status(now_ns)

    def history(self, name: str, limit: int | None = None) -> list[RunRecord]:
        with self._lock:
            now_ns = self._refresh()
            job = self._jobs.get(name)
            history = None if job is None else job.history
            if job is None or history is None:
                return []
            self._prune_history(job, now_ns)
            records = history.records(limit)
            categories = tuple(self._categories)
        return run_records(records, categories)

    def runs_in_progress(self, name: str) -> tuple[str, list[tuple[int, bool, str]]]:
        """The instance that started the job's latest run ("" if none is known), and (start
        in epoch ns, stalled, instance) of each of its runs in progress on a live instance,
        oldest first."""
        with self._lock:
            self._refresh()
            job = self._jobs.get(name)
            if job is None or name not in self._listed:
                return "", []
            stalled = job.stalled_ids
            runs = [
                (run.start_ns, index in stalled, run.instance)
                for index, run in enumerate(self._open.get(name, ()))
            ]
            runner = self._runners.get(name, "")
        runs.sort()
        return runner, runs

    def instances(self) -> list[Instance]:
        with self._lock:
            self._refresh()
            return list(self._instances)
