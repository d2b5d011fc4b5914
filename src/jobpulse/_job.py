"""One job's state in a status view, and its rows of the health document.

A view (the registry, the store's fleet view) keeps its jobs as `Job` objects by name,
changes their fields under its own lock and bumps `Job.version` with every change. What is
built from a job (its `JobStatus`, its `HealthRow`) is cached on the job with the version it
was built at (a row carries its version), and is reused while the version is current.
Nothing here takes a lock.

The registry builds its health rows in two steps: `collect_rows` with its lock held (a pass
over the jobs, building the rows of those that changed), then `finish_rows` with no lock
held (reporting what could not be built).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from types import MappingProxyType
from typing import Any, NamedTuple

from jobpulse._guard import swallow
from jobpulse._history import HistoryStats, RunHistory
from jobpulse._model import (
    JobRecord,
    JobState,
    JobStatus,
    RunRecord,
    encode_json_str,
    failures_json,
    from_ns,
    member_text,
    rare_json,
    settings_json,
    tail_json,
)
from jobpulse._schedule import MAX_GRACE_SECONDS, MIN_GRACE_SECONDS, Schedule
from jobpulse._shared import JOB_NAME, STATUS

__all__ = [
    "AUTO_STALL_FLOOR_SECONDS",
    "AUTO_STALL_MIN_RUNS",
    "HealthRow",
    "Job",
    "LocalJob",
    "PendingRows",
    "RunBuffer",
    "collect_rows",
    "finish_rows",
    "local_job",
    "member_of",
    "run_fields",
    "run_records",
    "unavailable_row",
]

#: ``stall_after="auto"``: max(3 x p95 of the successful runs held, this floor, the timeout)
#: once at least `AUTO_STALL_MIN_RUNS` successful runs are held; recomputed at most once a
#: minute per job.
AUTO_STALL_FLOOR_SECONDS = 60.0
AUTO_STALL_MIN_RUNS = 20
_AUTO_STALL_FACTOR = 3.0
_AUTO_STALL_REFRESH_NS = 60 * 1_000_000_000

_NO_STATS = HistoryStats(0, 0, None, None, None, None)
_FOREVER = 1 << 63
_ROW = "health document row"
# A NamedTuple's __new__ is a Python function taking the 38 fields as arguments: twice the
# cost of building the plain tuple and making it a record in C.
_new_record = tuple.__new__
_STATE_VALUES = {state: state.value for state in JobState}  # .value is a Python property
# The metadata of a record of a job that has none: one object for all, not a dict per
# changed job and poll (never changed: records and snapshots only read it).
_NO_METADATA: dict[str, Any] = {}


class Job:
    """One job: its settings, counters, live runs, expected run and history. Not
    thread-safe: the view that holds it guards it with its lock."""

    __slots__ = (
        "armed",
        "attributes",
        "auto_due_ns",
        "auto_stall",
        "auto_stall_after",
        "closed_elsewhere",
        "consecutive_failures",
        "consecutive_missed",
        "created_ns",
        "critical",
        "explicit_stall_after",
        "failed_attributes",
        "failure_count",
        "failure_threshold",
        "grace",
        "history",
        "json_failures",
        "json_name",
        "json_tail",
        "kept_seconds",
        "last_duration_ns",
        "last_error",
        "last_error_category",
        "last_missed_ns",
        "last_outcome",
        "last_run_ns",
        "last_skip_reason",
        "last_success_ns",
        "max_ns",
        "member",
        "metadata",
        "min_ns",
        "missed",
        "missed_count",
        "name",
        "next_run_ns",
        "runs",
        "schedule",
        "schedule_attributes",
        "skipped",
        "skipped_count",
        "slot_due",
        "slot_grace_ns",
        "slot_version",
        "snapshot",
        "stall_after",
        "stalled_ids",
        "store_dropped",
        "success_attributes",
        "success_count",
        "timeout",
        "timeout_count",
        "total_duration_ns",
        "unpublished",
        "unpublished_dropped",
        "unpublished_other",
        "unpublished_ran_in",
        "updated_ns",
        "version",
    )

    def __init__(self, name: str, now_ns: int, default_stall_after: float) -> None:
        self.name = name
        self.attributes = MappingProxyType({JOB_NAME: name})
        self.success_attributes = MappingProxyType({JOB_NAME: name, STATUS: "success"})
        self.failed_attributes = MappingProxyType({JOB_NAME: name, STATUS: "failed"})
        #: Durations (seconds) of successful runs waiting to be folded into the duration
        #: histogram (see `StatusRegistry.take_durations`); an array: not a container the
        #: garbage collector tracks.
        self.kept_seconds: array[float] | None = None
        self.critical = False
        self.failure_threshold = 3
        self.timeout: float | None = None
        self.explicit_stall_after: float | None = None
        self.auto_stall = False
        self.auto_stall_after: float | None = None
        self.auto_due_ns = 0
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
        # run id -> (start on the monotonic clock, opaque handle, start in epoch ns). A
        # stalled run's handle is held weakly (see StatusRegistry._on_stall).
        self.runs: dict[int, tuple[float, object, int]] = {}
        self.stalled_ids: set[int] = set()
        self.closed_elsewhere: dict[int, None] | None = None
        self.armed: float | None = None
        # Bumped with every change. The cached snapshot and the health endpoint's row are
        # valid while they carry the current version.
        self.version = 0
        self.snapshot: tuple[int, JobStatus] | None = None
        self.member: HealthRow | None = None
        # What `member_of` keeps: the JSON string of the name, and the texts of the failure
        # fields and of the fields after the run counts, each with the values it was
        # written from.
        self.json_name = encode_json_str(name)
        self.json_failures: tuple[str, int, int, int, str | None, str | None] | None = None
        self.json_tail: tuple[str, int, int] | None = None
        self.history: RunHistory | None = None
        # The schedule, and the expected run ("slot") with its grace. slot_version changes
        # whenever the slot does, so that a slot computed outside the lock is applied only if
        # nothing moved it meanwhile.
        self.schedule: Schedule | None = None
        self.schedule_attributes: Mapping[str, str] | None = None
        self.grace: float | None = None
        self.next_run_ns: int | None = None
        # When the slot is due on the monotonic clock: what deadlines and the check of a
        # run against the slot use, except for calendar schedules (their slots are wall
        # times of a zone; next_run_ns is theirs).
        self.slot_due = 0.0
        self.slot_grace_ns = 0
        self.slot_version = 0
        self.missed = False
        self.missed_count = 0
        self.consecutive_missed = 0
        self.last_missed_ns: int | None = None
        # reason -> (metric attributes, runs skipped for that reason)
        self.skipped: dict[str, tuple[Mapping[str, str], int]] = {}
        self.skipped_count = 0
        self.last_skip_reason: str | None = None
        # Finished runs not yet handed to a store's publisher (None: no store), and those
        # left out because too many were waiting.
        # start_ns, duration_ns and end_ns of each, three to a run in one array: no object
        # per run (with a tuple per run kept until the next write, a monitored run cost
        # 0.5 us more); the category, error and timeout of each run that did not simply
        # succeed are in `unpublished_other`, by the run's index. See `RunBuffer`.
        self.unpublished: array[int] | None = None
        self.unpublished_other: dict[int, tuple[str | None, str | None, bool]] | None = None
        self.unpublished_dropped = 0
        # The pids of the processes of this host that ran those runs (see JOB_RAN_IN_PID).
        self.unpublished_ran_in: list[int] = []
        # In a fleet view: runs the store's writers left out of its history.
        self.store_dropped = 0

    def state(self) -> JobState:
        if self.stalled_ids:
            return JobState.STALLED
        if self.runs:
            return JobState.RUNNING
        if self.missed:
            return JobState.MISSED
        return self.last_outcome

    def prune_history(self, now_ns: int) -> bool:
        """Drop the runs older than the history's window (a change: bumps the version);
        True if anything was dropped."""
        history = self.history
        if history is not None and history.prune(now_ns):
            self.version += 1
            return True
        return False

    def cached_status(self, now_ns: int) -> JobStatus:
        """`to_status`, reused while the version is current."""
        self.prune_history(now_ns)
        cached = self.snapshot
        if cached is not None and cached[0] == self.version:
            return cached[1]
        snapshot = self.to_status(now_ns)
        self.snapshot = (self.version, snapshot)
        return snapshot

    def to_status(self, now_ns: int) -> JobStatus:
        return JobStatus._of_record(self.to_record(now_ns))

    def to_record(self, now_ns: int) -> JobRecord:
        history = self.history
        # Not kept: a record is built once per version of the job, for its snapshot, and a
        # kept one would outlive it (a young object the garbage collector would promote and
        # scan again). The health document's rows are built without one (`member_of`).
        stats = _NO_STATS if history is None else history.stats()
        _, _, p50, p95, p99, _ = stats
        min_ns, max_ns = self.min_ns, self.max_ns
        if min_ns is not None and max_ns is not None:
            low, high = min_ns / 1e9, max_ns / 1e9
            p50, p95, p99 = _clamp(p50, low, high), _clamp(p95, low, high), _clamp(p99, low, high)
        runs = self.success_count + self.failure_count
        last_duration_ns = self.last_duration_ns
        schedule = self.schedule
        metadata = self.metadata
        # Positional, JobRecord's order; test_job checks every field by name.
        return _new_record(
            JobRecord,
            (
                self.name,
                self.state(),
                self.critical,
                self.failure_threshold,
                self.timeout,
                self.stall_after,
                self.last_run_ns,
                None if last_duration_ns is None else last_duration_ns / 1e9,
                self.next_run_ns,
                self.success_count,
                self.failure_count,
                self.consecutive_failures,
                self.last_error,
                self.last_error_category,
                self.total_duration_ns / runs / 1e9 if runs else None,
                None if min_ns is None else min_ns / 1e9,
                None if max_ns is None else max_ns / 1e9,
                self.last_success_ns,
                len(self.runs),
                len(self.stalled_ids),
                self.timeout_count,
                dict(metadata) if metadata else _NO_METADATA,
                self.created_ns,
                self.updated_ns,
                None if schedule is None else schedule.text,
                None if schedule is None else schedule.timezone,
                self.slot_grace_ns / 1e9 if self.next_run_ns is not None else None,
                self.missed_count,
                self.last_missed_ns,
                self.skipped_count,
                self.last_skip_reason,
                self.auto_stall,
                p50,
                p95,
                p99,
                stats.success_rate,
                stats.runs,
                self.store_dropped + (0 if history is None else history.dropped(now_ns)),
            ),
        )

    def clamp(self, seconds: float | None) -> float | None:
        # A bucket's midpoint may lie outside what was ever seen (e.g. constant durations).
        if seconds is None or self.min_ns is None or self.max_ns is None:
            return seconds
        return min(max(seconds, self.min_ns / 1e9), self.max_ns / 1e9)

    def settle_stall_after(self, default_stall_after: float) -> None:
        if self.explicit_stall_after is not None:
            self.stall_after = self.explicit_stall_after
        elif self.auto_stall and self.auto_stall_after is not None:
            self.stall_after = self.auto_stall_after
        else:
            self.stall_after = max(default_stall_after, self.timeout or 0.0)

    def refresh_auto_stall(self, now_ns: int, default_stall_after: float) -> None:
        """Recompute ``stall_after="auto"`` from the successful runs held, then settle
        `stall_after`; the next refresh is due a minute after `now_ns`."""
        history = self.history
        count, p95 = (0, None) if history is None else history.success_percentile(0.95)
        p95 = self.clamp(p95)
        if count >= AUTO_STALL_MIN_RUNS and p95 is not None:
            self.auto_stall_after = max(
                _AUTO_STALL_FACTOR * p95, AUTO_STALL_FLOOR_SECONDS, self.timeout or 0.0
            )
            self.auto_due_ns = now_ns + _AUTO_STALL_REFRESH_NS
        else:
            self.auto_stall_after = None
        self.settle_stall_after(default_stall_after)

    def earliest_stall_deadline(self) -> float | None:
        """When the earliest run not yet stalled stalls (monotonic), or None."""
        stall_after = self.stall_after
        starts = [
            start for run_id, (start, *_) in self.runs.items() if run_id not in self.stalled_ids
        ]
        return min(starts) + stall_after if starts else None

    def grace_ns(self, slot_ns: int, now_ns: int) -> int:
        """How late a run of the slot `slot_ns` may start: the job's grace, else its
        schedule's default, else (a slot given by an integration) a tenth of the wait for
        it, as for a schedule."""
        if self.grace is not None:
            seconds = self.grace
        elif self.schedule is not None:
            seconds = self.schedule.default_grace()
        else:
            seconds = min(max(0.1 * (slot_ns - now_ns) / 1e9, MIN_GRACE_SECONDS), MAX_GRACE_SECONDS)
        return int(seconds * 1e9)


#: One job as the health document needs it: its state's value (`JobState.value`), whether it
#: is critical, its consecutive failures and failure threshold, its serialized member of the
#: document, and the job's version it was built at (what the document shows is the first
#: five). A plain tuple of plain values, cached on its job as it is: the garbage collector
#: stops tracking such a tuple the first time it sees it, so the rows a poll builds (one per
#: changed job) are not promoted and scanned again by every full collection, as a
#: NamedTuple's, a tuple holding a `JobState`, or a (version, row) pair would be (a pair is
#: untracked only if the collector happens to visit it after its row: in the registry's
#: young collections, where the rows' list is young and the jobs are old, it mostly did not).
HealthRow = tuple[str, bool, int, int, bytes, int]


def unavailable_row(job: Job, version: int) -> HealthRow:
    """A job whose member of the health document could not be built: its name, its state
    and an error marker, judged by the health rules like any other job; at `version`."""
    name = encode_json_str(job.name)
    state = job.state()
    member = (
        f'{name}:{{"job_name":{name},"status":"{state.value}",'
        f'"critical":{"true" if job.critical else "false"},'
        f'"consecutive_failures":{job.consecutive_failures},'
        f'"failure_threshold":{job.failure_threshold},'
        '"error":"this job\'s status could not be shown"}'
    )
    return (
        state.value,
        job.critical,
        job.consecutive_failures,
        job.failure_threshold,
        member.encode("utf-8", "backslashreplace"),
        version,
    )


class PendingRows(NamedTuple):
    """What `collect_rows` found: the rows in order, what building a changed job's row
    raised (that job's row is `unavailable_row`), and until when (epoch ns) no job's
    history can lose a run to its window (`quiet_until`)."""

    rows: list[HealthRow]
    failures: list[Exception]
    quiet_until: int


def collect_rows(jobs: Iterable[Job], now_ns: int) -> PendingRows:
    """Step one, with the view's lock held: each job's cached row if its version is
    current, else its row built now and cached on it (history older than the window is
    pruned first). Never raises for a job: what building its row raises is kept for
    `finish_rows`, and the job is served as `unavailable_row`. Built here, not after the
    lock is released: what is built for a row then lives no longer than it (for 300
    changed jobs, a poll 13% cheaper, and fewer collections of the young generation), and
    while the health endpoint builds its answer, runs wait for it anyway
    (`StatusRegistry.reading`).
    The rows depend on the time only through the histories: they stay what they are, while
    no job changes, until the earliest `RunHistory.quiet_until`, returned with them."""
    rows: list[HealthRow] = []
    failures: list[Exception] = []
    append = rows.append
    quiet_until = _FOREVER
    for job in jobs:
        # Written out, not a call per job: a call was a quarter of a pass's cost (22 of 86
        # us for 1,000 jobs).
        history = job.history
        if history is not None:
            quiet = history.quiet_until
            if quiet <= now_ns:
                if history.prune(now_ns):
                    job.version += 1
                quiet = history.quiet_until
            if quiet < quiet_until:
                quiet_until = quiet
        row = job.member
        version = job.version
        if row is None or row[5] != version:
            try:
                row = (
                    _STATE_VALUES[job.state()],
                    job.critical,
                    job.consecutive_failures,
                    job.failure_threshold,
                    member_of(job, now_ns),
                    version,
                )
            except Exception as exc:  # noqa: BLE001 - reported once the lock is released
                failures.append(exc)
                row = unavailable_row(job, version)
            job.member = row
        append(row)
    return PendingRows(rows, failures, quiet_until)


def finish_rows(pending: PendingRows) -> list[HealthRow]:
    """Step two, with no lock held: reports what `collect_rows` could not build; the rows."""
    for failure in pending.failures:
        swallow(_ROW, failure)
    return pending.rows


def member_of(job: Job, now_ns: int) -> bytes:
    """``member_json(job.to_record(now_ns))``, built from the job without the record, the
    texts of its failure fields and of the fields after its run counts kept on it while
    the values they were written from stay (most changes are runs that succeeded)."""
    history = job.history
    if history is None:
        held, p50, p95, p99, rate = 0, None, None, None, None
        dropped = job.store_dropped
    else:
        held, _, p50, p95, p99, rate = history.stats()
        dropped = job.store_dropped + history.dropped(now_ns)
    min_ns, max_ns = job.min_ns, job.max_ns
    low = None if min_ns is None else min_ns / 1e9
    high = None if max_ns is None else max_ns / 1e9
    if low is not None and high is not None:
        p50, p95, p99 = _clamp(p50, low, high), _clamp(p95, low, high), _clamp(p99, low, high)
    failure_count, consecutive = job.failure_count, job.consecutive_failures
    threshold, error, category = job.failure_threshold, job.last_error, job.last_error_category
    failures = job.json_failures
    if (
        failures is None
        or failures[1] != failure_count
        or failures[2] != consecutive
        or failures[3] != threshold
        or failures[4] != error
        or failures[5] != category
    ):
        text = failures_json(failure_count, consecutive, threshold, error, category)
        failures = (text, failure_count, consecutive, threshold, error, category)
        job.json_failures = failures
    metadata, created_ns = job.metadata, job.created_ns
    if metadata:  # changed in place: written every time
        tail_text = tail_json(dropped, metadata, created_ns)
    else:
        tail = job.json_tail
        if tail is None or tail[1] != dropped or tail[2] != created_ns:
            tail = job.json_tail = (tail_json(dropped, metadata, created_ns), dropped, created_ns)
        tail_text = tail[0]
    schedule = job.schedule
    next_run_ns = job.next_run_ns
    success_count = job.success_count
    runs = success_count + failure_count
    last_duration_ns = job.last_duration_ns
    return member_text(
        job.json_name,
        job.state(),
        job.critical,
        job.last_run_ns,
        None if last_duration_ns is None else last_duration_ns / 1e9,
        next_run_ns,
        success_count,
        failures[0],
        job.total_duration_ns / runs / 1e9 if runs else None,
        high,
        low,
        job.last_success_ns,
        len(job.runs),
        len(job.stalled_ids),
        rare_json(
            job.timeout_count,
            settings_json(
                job.timeout,
                job.stall_after,
                job.auto_stall,
                None if schedule is None else schedule.text,
                None if schedule is None else schedule.timezone,
                job.slot_grace_ns / 1e9 if next_run_ns is not None else None,
            ),
            job.missed_count,
            job.last_missed_ns,
            job.skipped_count,
            job.last_skip_reason,
        ),
        p50,
        p95,
        p99,
        rate,
        held,
        tail_text,
        job.updated_ns,
    )


def _clamp(seconds: float | None, low: float, high: float) -> float | None:
    """``min(max(seconds, low), high)`` (the same one of two equal values), or None."""
    if seconds is None:
        return None
    if low > seconds:
        seconds = low
    return high if high < seconds else seconds


class RunBuffer(NamedTuple):
    """A job's finished runs waiting for a store's publisher, as the registry keeps them
    (`Job.unpublished`, `Job.unpublished_other`), handed over as they are: `run_fields`
    makes them tuples, outside the registry's lock."""

    times: array[int]
    other: dict[int, tuple[str | None, str | None, bool]] | None


_NO_TIMES: array[int] = array("q")  # never written to


def run_fields(buffer: RunBuffer) -> list[tuple[int, int, int, str | None, str | None, bool]]:
    """The runs of `buffer` as (start_ns, duration_ns, end_ns, category or None, error or
    None, timed out), in the order they ended."""
    times = iter(buffer.times)
    # Three at a time from one iterator; the endless repeats are shared (a flush of 1,000
    # jobs calls this 1,000 times).
    runs = list(zip(times, times, times, _NONES, _NONES, _FALSES, strict=False))
    other = buffer.other
    if other:
        for index, (category, error, timed_out) in other.items():
            start_ns, duration_ns, end_ns, *_ = runs[index]
            runs[index] = (start_ns, duration_ns, end_ns, category, error, timed_out)
    return runs


_NONES, _FALSES = repeat(None), repeat(False)


class LocalJob(NamedTuple):
    """One job as a store's publisher takes it from the registry: counters (absolute; the
    publisher makes deltas of them), extremes, the runs finished since the last collection
    as (start_ns, duration_ns, end_ns, category or None, error or None, timed out), and the
    runs in progress as (run id, start_ns)."""

    name: str
    created_ns: int
    updated_ns: int
    settings: dict[str, Any]
    success_count: int
    failure_count: int
    timeout_count: int
    skipped_count: int
    missed_count: int
    total_duration_ns: int
    min_ns: int | None
    max_ns: int | None
    runs: RunBuffer
    dropped_runs: int
    metadata: dict[str, Any]
    last_start_ns: int | None
    last_success_ns: int | None
    last_missed_ns: int | None
    last_skip_reason: str | None
    next_run_ns: int | None
    grace_ns: int
    open_runs: tuple[tuple[int, int], ...]
    stall_after: float
    #: (end_ns, duration_ns, failed, consecutive_failures, error, category) of the last
    #: finished run, or None: what seeds a store that lost its data. The end is the job's
    #: last change, at or after the run's end.
    last: tuple[int, int, bool, int, str | None, str | None] | None = None
    #: The job left the view (unregistered or pruned): its last change. Its runs in
    #: progress and expected run are no longer this instance's, and a job of that name
    #: registered again starts its counts from zero.
    removed: bool = False
    #: The pids of the processes of this host that ran some of `runs` and could not end
    #: them (`JOB_RAN_IN_PID`): the runs they left open are those.
    ran_in: tuple[int, ...] = ()


def local_job(job: Job, *, removed: bool = False) -> LocalJob:
    """What a store's publisher needs of `job`, copied (call under the view's lock)."""
    schedule = job.schedule
    expected = not removed and job.next_run_ns is not None
    runs = () if removed else tuple((run_id, entry[2]) for run_id, entry in job.runs.items())
    return LocalJob(
        name=job.name,
        created_ns=job.created_ns,
        updated_ns=job.updated_ns,
        settings={
            "critical": job.critical,
            "failure_threshold": job.failure_threshold,
            "timeout": job.timeout,
            "stall_after": job.stall_after,
            "stall_after_auto": job.auto_stall,
            "schedule": None if schedule is None else schedule.text,
            "timezone": None if schedule is None else schedule.timezone,
            "grace": job.grace,
        },
        success_count=job.success_count,
        failure_count=job.failure_count,
        timeout_count=job.timeout_count,
        skipped_count=job.skipped_count,
        missed_count=job.missed_count,
        total_duration_ns=job.total_duration_ns,
        min_ns=job.min_ns,
        max_ns=job.max_ns,
        runs=RunBuffer(job.unpublished or _NO_TIMES, job.unpublished_other),
        dropped_runs=job.unpublished_dropped,
        metadata=dict(job.metadata),
        last_start_ns=job.last_run_ns,
        last_success_ns=job.last_success_ns,
        last_missed_ns=job.last_missed_ns,
        last_skip_reason=job.last_skip_reason,
        next_run_ns=job.next_run_ns if expected else None,
        grace_ns=job.slot_grace_ns if expected else 0,
        open_runs=runs,
        stall_after=job.stall_after,
        last=None
        if job.last_duration_ns is None
        else (
            job.updated_ns,
            job.last_duration_ns,
            job.consecutive_failures > 0,
            job.consecutive_failures,
            job.last_error,
            job.last_error_category,
        ),
        removed=removed,
        ran_in=tuple(job.unpublished_ran_in),
    )


def run_records(
    records: list[tuple[int, float, int]], categories: Sequence[str]
) -> list[RunRecord]:
    """`RunHistory.records` as `RunRecord`s, newest first; a failure's code is its index + 1
    in `categories`."""
    records.sort(key=lambda record: record[0], reverse=True)
    return [
        RunRecord(
            started_at=from_ns(start_ns),
            duration_seconds=duration,
            outcome=JobState.SUCCESS if code == 0 else JobState.FAILED,
            error_category=None if code == 0 else categories[code - 1],
        )
        for start_ns, duration, code in records
    ]
