"""The status view: every job, its settings, its live runs and its counters.

One lock guards everything here. Methods copy what they return while holding it and call
out (watchdog, stall listener, logging) only after releasing it. Nothing here imports
OpenTelemetry: runs are identified by an int (the span id) and carry an opaque handle (the
live span) that is handed back to the stall listener.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

from jobpulse import _metadata
from jobpulse._clock import Clock
from jobpulse._exceptions import InvalidJobError, JobLimitError
from jobpulse._fork import after_fork_in_child
from jobpulse._model import JobState, JobStatus, from_ns
from jobpulse._validation import validate_name
from jobpulse._watchdog import Watchdog

__all__ = ["JOB_NAME", "STATUS", "JobSettings", "MetricPoint", "StalledRun", "StatusRegistry"]

logger = logging.getLogger("jobpulse")

#: Attribute keys shared by spans and metric points.
JOB_NAME = "job.name"
STATUS = "status"

_PRUNE_EVERY_NS = 60 * 1_000_000_000
_STALL = "stall"


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
    last_success_ns: int | None


@dataclass(frozen=True)
class JobSettings:
    """Per-job settings as `register()` takes them; None keeps the current value."""

    critical: bool | None = None
    failure_threshold: int | None = None
    timeout: float | None = None
    stall_after: float | None = None


StallListener = Callable[[list[StalledRun]], None]


class _Job:
    __slots__ = (
        "armed",
        "attributes",
        "consecutive_failures",
        "created_ns",
        "critical",
        "explicit_stall_after",
        "failed_attributes",
        "failure_count",
        "failure_threshold",
        "last_duration_ns",
        "last_error",
        "last_error_category",
        "last_outcome",
        "last_run_ns",
        "last_success_ns",
        "max_ns",
        "metadata",
        "min_ns",
        "name",
        "runs",
        "snapshot",
        "stall_after",
        "stalled_ids",
        "success_attributes",
        "success_count",
        "timeout",
        "timeout_count",
        "total_duration_ns",
        "updated_ns",
    )

    def __init__(self, name: str, now_ns: int, default_stall_after: float) -> None:
        self.name = name
        self.attributes = MappingProxyType({JOB_NAME: name})
        self.success_attributes = MappingProxyType({JOB_NAME: name, STATUS: "success"})
        self.failed_attributes = MappingProxyType({JOB_NAME: name, STATUS: "failed"})
        self.critical = False
        self.failure_threshold = 3
        self.timeout: float | None = None
        self.explicit_stall_after: float | None = None
        self.stall_after = default_stall_after
        self.created_ns = now_ns
        self.updated_ns = now_ns
        self.last_outcome = JobState.PENDING
        self.last_run_ns: int | None = None
        self.last_duration_ns: int | None = None
        self.last_success_ns: int | None = None
        self.total_duration_ns = 0
        self.min_ns: int | None = None
        self.max_ns: int | None = None
        self.success_count = 0
        self.failure_count = 0
        self.consecutive_failures = 0
        self.timeout_count = 0
        self.last_error: str | None = None
        self.last_error_category: str | None = None
        self.metadata: dict[str, Any] = {}
        # run id -> (start on the monotonic clock, opaque handle)
        self.runs: dict[int, tuple[float, object]] = {}
        self.stalled_ids: set[int] = set()
        self.armed: float | None = None
        self.snapshot: JobStatus | None = None

    def state(self) -> JobState:
        if self.stalled_ids:
            return JobState.STALLED
        if self.runs:
            return JobState.RUNNING
        return self.last_outcome

    def to_status(self) -> JobStatus:
        runs = self.success_count + self.failure_count
        return JobStatus(
            job_name=self.name,
            state=self.state(),
            critical=self.critical,
            failure_threshold=self.failure_threshold,
            timeout_seconds=self.timeout,
            stall_after_seconds=self.stall_after,
            last_run_time=None if self.last_run_ns is None else from_ns(self.last_run_ns),
            last_duration_seconds=_seconds(self.last_duration_ns),
            next_run_time=None,
            success_count=self.success_count,
            failure_count=self.failure_count,
            consecutive_failures=self.consecutive_failures,
            last_error=self.last_error,
            last_error_category=self.last_error_category,
            average_duration_seconds=self.total_duration_ns / runs / 1e9 if runs else None,
            min_duration_seconds=_seconds(self.min_ns),
            max_duration_seconds=_seconds(self.max_ns),
            last_success_time=None
            if self.last_success_ns is None
            else from_ns(self.last_success_ns),
            active_runs=len(self.runs),
            stalled_runs=len(self.stalled_ids),
            timeout_count=self.timeout_count,
            metadata=MappingProxyType(dict(self.metadata)),
            created_at=from_ns(self.created_ns),
            updated_at=from_ns(self.updated_ns),
        )


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def _log_dropped(names: list[str], retention_ns: int) -> None:
    if names:
        logger.info(
            "dropped %d jobs idle for more than %.0fs: %s",
            len(names),
            retention_ns / 1e9,
            ", ".join(names[:10]) + (", ..." if len(names) > 10 else ""),
        )


class StatusRegistry:
    """Jobs by name, with their live runs, counters and settings.

    Thread-safe; every method is O(1) except those that copy out the whole view. The view
    holds at most `max_jobs` jobs; a job that is not running and has not changed for
    `retention_seconds` is dropped (checked at most once a minute, when the view is read).
    Run deadlines are kept on a `Watchdog`; a run still going `stall_after` seconds after it
    started is marked stalled and reported to `stall_listener`.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        default_stall_after: float,
        max_jobs: int,
        retention_seconds: float,
    ) -> None:
        self._clock = clock
        self._default_stall_after = default_stall_after
        self._max_jobs = max_jobs
        self._retention_ns = int(retention_seconds * 1e9)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._pending: dict[str, int] = {}
        self._last_prune_ns: int | None = None
        self._refused: set[str] = set()
        self.stall_listener: StallListener | None = None
        self._watchdog = Watchdog(clock, self._on_deadline)
        after_fork_in_child(self._reset_after_fork)

    # -- settings ----------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def timeout_of(self, name: str) -> float | None:
        """The job's timeout in seconds (no lock: a plain read of one attribute)."""
        job = self._jobs.get(name)
        return None if job is None else job.timeout

    def register(self, name: str, settings: JobSettings = JobSettings()) -> None:
        """Add the job if it is new (raising `JobLimitError` past `max_jobs`), then apply the
        settings that are not None. `name` must already be valid."""
        now_ns = self._clock.time_ns()
        dropped: list[str] = []
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
                job = self._jobs[name] = _Job(name, now_ns, self._default_stall_after)
            if settings.critical is not None:
                job.critical = settings.critical
            if settings.failure_threshold is not None:
                job.failure_threshold = settings.failure_threshold
            if settings.timeout is not None:
                job.timeout = settings.timeout
            if settings.stall_after is not None:
                job.explicit_stall_after = settings.stall_after
            job.stall_after = job.explicit_stall_after or max(
                self._default_stall_after, job.timeout or 0.0
            )
            job.snapshot = None
            rearm = self._earliest_deadline_locked(job)
            if rearm is not None and (job.armed is None or rearm < job.armed):
                job.armed = rearm
            else:
                rearm = None
        _log_dropped(dropped, self._retention_ns)
        if rearm is not None:
            self._watchdog.schedule((_STALL, name), rearm)

    # -- runs (the hot path) -----------------------------------------------------------

    def start_run(self, name: str, run_id: int, handle: object, start_ns: int) -> None:
        """A run of `name` began at `start_ns` (epoch ns). Unknown names are registered with
        default settings if they are valid and the cap allows; otherwise the run is ignored."""
        if name not in self._jobs and not self._admit(name):
            return
        start_mono = self._clock.monotonic()
        arm = None
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return
            job.runs[run_id] = (start_mono, handle)
            job.last_run_ns = start_ns
            job.updated_ns = start_ns
            job.snapshot = None
            if job.armed is None:
                arm = job.armed = start_mono + job.stall_after
        if arm is not None:
            self._watchdog.schedule((_STALL, name), arm)

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
    ) -> tuple[Mapping[str, str], int] | None:
        """A run ended: successfully if `error` is None. Returns the metric attributes for
        the run and the job's consecutive failures, or None if the job is not in the view."""
        duration_ns = end_ns - start_ns
        refused = 0
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return None
            job.runs.pop(run_id, None)
            if job.stalled_ids:
                job.stalled_ids.discard(run_id)
            job.last_duration_ns = duration_ns
            job.total_duration_ns += duration_ns
            if job.min_ns is None or duration_ns < job.min_ns:
                job.min_ns = duration_ns
            if job.max_ns is None or duration_ns > job.max_ns:
                job.max_ns = duration_ns
            if error is None:
                job.success_count += 1
                job.consecutive_failures = 0
                job.last_error = job.last_error_category = None
                job.last_success_ns = end_ns
                job.last_outcome = JobState.SUCCESS
                attributes = job.success_attributes
            else:
                job.failure_count += 1
                job.consecutive_failures += 1
                job.last_error = error
                job.last_error_category = category
                if timed_out:
                    job.timeout_count += 1
                job.last_outcome = JobState.FAILED
                attributes = job.failed_attributes
            if metadata:
                refused = _metadata.merge(job.metadata, metadata)
            job.updated_ns = end_ns
            job.snapshot = None
            consecutive = job.consecutive_failures
        if refused:
            logger.warning(
                "job %r: %d metadata keys dropped (at most %d keys per job)",
                name,
                refused,
                _metadata.MAX_KEYS,
            )
        return attributes, consecutive

    # -- stall deadlines ---------------------------------------------------------------

    def _earliest_deadline_locked(self, job: _Job) -> float | None:
        stall_after = job.stall_after
        starts = [start for run_id, (start, _) in job.runs.items() if run_id not in job.stalled_ids]
        return min(starts) + stall_after if starts else None

    def _on_deadline(self, key: Hashable, now: float) -> float | None:
        name = cast("tuple[str, str]", key)[1]
        stalled: list[StalledRun] = []
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return None
            stall_after = job.stall_after
            for run_id, (start, handle) in job.runs.items():
                if run_id not in job.stalled_ids and start + stall_after <= now:
                    job.stalled_ids.add(run_id)
                    stalled.append(StalledRun(name, handle, now - start, stall_after))
            next_deadline = job.armed = self._earliest_deadline_locked(job)
            if stalled:
                job.updated_ns = self._clock.time_ns()
                job.snapshot = None
        listener = self.stall_listener
        if stalled and listener is not None:
            listener(stalled)
        return next_deadline

    # -- reading the view --------------------------------------------------------------

    def snapshot(self, name: str) -> JobStatus | None:
        with self._lock:
            job = self._jobs.get(name)
            return None if job is None else self._snapshot_locked(job)

    def snapshots(self) -> dict[str, JobStatus]:
        """Every job, sorted by name. Unchanged jobs reuse their cached snapshot."""
        now_ns = self._clock.time_ns()
        with self._lock:
            dropped = self._prune_locked(now_ns)
            snapshots = {
                name: self._snapshot_locked(self._jobs[name]) for name in sorted(self._jobs)
            }
        _log_dropped(dropped, self._retention_ns)
        return snapshots

    @staticmethod
    def _snapshot_locked(job: _Job) -> JobStatus:
        snapshot = job.snapshot
        if snapshot is None:
            snapshot = job.snapshot = job.to_status()
        return snapshot

    def metric_points(self) -> list[MetricPoint]:
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
                    last_success_ns=job.last_success_ns,
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
        """Drop jobs not running and unchanged for the retention period; returns their names."""
        last = self._last_prune_ns
        if not force and last is not None and now_ns - last < _PRUNE_EVERY_NS:
            return []
        self._last_prune_ns = now_ns
        cutoff = now_ns - self._retention_ns
        stale = [
            name for name, job in self._jobs.items() if not job.runs and job.updated_ns < cutoff
        ]
        for name in stale:
            del self._jobs[name]
        return stale

    def close(self) -> None:
        self._watchdog.stop()

    def _reset_after_fork(self) -> None:
        # Runs in progress belong to the parent's threads, which the child does not have.
        self._lock = threading.Lock()
        for job in self._jobs.values():
            job.runs.clear()
            job.stalled_ids.clear()
            job.armed = None
            job.snapshot = None
