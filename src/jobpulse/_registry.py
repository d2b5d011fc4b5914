"""The status view: every job, its settings, its live runs, its schedule and its history.

One lock guards everything here (`_ViewLock`). Methods copy what they return while holding
it and call out (watchdog, stall listener, logging, schedule arithmetic) only after
releasing it. A run's start or end that finds the lock taken does not wait for it: it
leaves itself to be applied by the thread that holds it, before that thread lets go (see
`_ViewLock`), so threads running jobs never queue on the lock.
Nothing here imports OpenTelemetry: runs are identified by an int (the span id) and carry an
opaque handle (the live span) that is handed back to the stall listener.

Two kinds of deadline live on the watchdog, at most one of each per job: ``("stall", name)``
for the earliest run that may stall, ``("missed", name)`` for the expected run's start plus
grace. A scheduled job's expected run (its *slot*) is taken by a run that starts no earlier
than ``slot - grace``; the next slot is then computed from ``max(start, slot)``. For an
interval, a run's end also pushes the slot to at least ``end + interval``, so that loops
that sleep between runs are not taken for late. A slot whose deadline passes with no run in
progress is missed and counted once.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

from jobpulse import _metadata
from jobpulse._clock import Clock
from jobpulse._duration import FOLD_AT, Batch
from jobpulse._exceptions import InvalidJobError, JobLimitError
from jobpulse._fork import after_fork_in_child
from jobpulse._guard import Guard, swallow
from jobpulse._history import RunHistory
from jobpulse._job import (
    HealthRow,
    Job,
    LocalJob,
    collect_rows,
    finish_rows,
    local_job,
    run_records,
)
from jobpulse._model import (
    JobState,
    JobStatus,
    RunRecord,
    from_ns,
)
from jobpulse._schedule import EPSILON_SECONDS, Schedule, missed_slots
from jobpulse._shared import (
    CATEGORIES,
    FAAS_CRON,
    FAAS_TRIGGER,
    JOB_NAME,
    LOST,
    LOST_ERROR,
    REASON,
    UNKNOWN,
)
from jobpulse._validation import validate_name
from jobpulse._watchdog import Watchdog

__all__ = [
    "JobSettings",
    "MetricPoint",
    "StalledRun",
    "StatusRegistry",
]

logger = logging.getLogger("jobpulse")

_PRUNE_EVERY_NS = 60 * 1_000_000_000
_FOREVER = 1 << 63
_STALL = "stall"
_MISSED = "missed"
#: Per job, the runs closed without their span's on_end (see `StatusRegistry.end_run`) that
#: are remembered, so that an on_end coming after all is not counted again.
_MAX_CLOSED_ELSEWHERE = 64


#: What a run's start or end leaves to do once the lock is released: the job's name, a
#: stall deadline to schedule, a missed deadline to arm, a slot to advance (`_advance`),
#: and how many metadata keys were refused (logged).
_After = tuple[str, float | None, float | None, tuple[Schedule, int, int] | None, int]
_APPLY = "status view: a run's start or end applied by another thread"
#: Past this many events waiting, a run's thread waits for the lock instead: the holder has
#: lost the GIL (waiting gives it back) and a reader would have them all to apply.
_MAX_EVENTS = 64
#: The longest a run waits for the view's readers (seconds; see `_ViewLock`).
_MAX_READER_WAIT = 0.05


class _ViewLock:
    """The view's one lock (`mutex`), shared by combining, with priority for readers.

    Runs: a run's start or end that finds the mutex taken is appended to `events` (one call,
    atomic) instead of waiting for it; whoever holds the mutex applies the waiting events,
    oldest first, when it takes it and before it lets go. A thread that blocks on a lock
    gives up the GIL and, once the lock is handed to it, holds the lock while it waits for
    the GIL: threads running jobs would queue on the lock, passing the GIL among themselves
    at every hand-off, each run paying a thread switch. Past `_MAX_EVENTS` waiting, a run
    does wait for the mutex: its holder has lost the GIL, and waiting gives it back.

    Readers: a thread in or waiting for a `with` block, or in a `reading` scope (`join`),
    is in `readers`, and `quiet` is cleared meanwhile. Runs on other threads then wait for
    `quiet` (`let_readers_pass`, `_MAX_READER_WAIT` at most) before they go near the mutex:
    the reader gets the mutex as soon as its holder lets go (runs that kept taking it would
    keep it from the woken reader, for seconds), and the GIL with it, instead of waiting
    for a turn after every thread running jobs.

    Every event is applied before anyone reads the view: a `with` block applies the waiting
    events first; after a release, events left meanwhile are applied by the releasing
    thread if the mutex is free, else by its new holder, who will do the same when it lets
    go (an event is appended before its thread tries the mutex, so a holder that has let go
    finds it). What is left to do once the mutex is released (`_After`, put in `after` with
    the mutex held) is done by the thread that releases it, and so is what waiting events
    left: an event or a follow-up that raises is reported, and costs nothing to the others.
    """

    __slots__ = ("_count", "_follow_up", "after", "events", "mutex", "quiet", "readers", "reading")

    def __init__(self, follow_up: Callable[[_After], None]) -> None:
        self.mutex = threading.Lock()
        self.events: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._follow_up = follow_up
        self.after: list[_After] = []
        self.readers: list[int] = []
        self.quiet = threading.Event()
        self.quiet.set()
        self._count = threading.Lock()
        #: `join` and `leave` as a context manager: see `StatusRegistry.reading`.
        self.reading = _Reading(self)

    def join(self) -> None:
        """Count this thread among the readers until `leave` (runs wait meanwhile)."""
        with self._count:
            self.readers.append(threading.get_ident())
            self.quiet.clear()

    def __enter__(self) -> None:
        self.join()
        try:
            self.mutex.acquire()
        except BaseException:
            self.leave()
            raise
        if self.events:
            self.apply_events()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.release()
        finally:
            self.leave()

    def leave(self) -> None:
        """No longer count this thread among the readers (see `join`)."""
        with self._count:
            self.readers.remove(threading.get_ident())
            if not self.readers:
                self.quiet.set()

    def let_readers_pass(self) -> None:
        """Wait while another thread is in or waiting for a `with` block (or `join`ed), for
        `_MAX_READER_WAIT` seconds at most: a reader never holds runs up for longer."""
        if not self.reading_here():
            self.quiet.wait(_MAX_READER_WAIT)

    def reading_here(self) -> bool:
        """Whether this thread is in a `with` block or a reading scope: it may hold the
        mutex, so a run it starts or ends must never wait for the mutex, nor for itself."""
        return threading.get_ident() in self.readers

    def locked(self) -> bool:
        return self.mutex.locked()

    def defer(self, apply: Callable[..., object], args: tuple[Any, ...]) -> None:
        """`apply(*args)` with the lock held: now if it is free, else by its holder."""
        self.events.append((apply, args))
        self.combine()

    def apply_events(self) -> None:
        """Apply the waiting events, oldest first (the lock held). An event that raises is
        reported and costs the others nothing."""
        events = self.events
        while events:
            apply, args = events.popleft()
            try:
                apply(*args)
            except Exception as exc:  # noqa: BLE001 - another thread's event: not ours to raise
                swallow(_APPLY, exc)

    def release(self) -> None:
        """Let go; then apply the events left meanwhile, if the lock is free (else its
        holder will)."""
        self._let_go()
        if self.events:
            self.combine()

    def combine(self) -> None:
        """Apply the waiting events while the mutex is free (else its holder will)."""
        while self.events and self.mutex.acquire(False):
            self.apply_events()
            self._let_go()

    def _let_go(self) -> None:
        """Release the mutex, then do what is left to do (see `after`)."""
        after = self.after
        if after:
            self.after = []
        self.mutex.release()
        for follow_up in after:
            try:
                self._follow_up(follow_up)
            except Exception as exc:  # noqa: BLE001 - maybe another thread's event
                swallow(_APPLY, exc)


class _Reading:
    __slots__ = ("_lock",)

    def __init__(self, lock: _ViewLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.join()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.leave()


@dataclass(frozen=True)
class StalledRun:
    """A run that has just passed its job's ``stall_after``; handed to the stall listener."""

    job_name: str
    handle: object
    elapsed_seconds: float
    stall_after_seconds: float


@dataclass(frozen=True)
class MetricPoint:
    """One job's counters, copied out for the observable instruments."""

    attributes: Mapping[str, str]
    success_attributes: Mapping[str, str]
    failed_attributes: Mapping[str, str]
    success_count: int
    failure_count: int
    active_runs: int
    stalled_runs: int
    timeout_count: int
    missed_count: int
    last_success_ns: int | None
    state: JobState
    critical: bool
    consecutive_failures: int
    skipped: tuple[tuple[int, Mapping[str, str]], ...] = ()


@dataclass(frozen=True)
class JobSettings:
    """Per-job settings as `register()` takes them; None keeps the current value.

    ``auto_stall`` True means ``stall_after="auto"``; a number in ``stall_after`` turns it off.
    """

    critical: bool | None = None
    failure_threshold: int | None = None
    timeout: float | None = None
    stall_after: float | None = None
    auto_stall: bool | None = None
    schedule: Schedule | None = None
    grace: float | None = None


StallListener = Callable[[list[StalledRun]], None]
#: Given a run's handle, closes the run and returns True if the handle has already ended.
FinishedProbe = Callable[[object], bool]

_LOST_GUARD = Guard("lost run")


def _log_dropped(names: list[str], retention_ns: int) -> None:
    if names:
        logger.info(
            "dropped %d jobs idle for more than %.0fs: %s",
            len(names),
            retention_ns / 1e9,
            ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""),
        )


class StatusRegistry:
    """Jobs by name, with their live runs, counters, settings, schedules and histories.

    Thread-safe; every method is O(1) except those that copy out the whole view. The view
    holds at most `max_jobs` jobs; a job that has no schedule, is not running and has not
    changed for `retention_seconds` is dropped (checked at most once a minute, when the view
    is read). Run deadlines are kept on a `Watchdog`; a run still going `stall_after` seconds
    after it started is marked stalled and reported to `stall_listener`.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        default_stall_after: float,
        max_jobs: int,
        retention_seconds: float,
        max_history: int = 4096,
    ) -> None:
        self._clock = clock
        self._default_stall_after = default_stall_after
        self._max_jobs = max_jobs
        self._retention_ns = int(retention_seconds * 1e9)
        self._max_history = max_history
        self._lock = _ViewLock(self._follow_up)
        self._jobs: dict[str, Job] = {}
        #: The job of a name, or None: no lock, one dictionary read (for the run's hot path,
        #: which reads a setting or two of the job; everything else goes through the lock).
        self.job: Callable[[str], Job | None] = self._jobs.get
        self._sorted_names: list[str] | None = None  # reset whenever a job comes or goes
        # The jobs in that order, with the list of names they were taken from (valid while
        # that list is the current one): a health poll walks it without a lookup per job.
        self._sorted_jobs: tuple[list[str], list[Job]] | None = None
        self._pending: dict[str, int] = {}
        self._last_prune_ns: int | None = None
        # The view's version: bumped with every change to what it shows (beside each
        # `job.version` bump, and when a job comes or goes). The health rows last built are
        # served again, with no pass over the jobs, while the view is at the version they
        # were built at and no history can yet lose a run to its window (see `health_rows`):
        # (view version, that time in epoch ns, rows).
        self._view_version = 0
        self._rows: tuple[int, int, list[HealthRow]] | None = None
        # The retention pass is skipped while the view is at the version of the last pass
        # and no job can be idle for long enough before this time (epoch ns).
        self._prune_version = -1
        self._prune_due_ns = 0
        self._refused: set[str] = set()
        # History stores a failure's category as a one-byte code: index + 1 in this list.
        self._categories: list[str] = list(CATEGORIES)
        self._category_codes = {name: i + 1 for i, name in enumerate(self._categories)}
        self.stall_listener: StallListener | None = None
        self.finished_elsewhere: FinishedProbe | None = None
        # Stalled runs whose span was dropped: put here by a weakref callback, which the
        # garbage collector runs on any thread, whatever locks that thread holds (this
        # registry's, the watchdog's); closed later by `_close_lost`, with no lock held.
        self._lost: queue.SimpleQueue[tuple[str, int, weakref.ref[object]]] = queue.SimpleQueue()
        self._watchdog = Watchdog(clock, self._on_deadline)
        # Jobs changed since a store's publisher last collected them (None: no store), and
        # how many more finished runs may wait for it.
        self._dirty: dict[str, None] | None = None
        # Jobs that left the view with changes the publisher has not collected yet.
        self._removed: list[Job] = []
        self._buffer_runs = 0
        self._run_room = 0
        # Durations of fast successful runs waiting to be folded into the duration
        # histogram, by job (see `jobpulse._duration`); None while runs are recorded inline.
        # Each job's in an array (`Job.kept_seconds`), not a list: for many jobs, lists would
        # be hundreds of young containers alive at every collection of the garbage
        # collector, promoted, and scanned again by every full collection.
        self._kept_jobs: list[Job] | None = None
        self._kept = 0
        #: True once `FOLD_AT` durations wait: the caller of `end_run` folds them.
        self.durations_due = False
        after_fork_in_child(self._reset_after_fork)

    # -- settings ----------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def timeout_of(self, name: str) -> float | None:
        """The job's timeout in seconds (no lock: a plain read of one attribute)."""
        job = self._jobs.get(name)
        return None if job is None else job.timeout

    def schedule_of(self, name: str) -> Schedule | None:
        job = self._jobs.get(name)
        return None if job is None else job.schedule

    def schedule_attributes(self, name: str) -> Mapping[str, str] | None:
        """Span attributes for runs of a scheduled job (no lock: one attribute read)."""
        job = self._jobs.get(name)
        return None if job is None else job.schedule_attributes

    def register(self, name: str, settings: JobSettings = JobSettings()) -> None:
        """Add the job if it is new (raising `JobLimitError` past `max_jobs`), then apply the
        settings that are not None. `name` must already be valid."""
        now_ns = self._clock.time_ns()
        dropped: list[str] = []
        missed_deadline = advance = None
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                if len(self._jobs) >= self._max_jobs:
                    dropped = self._prune_locked(now_ns, force=True)
                if len(self._jobs) >= self._max_jobs:
                    raise JobLimitError(
                        f"cannot register job {name!r}: the monitor already tracks "
                        f"{self._max_jobs} jobs (max_jobs). Existing jobs keep working; raise "
                        "max_jobs if this many distinct jobs is intended, or check for job "
                        "names built from changing data (ids, dates)."
                    )
                job = self._jobs[name] = Job(name, now_ns, self._default_stall_after)
                self._sorted_names = None
            if settings.critical is not None:
                job.critical = settings.critical
            if settings.failure_threshold is not None:
                job.failure_threshold = settings.failure_threshold
            if settings.timeout is not None:
                job.timeout = settings.timeout
            if settings.auto_stall is not None:
                job.auto_stall = settings.auto_stall
            if settings.stall_after is not None:
                job.explicit_stall_after = settings.stall_after
            elif settings.auto_stall:
                job.explicit_stall_after = None
            if job.auto_stall:
                job.refresh_auto_stall(now_ns, self._default_stall_after)
            else:
                job.settle_stall_after(self._default_stall_after)
            if settings.grace is not None:
                job.grace = settings.grace
                if job.next_run_ns is not None:
                    missed_deadline = self._set_slot_locked(
                        job, job.next_run_ns, now_ns, due=job.slot_due
                    )
            schedule = settings.schedule
            if schedule is not None and schedule != job.schedule:
                job.schedule = schedule
                job.schedule_attributes = MappingProxyType(
                    {FAAS_TRIGGER: "timer", FAAS_CRON: schedule.text}
                )
                job.slot_version += 1
                advance = (schedule, now_ns, job.slot_version)
            job.version += 1
            self._view_version += 1
            self._mark_locked(name)
            rearm = self._rearm_locked(job)
        _log_dropped(dropped, self._retention_ns)
        if rearm is not None:
            self._watchdog.schedule((_STALL, name), rearm)
        self._arm_missed(name, missed_deadline)
        self._advance(name, advance)

    def unregister(self, name: str) -> bool:
        """Remove the job from the view; True if it was there. Runs in progress end unseen."""
        with self._lock:
            self._sorted_names = None
            job = self._jobs.pop(name, None)
            if job is None:
                return False
            self._view_version += 1
            if self._dirty is not None:
                self._removed.append(job)
            return True

    def set_next_run(self, name: str, when_ns: int | None, grace: float | None = None) -> None:
        """Expect the job's next run at `when_ns` (None: no run expected until the next one
        starts). `grace`, if given, becomes the job's grace. Unknown jobs are ignored."""
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return
            if grace is not None:
                job.grace = grace
            deadline = self._set_slot_locked(job, when_ns, now_ns)
        self._arm_missed(name, deadline)

    # -- runs (the hot path) -----------------------------------------------------------

    def start_run(self, name: str, run_id: int, handle: object, start_ns: int) -> None:
        """A run of `name` began at `start_ns` (epoch ns). Unknown names are registered with
        default settings if they are valid and the cap allows; otherwise the run is ignored.
        Applied at once if the lock is free, else by the thread that holds it."""
        if name not in self._jobs and not self._admit(name):
            return
        start_mono = self._clock.monotonic()
        lock = self._lock
        if lock.readers:
            lock.let_readers_pass()
        if not lock.mutex.acquire(False):
            if len(lock.events) < _MAX_EVENTS or lock.reading_here():
                lock.defer(self._start_locked, (name, run_id, handle, start_ns, start_mono))
                return
            lock.mutex.acquire()
        try:
            if lock.events:
                lock.apply_events()
            self._start_locked(name, run_id, handle, start_ns, start_mono)
        finally:
            # `lock.release()`, written out for what is left to do in the common case:
            # one call fewer (the hot path).
            if lock.after:
                lock.release()
            else:
                lock.mutex.release()
                if lock.events:
                    lock.combine()

    def _start_locked(
        self, name: str, run_id: int, handle: object, start_ns: int, start_mono: float
    ) -> None:
        job = self._jobs.get(name)
        if job is None:
            return
        job.runs[run_id] = (start_mono, handle, start_ns)
        job.last_run_ns = start_ns
        job.updated_ns = start_ns
        job.version += 1
        self._view_version += 1
        if self._dirty is not None:
            self._dirty[name] = None
        arm = advance = missed_deadline = None
        if job.armed is None:
            arm = job.armed = start_mono + job.stall_after
        if job.next_run_ns is not None or job.schedule is not None or job.missed:
            advance, missed_deadline = self._take_slot_locked(job, start_ns, start_mono)
        if arm is not None or advance is not None or missed_deadline is not None:
            self._lock.after.append((name, arm, missed_deadline, advance, 0))

    def end_run(
        self,
        name: str,
        run_id: int,
        start_ns: int,
        end_ns: int,
        error: str | None = None,
        category: str | None = None,
        timed_out: bool = False,
        metadata: Mapping[str, Any] | None = None,
        closed_elsewhere: bool = False,
        ran_in: int | None = None,
        batch: float | None = None,
    ) -> tuple[Mapping[str, str], int] | None:
        """A run ended: successfully if `error` is None. Returns the metric attributes for
        the run and the job's consecutive failures, or None if nothing was recorded: the job
        is not in the view, or the run was already recorded.

        `closed_elsewhere` is for ends that do not come from the span's on_end (a span found
        ended at its stall deadline, a dropped span, a ``span.end()`` that raised): such an end
        is recorded only if the run is open, and an on_end of that run that comes after all
        (it was still under way in another thread) is not counted again. `ran_in` is the pid
        of the process of this host that ran it and could not end it (`JOB_RAN_IN_PID`).
        `batch`, for a successful run, is its duration in seconds to keep for
        `take_durations` (when `batch_durations` was called), not to record now.

        Such a run (successful, batched, not closed elsewhere) is applied at once if the lock
        is free, else by the thread that holds it: it returns its attributes and 0 failures
        either way, the job being in the view."""
        lock = self._lock
        if lock.readers:
            lock.let_readers_pass()
        if not (batch is not None and error is None and not closed_elsewhere and ran_in is None):
            lock.mutex.acquire()
        elif not lock.mutex.acquire(False):
            if len(lock.events) < _MAX_EVENTS or lock.reading_here():
                job = self._jobs.get(name)
                if job is None:
                    return None
                args = (name, run_id, start_ns, end_ns, None, None, False, metadata)
                lock.defer(self._end_locked, (*args, False, None, batch))
                return job.success_attributes, 0
            lock.mutex.acquire()
        try:
            if lock.events:
                lock.apply_events()
            return self._end_locked(
                name,
                run_id,
                start_ns,
                end_ns,
                error,
                category,
                timed_out,
                metadata,
                closed_elsewhere,
                ran_in,
                batch,
            )
        finally:
            # `lock.release()`, written out for what is left to do in the common case:
            # one call fewer (the hot path).
            if lock.after:
                lock.release()
            else:
                lock.mutex.release()
                if lock.events:
                    lock.combine()

    def _end_locked(
        self,
        name: str,
        run_id: int,
        start_ns: int,
        end_ns: int,
        error: str | None,
        category: str | None,
        timed_out: bool,
        metadata: Mapping[str, Any] | None,
        closed_elsewhere: bool,
        ran_in: int | None,
        batch: float | None,
    ) -> tuple[Mapping[str, str], int] | None:
        """`end_run`'s work, with the lock held (what is left to do goes to the lock)."""
        duration_ns = end_ns - start_ns
        refused = 0
        rearm = missed_deadline = None
        job = self._jobs.get(name)
        if job is None:
            return None
        entry = job.runs.pop(run_id, None)
        if entry is None:
            if closed_elsewhere:
                return None
            closed = job.closed_elsewhere
            if closed and run_id in closed:
                del closed[run_id]
                return None
        elif closed_elsewhere:
            closed = job.closed_elsewhere
            if closed is None:
                closed = job.closed_elsewhere = {}
            closed[run_id] = None
            if len(closed) > _MAX_CLOSED_ELSEWHERE:  # an on_end that never came
                del closed[next(iter(closed))]
        if duration_ns < 0:  # the wall clock stepped back: the monotonic clock knows
            duration_ns = 0 if entry is None else self._elapsed_ns(entry[0])
        if job.stalled_ids:
            job.stalled_ids.discard(run_id)
        job.last_duration_ns = duration_ns
        job.total_duration_ns += duration_ns
        if job.min_ns is None or duration_ns < job.min_ns:
            job.min_ns = duration_ns
        if job.max_ns is None or duration_ns > job.max_ns:
            job.max_ns = duration_ns
        history = job.history
        if history is None:
            history = job.history = RunHistory(self._max_history)
        if error is None:
            job.success_count += 1
            job.consecutive_failures = 0
            job.last_error = job.last_error_category = None
            job.last_success_ns = end_ns
            job.last_outcome = JobState.SUCCESS
            attributes = job.success_attributes
            kept_jobs = self._kept_jobs
            if batch is not None and kept_jobs is not None:
                kept = job.kept_seconds
                if kept is None:
                    kept = job.kept_seconds = array("d")
                    kept_jobs.append(job)
                kept.append(batch)
                self._kept += 1
                if self._kept >= FOLD_AT:
                    self.durations_due = True
            history.add(start_ns, duration_ns, 0, end_ns)
            if job.auto_stall and end_ns >= job.auto_due_ns:
                job.refresh_auto_stall(end_ns, self._default_stall_after)
                rearm = self._rearm_locked(job)
        else:
            job.failure_count += 1
            job.consecutive_failures += 1
            job.last_error = error
            job.last_error_category = category
            if timed_out:
                job.timeout_count += 1
            job.last_outcome = JobState.FAILED
            attributes = job.failed_attributes
            history.add(start_ns, duration_ns, self._category_code_locked(category), end_ns)
        if metadata:
            refused = _metadata.merge(job.metadata, metadata)
        schedule = job.schedule
        if schedule is not None and schedule.is_interval and job.next_run_ns is not None:
            # From the run's end, which a run recorded after the fact had in the past.
            ended_ago = max(0.0, (self._clock.time_ns() - end_ns) / 1e9)
            due = self._clock.monotonic() - ended_ago + schedule.period_seconds
            if due > job.slot_due + EPSILON_SECONDS:
                missed_deadline = self._set_slot_locked(
                    job, schedule.next_after(end_ns), end_ns, due=due
                )
        job.updated_ns = end_ns
        job.version += 1
        self._view_version += 1
        consecutive = job.consecutive_failures
        if self._dirty is not None:
            self._dirty[name] = None
            if self._run_room > 0:
                times = job.unpublished
                if times is None:
                    times = job.unpublished = array("q")
                try:
                    times.append(start_ns)
                    times.append(duration_ns)
                    times.append(end_ns)
                except OverflowError:  # a time past what a store holds (64-bit ns: 2262)
                    del times[len(times) - len(times) % 3 :]  # back to whole runs
                    job.unpublished_dropped += 1
                else:
                    self._run_room -= 1
                    if error is not None or category is not None or timed_out:
                        other = job.unpublished_other
                        if other is None:
                            other = job.unpublished_other = {}
                        other[len(times) // 3 - 1] = (category, error, timed_out)
            else:
                job.unpublished_dropped += 1
            if ran_in is not None:
                job.unpublished_ran_in.append(ran_in)
        if rearm is not None or missed_deadline is not None or refused:
            self._lock.after.append((name, rearm, missed_deadline, None, refused))
        return attributes, consecutive

    def _follow_up(self, after: _After) -> None:
        """What a run's start or end left to do once the lock is released."""
        name, stall, missed_deadline, advance, refused = after
        if stall is not None:
            self._watchdog.schedule((_STALL, name), stall)
        if missed_deadline is not None:
            self._arm_missed(name, missed_deadline)
        if refused:
            logger.warning(
                "job %r: %d metadata keys dropped (at most %d keys, %d bytes of JSON per job)",
                name,
                refused,
                _metadata.MAX_KEYS,
                _metadata.MAX_METADATA_BYTES,
            )
        self._advance(name, advance)

    def batch_durations(self) -> None:
        """Keep the `batch` durations `end_run` is given, for `take_durations`."""
        with self._lock:
            if self._kept_jobs is None:
                self._kept_jobs = []

    def take_durations(self) -> list[Batch]:
        """The durations kept since the last call, by job (each job's oldest first)."""
        with self._lock:
            jobs = self._kept_jobs
            if not jobs:
                return []
            self._kept_jobs = []
            self._kept = 0
            self.durations_due = False
            batches: list[Batch] = []
            for job in jobs:
                batches.append((job.success_attributes, cast("array[float]", job.kept_seconds)))
                job.kept_seconds = None
        return batches

    def _elapsed_ns(self, start_mono: float) -> int:
        return max(round((self._clock.monotonic() - start_mono) * 1e9), 0)

    def is_open(self, name: str, run_id: int) -> bool:
        """Whether the run is in progress in the view (no lock but for events waiting to be
        applied: one dict read)."""
        if self._lock.events:  # the run's start may be one of them
            with self._lock:
                pass
        job = self._jobs.get(name)
        return job is not None and run_id in job.runs

    def _category_code_locked(self, category: str | None) -> int:
        key = category or UNKNOWN
        code = self._category_codes.get(key)
        if code is None:
            if len(self._categories) >= 255:  # codes are one byte; 0 means success
                return self._category_codes[UNKNOWN]
            self._categories.append(key)
            code = self._category_codes[key] = len(self._categories)
        return code

    # -- stall deadlines ---------------------------------------------------------------

    def _rearm_locked(self, job: Job) -> float | None:
        """The job's stall deadline to schedule if it is now earlier than the armed one."""
        deadline = job.earliest_stall_deadline()
        if deadline is None or (job.armed is not None and deadline >= job.armed):
            return None
        job.armed = deadline
        return deadline

    def _on_deadline(self, key: Hashable, now: float) -> float | None:
        self._close_lost()
        kind, name = cast("tuple[str, str]", key)
        if kind == _MISSED:
            return self._on_missed(name, now)
        return self._on_stall(name, now)

    def _on_stall(self, name: str, now: float) -> float | None:
        """Runs of `name` past its ``stall_after``: those whose handle has ended without the
        view being told (another span processor raised before ours) are closed by
        `finished_elsewhere`; the others are marked stalled and reported. A stalled run's
        handle is then held weakly: if it is dropped without ever ending (its span was lost
        when another processor raised in ``on_start``), the run is closed as failed, category
        ``lost``, so no phantom run stays in the view."""
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return None
            stall_after = job.stall_after
            due = [
                (run_id, handle)
                for run_id, (start, handle, _) in job.runs.items()
                if run_id not in job.stalled_ids and start + stall_after <= now
            ]
        probe = self.finished_elsewhere
        if due and probe is not None:
            due = [(run_id, handle) for run_id, handle in due if not probe(handle)]
        stalled: list[StalledRun] = []
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return None
            for run_id, handle in due:
                entry = job.runs.get(run_id)
                if entry is None or run_id in job.stalled_ids:
                    continue
                start, _, start_ns = entry
                job.stalled_ids.add(run_id)
                try:
                    watch = weakref.ref(handle, functools.partial(self._on_lost, name, run_id))
                except TypeError:  # a handle that cannot be watched stays held
                    pass
                else:
                    job.runs[run_id] = (start, watch, start_ns)
                stalled.append(StalledRun(name, handle, now - start, stall_after))
            next_deadline = job.armed = job.earliest_stall_deadline()
            if stalled:
                job.updated_ns = self._clock.time_ns()
                job.version += 1
                self._view_version += 1
        listener = self.stall_listener
        if stalled and listener is not None:
            listener(stalled)
        return next_deadline

    def _on_lost(self, name: str, run_id: int, watch: weakref.ref[object]) -> None:
        # A weakref callback: takes no lock (SimpleQueue.put is reentrant, for this use).
        self._lost.put((name, run_id, watch))

    def _close_lost(self) -> None:
        """Record the stalled runs whose span was dropped as failed, category ``lost``. Called
        with no lock held: by the watchdog and whenever the view is read."""
        lost = self._lost
        while not lost.empty():
            try:
                name, run_id, watch = lost.get_nowait()
            except queue.Empty:  # another reader took it
                return
            with _LOST_GUARD:
                self._close_lost_run(name, run_id, watch)

    def _close_lost_run(self, name: str, run_id: int, watch: weakref.ref[object]) -> None:
        with self._lock:
            job = self._jobs.get(name)
            entry = None if job is None else job.runs.get(run_id)
        if entry is None or entry[1] is not watch:
            return
        start_mono, _, start_ns = entry
        elapsed_ns = self._elapsed_ns(start_mono)
        end_ns = start_ns + elapsed_ns
        if self.end_run(name, run_id, start_ns, end_ns, LOST_ERROR, LOST, closed_elsewhere=True):
            logger.warning(
                "job %r: a stalled run's span was dropped without being ended after %.1fs; "
                "the run is recorded as failed (category %s)",
                name,
                elapsed_ns / 1e9,
                LOST,
            )

    # -- schedules and missed runs -----------------------------------------------------

    def _set_slot_locked(
        self, job: Job, slot_ns: int | None, now_ns: int, *, due: float | None = None
    ) -> float | None:
        """Make `slot_ns` (epoch ns, as shown) the job's expected run, due at `due` on the
        monotonic clock (default: as far from now as `slot_ns` is from `now_ns`); returns
        its missed deadline (monotonic)."""
        job.slot_version += 1
        job.next_run_ns = slot_ns
        job.version += 1
        self._view_version += 1
        self._mark_locked(job.name)
        if slot_ns is None:
            return None
        if due is None:
            due = self._clock.monotonic() + (slot_ns - now_ns) / 1e9
        job.slot_due = due
        job.slot_grace_ns = job.grace_ns(slot_ns, now_ns)
        return due + job.slot_grace_ns / 1e9

    def _arm_missed(self, name: str, deadline: float | None) -> None:
        if deadline is not None:
            self._watchdog.schedule((_MISSED, name), deadline)

    def _take_slot_locked(
        self, job: Job, start_ns: int, start_mono: float
    ) -> tuple[tuple[Schedule, int, int] | None, float | None]:
        """A run started: it clears `missed`, and takes the expected slot unless it started
        more than the grace ahead of it. Returns what `_advance` needs to find the next slot
        of a calendar schedule, and the missed deadline of an interval's next slot (found
        here: an addition). `start_mono` is when it is seen to start (now)."""
        # A run recorded after the fact (record_run) started before it was seen: its
        # monotonic start is as far back as its wall-clock start.
        start_mono -= max(0.0, (self._clock.time_ns() - start_ns) / 1e9)
        slot, schedule = job.next_run_ns, job.schedule
        calendar = schedule is not None and not schedule.is_interval
        if slot is not None:
            grace_ns = job.slot_grace_ns
            if (
                start_ns < slot - grace_ns
                if calendar
                else start_mono < job.slot_due - grace_ns / 1e9
            ):
                # An extra run ahead of the expected one; one that started before the last
                # missed slot (recorded late) does not make that slot less missed.
                if job.last_missed_ns is None or start_ns >= job.last_missed_ns:
                    job.missed = False
                    job.consecutive_missed = 0
                return None, None
        job.missed = False
        job.consecutive_missed = 0
        if schedule is None:  # a slot set by an integration, which will set the next one
            self._set_slot_locked(job, None, start_ns)
            return None, None
        if calendar:
            job.slot_version += 1
            base_ns = start_ns if slot is None else max(start_ns, slot)
            return (schedule, base_ns, job.slot_version), None
        # An interval counts from the run's start, or from the slot if it started early.
        if slot is None or start_mono >= job.slot_due:
            base_ns, base_due = start_ns, start_mono
        else:
            base_ns, base_due = slot, job.slot_due
        deadline = self._set_slot_locked(
            job, schedule.next_after(base_ns), start_ns, due=base_due + schedule.period_seconds
        )
        return None, deadline

    def _advance(self, name: str, advance: tuple[Schedule, int, int] | None) -> None:
        """Find the slot after a base time (outside the lock: cron arithmetic is slow) and
        apply it unless the slot was moved meanwhile."""
        if advance is None:
            return
        schedule, base_ns, version = advance
        slot_ns = schedule.next_after(base_ns)
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            if job is None or job.slot_version != version:
                return
            deadline = self._set_slot_locked(job, slot_ns, now_ns)
        self._arm_missed(name, deadline)

    def _on_missed(self, name: str, now: float) -> float | None:
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            if job is None or job.next_run_ns is None:
                return None
            slot, grace_ns, due = job.next_run_ns, job.slot_grace_ns, job.slot_due
            schedule, version = job.schedule, job.slot_version
            if schedule is not None and not schedule.is_interval:
                # A calendar slot is a wall time: it is late once the wall clock says so.
                if now_ns < slot + grace_ns:
                    return now + (slot + grace_ns - now_ns) / 1e9
            elif now < due + grace_ns / 1e9:  # the slot moved later since this was set
                return due + grace_ns / 1e9
        count, last, next_slot, next_due = missed_slots(schedule, slot, due, grace_ns, now, now_ns)
        with self._lock:
            job = self._jobs.get(name)
            if job is None or job.slot_version != version:
                return None  # a run started meanwhile and took care of the slot
            running = bool(job.runs)
            if not running:  # a run in progress means the job is alive: the slot is skipped
                job.missed = True
                job.missed_count += count
                job.consecutive_missed += count
                job.last_missed_ns = last
                job.updated_ns = now_ns
            consecutive = job.consecutive_missed
            deadline = self._set_slot_locked(job, next_slot, now_ns, due=next_due)
        # Logged at 1, 2, 4, 8, ... missed in a row: a dead scheduler does not flood the log.
        if not running and consecutive.bit_length() > (consecutive - count).bit_length():
            logger.warning(
                "job %r missed its scheduled run at %s: no run started within %gs "
                "(%d missed in a row)",
                name,
                from_ns(last).isoformat(),
                grace_ns / 1e9,
                consecutive,
            )
        return deadline

    def record_missed(self, name: str, slot_ns: int, reason: str) -> None:
        """A scheduler reports that the run due at `slot_ns` was missed. Counted once per
        slot: not again if the watchdog (or an earlier report) already counted it. Unknown
        jobs are ignored."""
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            if job is None or (job.last_missed_ns is not None and job.last_missed_ns >= slot_ns):
                return
            if job.next_run_ns is not None and job.next_run_ns <= slot_ns:
                self._set_slot_locked(job, None, now_ns)  # the watchdog must not count it too
            if not job.runs:
                job.missed = True
            job.missed_count += 1
            consecutive = job.consecutive_missed = job.consecutive_missed + 1
            job.last_missed_ns = slot_ns
            job.updated_ns = now_ns
            job.version += 1
            self._view_version += 1
            self._mark_locked(name)
        if consecutive & (consecutive - 1) == 0:  # 1, 2, 4, 8, ... in a row
            logger.warning(
                "job %r missed its scheduled run at %s (%s; %d missed in a row)",
                name,
                from_ns(slot_ns).isoformat(),
                reason,
                consecutive,
            )

    def record_skipped(self, name: str, reason: str) -> None:
        """A due run of `name` was not started on purpose, for `reason` (a short token).
        Unknown jobs are ignored."""
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return
            labels, count = job.skipped.get(reason) or (
                MappingProxyType({JOB_NAME: name, REASON: reason}),
                0,
            )
            job.skipped[reason] = labels, count + 1
            job.skipped_count += 1
            job.last_skip_reason = reason
            job.updated_ns = now_ns
            job.version += 1
            self._view_version += 1
            self._mark_locked(name)
            total = job.skipped_count
        if total & (total - 1) == 0:  # logged at the 1st, 2nd, 4th, 8th, ... skip
            logger.warning("job %r: a due run was skipped (%s); %d skipped", name, reason, total)

    # -- reading the view --------------------------------------------------------------

    def reading(self) -> AbstractContextManager[None]:
        """A scope in which this thread reads the view with priority: runs starting or
        ending on other threads wait for it to end (at their start or end, a few ms at
        most), instead of taking the GIL from it in turns of 5 ms each. For a health
        document built while every thread is busy running jobs. Reads only, no I/O, no
        run of a job inside (it would wait for `_MAX_READER_WAIT` on other threads' scopes)."""
        return self._lock.reading

    def snapshot(self, name: str) -> JobStatus | None:
        self._close_lost()
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return None
            self._prune_history_locked(job, now_ns)
            return job.cached_status(now_ns)

    def snapshots(self) -> dict[str, JobStatus]:
        """Every job, sorted by name. Unchanged jobs reuse their cached snapshot."""
        self._close_lost()
        now_ns = self._clock.time_ns()
        with self._lock:
            dropped = self._prune_locked(now_ns)
            snapshots = {}
            for job in self._sorted_jobs_locked():
                self._prune_history_locked(job, now_ns)
                snapshots[job.name] = job.cached_status(now_ns)
        _log_dropped(dropped, self._retention_ns)
        return snapshots

    def health_rows(self) -> list[HealthRow]:
        """Every job, sorted by name, as the health endpoint needs it: its state and health
        settings, and its serialized member of the document. Callers must not change the
        list: while nothing changed, the same list is returned again.

        While the view is at the version the last rows were built at, and no job's history
        can have lost a run to its 24 h window since (the earliest `RunHistory.quiet_until`
        of that build), those rows are returned at once: no pass over the jobs. Otherwise
        only the jobs that changed are serialized again (with the lock held: see
        `collect_rows`); what that raised is reported once the lock is released.
        """
        self._close_lost()
        now_ns = self._clock.time_ns()
        with self._lock:
            dropped = self._prune_locked(now_ns)
            version = self._view_version
            last = self._rows
            if last is not None and last[0] == version and now_ns < last[1]:
                rows = last[2]
            else:
                rows = None
                pending = collect_rows(self._sorted_jobs_locked(), now_ns)
        _log_dropped(dropped, self._retention_ns)
        if rows is None:
            rows = finish_rows(pending)
            # Built from the view at `version`: a change made meanwhile moved the version,
            # and the next call builds again. One store: of two racing calls, either's.
            self._rows = (version, pending.quiet_until, rows)
        return rows

    def _prune_history_locked(self, job: Job, now_ns: int) -> None:
        """`Job.prune_history`, counted as a change of the view when it drops anything."""
        if job.prune_history(now_ns):
            self._view_version += 1

    def _sorted_locked(self) -> list[str]:
        names = self._sorted_names
        if names is None:
            names = self._sorted_names = sorted(self._jobs)
        return names

    def _sorted_jobs_locked(self) -> list[Job]:
        names = self._sorted_locked()
        cached = self._sorted_jobs
        if cached is None or cached[0] is not names:
            cached = self._sorted_jobs = (names, [self._jobs[name] for name in names])
        return cached[1]

    def runs_in_progress(self, name: str) -> list[tuple[int, bool]]:
        """(start in epoch ns, stalled) of each run of the job in progress, oldest first ([]
        for an unknown job)."""
        self._close_lost()
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return []
            stalled = job.stalled_ids
            runs = [(start_ns, run_id in stalled) for run_id, (_, _, start_ns) in job.runs.items()]
        runs.sort()
        return runs

    def history(self, name: str, limit: int | None = None) -> list[RunRecord]:
        """The job's runs of the last 24 hours, newest first ([] for an unknown job); with
        `limit`, the `limit` runs that ended last."""
        self._close_lost()
        now_ns = self._clock.time_ns()
        with self._lock:
            job = self._jobs.get(name)
            history = None if job is None else job.history
            if job is None or history is None:
                return []
            self._prune_history_locked(job, now_ns)
            records = history.records(limit)
            categories = tuple(self._categories)
        return run_records(records, categories)

    def metric_points(self) -> list[MetricPoint]:
        self._close_lost()
        now_ns = self._clock.time_ns()
        with self._lock:
            dropped = self._prune_locked(now_ns)
            points = [
                MetricPoint(
                    attributes=job.attributes,
                    success_attributes=job.success_attributes,
                    failed_attributes=job.failed_attributes,
                    success_count=job.success_count,
                    failure_count=job.failure_count,
                    active_runs=len(job.runs),
                    stalled_runs=len(job.stalled_ids),
                    timeout_count=job.timeout_count,
                    missed_count=job.missed_count,
                    last_success_ns=job.last_success_ns,
                    skipped=tuple((count, labels) for labels, count in job.skipped.values()),
                    state=job.state(),
                    critical=job.critical,
                    consecutive_failures=job.consecutive_failures,
                )
                for job in self._jobs.values()
            ]
        _log_dropped(dropped, self._retention_ns)
        return points

    # -- pending work ------------------------------------------------------------------

    def set_pending(self, kind: str, count: int | None) -> None:
        with self._lock:
            if count is None:
                self._pending.pop(kind, None)
                return
            if kind not in self._pending and len(self._pending) >= self._max_jobs:
                raise JobLimitError(
                    f"cannot track pending kind {kind!r}: already {self._max_jobs} kinds (max_jobs)"
                )
            self._pending[kind] = count

    def pending(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pending)

    # -- housekeeping ------------------------------------------------------------------

    def _admit(self, name: object) -> bool:
        """Register a job first seen on a span, if its name is valid and the cap allows."""
        try:
            self.register(validate_name(name))
        except (InvalidJobError, JobLimitError) as exc:
            key = str(name)[:250]
            if key not in self._refused and len(self._refused) < 100:
                self._refused.add(key)
                logger.warning("span ignored by the job status view: %s", exc)
            return False
        return True

    def _prune_locked(self, now_ns: int, *, force: bool = False) -> list[str]:
        """Drop jobs without a schedule, not running and unchanged for the retention period;
        returns their names. A scheduled job stays while registered, however rarely it runs."""
        last = self._last_prune_ns
        if not force and (
            (last is not None and now_ns - last < _PRUNE_EVERY_NS)
            or (self._prune_version == self._view_version and now_ns <= self._prune_due_ns)
        ):
            return []
        self._last_prune_ns = now_ns
        retention = self._retention_ns
        cutoff = now_ns - retention
        stale = []
        due = _FOREVER
        for name, job in self._jobs.items():
            if not job.runs and job.schedule is None and job.next_run_ns is None:
                if job.updated_ns < cutoff:
                    stale.append(name)
                elif job.updated_ns + retention < due:
                    due = job.updated_ns + retention
        for name in stale:
            job = self._jobs.pop(name)
            if self._dirty is not None:
                self._removed.append(job)
            self._sorted_names = None
        if stale:
            self._view_version += 1
        # Until the view changes, no job can be dropped before `due`: none is idle for the
        # retention period before it.
        self._prune_version = self._view_version
        self._prune_due_ns = due
        return stale

    # -- a store's publisher ----------------------------------------------------------

    def _mark_locked(self, name: str) -> None:
        if self._dirty is not None:
            self._dirty[name] = None

    def enable_changes(self, buffer_runs: int) -> None:
        """Keep track of changed jobs and their finished runs (at most `buffer_runs` waiting)
        for `collect_changes`, from now on."""
        with self._lock:
            self._buffer_runs = self._run_room = buffer_runs
            self._dirty = dict.fromkeys(self._jobs)

    def collect_changes(self, *, full: bool = False) -> list[LocalJob]:
        """The jobs changed since the last call (every job if `full`), as copies, with the
        runs that finished meanwhile; O(changed jobs) under the lock."""
        with self._lock:
            dirty = self._dirty
            if dirty is None:
                return []
            names = list(self._jobs) if full else list(dirty)
            self._dirty = {}
            self._run_room = self._buffer_runs
            # A job that left the view comes first: one of that name may have come since.
            changes = [local_job(job, removed=True) for job in self._removed]
            self._removed = []
            for name in names:
                job = self._jobs.get(name)
                if job is not None:
                    changes.append(local_job(job))
                    job.unpublished = job.unpublished_other = None
                    job.unpublished_dropped = 0
                    if job.unpublished_ran_in:
                        job.unpublished_ran_in = []
            return changes

    def close(self) -> None:
        self._watchdog.stop()

    def _reset_after_fork(self) -> None:
        # Runs in progress belong to the parent's threads, which the child does not have. The
        # child's missed deadlines are armed again by its own runs (or a new register): a
        # child that never runs a job must not report that job missed.
        # The events left for a holder of the lock are applied here (their follow-ups are
        # for the parent's watchdog): a run that ended before the fork is counted.
        parents = self._lock
        self._lock = _ViewLock(self._follow_up)
        parents.apply_events()  # their follow-ups go to the new lock's `after`
        self._lock.after.clear()  # deadlines for the parent's watchdog: armed anew below
        self._lost = queue.SimpleQueue()
        for job in self._jobs.values():
            job.runs.clear()
            job.stalled_ids.clear()
            job.armed = None
            job.version += 1
            job.unpublished = job.unpublished_other = None
            job.unpublished_dropped = 0
            job.unpublished_ran_in = []
        self._removed = []
        self._view_version += 1
        if self._dirty is not None:
            self._dirty = dict.fromkeys(self._jobs)
            self._run_room = self._buffer_runs
