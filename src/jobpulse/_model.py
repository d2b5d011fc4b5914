"""Immutable snapshots of the status view: what `JobMonitor.status()` and friends return."""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring as encode_json_str
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "JobRecord",
    "JobState",
    "JobStatus",
    "JobsSummary",
    "RunRecord",
    "dump_json",
    "encode_json_str",
    "failures_json",
    "from_ns",
    "member_json",
    "member_text",
    "rare_json",
    "rfc3339",
    "settings_json",
    "tail_json",
    "to_ns",
]


class JobState(str, enum.Enum):
    """Where a job stands now.

    ``pending``: registered, never run. ``running``: at least one run in progress.
    ``success`` / ``failed``: how the last finished run ended. ``stalled``: a run is still
    going past the job's ``stall_after``. ``missed``: a scheduled run did not start in time.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    STALLED = "stalled"
    MISSED = "missed"

    def __str__(self) -> str:
        return self.value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def from_ns(ns: int) -> datetime:
    """An aware UTC datetime from nanoseconds since the epoch (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=ns // 1_000)


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch from an aware datetime (exact, unlike ``timestamp()``)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def rfc3339(moment: datetime | None) -> str | None:
    """``2026-01-01T12:00:00.123Z`` (UTC, milliseconds), or None."""
    if moment is None:
        return None
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dump_json(content: Any) -> bytes:
    """Compact UTF-8 JSON, as the endpoints serve it."""
    return _ENCODER.encode(content).encode()


_BOOL = {False: "false", True: "true"}


def _json_str(text: str | None) -> str:
    return "null" if text is None else encode_json_str(text)


_SECONDS_CACHE: dict[int, str] = {}
# A third of the cost of formatting the milliseconds each time.
_MILLIS_JSON = tuple(f'.{millis:03d}Z"' for millis in range(1000))


def _json_time(ns: int | None) -> str:
    """A JSON string of `rfc3339` (milliseconds, truncated) from epoch nanoseconds."""
    if ns is None:
        return "null"
    seconds, rest = divmod(ns, 1_000_000_000)
    # Many times share their second (a run's start, end and update; jobs on one schedule).
    prefix = _SECONDS_CACHE.get(seconds)
    if prefix is None:
        if len(_SECONDS_CACHE) >= 8192:
            _SECONDS_CACHE.clear()
        prefix = _SECONDS_CACHE[seconds] = from_ns(seconds * 1_000_000_000).strftime(
            '"%Y-%m-%dT%H:%M:%S'
        )
    return prefix + _MILLIS_JSON[rest // 1_000_000]


def _json_ms(seconds: float | None) -> str:
    """`_ms` as JSON: the repr of ``round(seconds * 1000.0, 3)``, as json.dumps writes it."""
    if seconds is None:
        return "null"
    ms = seconds * 1000.0
    # Half the cost of round() then repr(). Both round correctly to 3 places, and below 1e12
    # the result has at most 15 significant digits, which a float's repr always gives back
    # exactly: so it is the fixed-point text without its trailing zeros. (Not for a float
    # subclass, whose round() may return something else.)
    if type(ms) is float and -1e12 < ms < 1e12:
        text = f"{ms:.3f}".rstrip("0")
        return text + "0" if text[-1] == "." else text
    return repr(round(ms, 3))


_MS_TEXTS: dict[float, str] = {}


def _json_ms_kept(seconds: float | None) -> str:
    """`_json_ms`, its text kept by the value: for durations that stay put from one run to
    the next (the extremes, the percentiles: bucket midpoints). Not a zero: 0.0 and -0.0
    are equal but written apart."""
    if not seconds:
        return _json_ms(seconds)
    text = _MS_TEXTS.get(seconds)
    if text is None:
        if len(_MS_TEXTS) >= 4096:
            _MS_TEXTS.clear()
        text = _MS_TEXTS[seconds] = _json_ms(seconds)
    return text


_RATE_TEXTS: dict[float, str] = {}


def _json_rate_kept(rate: float | None) -> str:
    """`_json_rate`, its text kept by the value: a history holds a bounded number of runs,
    so its success rates are few fractions (1.0 mostly). Floats only, and not a zero: 1 and
    1.0 are equal but written apart, as are 0.0 and -0.0."""
    if type(rate) is not float or not rate:
        return _json_rate(rate)
    text = _RATE_TEXTS.get(rate)
    if text is None:
        if len(_RATE_TEXTS) >= 4096:
            _RATE_TEXTS.clear()
        text = _RATE_TEXTS[rate] = _json_rate(rate)
    return text


def _json_rate(rate: float | None) -> str:
    """The repr of ``round(rate, 4)``; fast as `_json_ms` is (15 digits below 1e11). An int
    keeps its repr."""
    if rate is None:
        return "null"
    if type(rate) is float and -1e11 < rate < 1e11:
        text = f"{rate:.4f}".rstrip("0")
        return text + "0" if text[-1] == "." else text
    return repr(round(rate, 4))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class RunRecord:
    """One finished run from a job's history. ``outcome`` is ``success`` or ``failed``."""

    started_at: datetime
    duration_seconds: float
    outcome: JobState
    error_category: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": rfc3339(self.started_at),
            "duration_ms": _ms(self.duration_seconds),
            "outcome": self.outcome.value,
            "error_category": self.error_category,
        }


@dataclass(frozen=True)
class JobStatus:
    """One job as the status view saw it at one moment. Durations in seconds, times in UTC.

    Min/max/average durations and ``last_*`` fields are None until the first run ends.
    Percentiles and the success rate cover the runs of the last 24 hours that the history
    holds (``history_runs``; ``history_dropped`` more were left out past its capacity);
    percentiles come from log-scale buckets and are within 5% of the exact value.
    ``schedule``, ``timezone``, ``grace_seconds`` and ``next_run_time`` are None for a job
    without a schedule.
    """

    job_name: str
    state: JobState
    critical: bool
    failure_threshold: int
    timeout_seconds: float | None
    stall_after_seconds: float
    last_run_time: datetime | None
    last_duration_seconds: float | None
    next_run_time: datetime | None
    success_count: int
    failure_count: int
    consecutive_failures: int
    last_error: str | None
    last_error_category: str | None
    average_duration_seconds: float | None
    min_duration_seconds: float | None
    max_duration_seconds: float | None
    last_success_time: datetime | None
    active_runs: int
    stalled_runs: int
    timeout_count: int
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    schedule: str | None = None
    timezone: str | None = None
    grace_seconds: float | None = None
    missed_count: int = 0
    last_missed_run_time: datetime | None = None
    skipped_count: int = 0
    last_skip_reason: str | None = None
    stall_after_auto: bool = False
    p50_duration_seconds: float | None = None
    p95_duration_seconds: float | None = None
    p99_duration_seconds: float | None = None
    success_rate: float | None = None
    history_runs: int = 0
    history_dropped: int = 0

    @property
    def run_count(self) -> int:
        """Finished runs, successful or not."""
        return self.success_count + self.failure_count

    @property
    def failing(self) -> bool:
        """True when the last finished run failed (and nothing has succeeded since)."""
        return self.consecutive_failures > 0

    def to_dict(self) -> dict[str, Any]:
        """The job as the health document shows it: the spec's field names, durations in ms."""
        return {
            "job_name": self.job_name,
            "status": self.state.value,
            "critical": self.critical,
            "last_run_time": rfc3339(self.last_run_time),
            "last_duration_ms": _ms(self.last_duration_seconds),
            "next_run_time": rfc3339(self.next_run_time),
            "success_count": self.success_count,
            "failure_count": self.failure_count,
            "consecutive_failures": self.consecutive_failures,
            "failure_threshold": self.failure_threshold,
            "last_error": self.last_error,
            "last_error_category": self.last_error_category,
            "average_execution_ms": _ms(self.average_duration_seconds),
            "max_execution_ms": _ms(self.max_duration_seconds),
            "min_execution_ms": _ms(self.min_duration_seconds),
            "last_success_time": rfc3339(self.last_success_time),
            "active_runs": self.active_runs,
            "stalled_runs": self.stalled_runs,
            "timeout_count": self.timeout_count,
            "timeout_ms": _ms(self.timeout_seconds),
            "stall_after_ms": _ms(self.stall_after_seconds),
            "stall_after_auto": self.stall_after_auto,
            "schedule": self.schedule,
            "timezone": self.timezone,
            "grace_ms": _ms(self.grace_seconds),
            "missed_count": self.missed_count,
            "last_missed_run_time": rfc3339(self.last_missed_run_time),
            "skipped_count": self.skipped_count,
            "last_skip_reason": self.last_skip_reason,
            "p50_duration_ms": _ms(self.p50_duration_seconds),
            "p95_duration_ms": _ms(self.p95_duration_seconds),
            "p99_duration_ms": _ms(self.p99_duration_seconds),
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "history_runs": self.history_runs,
            "history_dropped": self.history_dropped,
            "metadata": dict(self.metadata),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }

    @functools.cached_property
    def json_member(self) -> bytes:
        """``"name":{...}``: this job's member of the health document's ``jobs`` object,
        equal to `to_dict` as JSON (built once per snapshot)."""
        values = [getattr(self, name) for name in JobRecord._fields]
        for index in _TIME_INDEXES:
            if values[index] is not None:
                values[index] = to_ns(values[index])
        return member_json(JobRecord(*values))

    @classmethod
    def _of_record(cls, record: JobRecord) -> JobStatus:
        # The registry builds one of these per changed job each time the view is read; the
        # frozen dataclass's __init__ sets 36 fields one object.__setattr__ at a time, which
        # costs more than everything else in the snapshot, so they are set in one go.
        fields = record._asdict()
        for name in _TIME_FIELDS:
            value = fields[name]
            if value is not None:
                fields[name] = from_ns(value)
        fields["metadata"] = MappingProxyType(fields["metadata"])
        status = object.__new__(cls)
        status.__dict__.update(fields)
        return status


class JobRecord(NamedTuple):
    """`JobStatus`'s fields in the registry's own units: times are epoch nanoseconds (or
    None) and ``metadata`` a private dict copy. The health endpoint serializes these
    directly; `JobStatus` is built from one only when asked for."""

    job_name: str
    state: JobState
    critical: bool
    failure_threshold: int
    timeout_seconds: float | None
    stall_after_seconds: float
    last_run_time: int | None
    last_duration_seconds: float | None
    next_run_time: int | None
    success_count: int
    failure_count: int
    consecutive_failures: int
    last_error: str | None
    last_error_category: str | None
    average_duration_seconds: float | None
    min_duration_seconds: float | None
    max_duration_seconds: float | None
    last_success_time: int | None
    active_runs: int
    stalled_runs: int
    timeout_count: int
    metadata: dict[str, Any]
    created_at: int
    updated_at: int
    schedule: str | None
    timezone: str | None
    grace_seconds: float | None
    missed_count: int
    last_missed_run_time: int | None
    skipped_count: int
    last_skip_reason: str | None
    stall_after_auto: bool
    p50_duration_seconds: float | None
    p95_duration_seconds: float | None
    p99_duration_seconds: float | None
    success_rate: float | None
    history_runs: int
    history_dropped: int


_TIME_FIELDS = (
    "last_run_time",
    "next_run_time",
    "last_success_time",
    "created_at",
    "updated_at",
    "last_missed_run_time",
)
_TIME_INDEXES = tuple(JobRecord._fields.index(name) for name in _TIME_FIELDS)


_SETTINGS_JSON: dict[tuple[Any, ...], str] = {}
_STATUS_JSON = {state: f'"{state.value}"' for state in JobState}
_STATE_VALUES = tuple(state.value for state in JobState)


def member_json(job: JobRecord) -> bytes:
    """``"name":{...}``: the job's member of the health document's ``jobs`` object, equal
    to ``JobStatus.to_dict()`` as JSON. Written out field by field: building the dict and
    encoding it costs about three times as much."""
    # One unpacking instead of a lookup per field.
    (
        job_name,
        state,
        critical,
        failure_threshold,
        timeout,
        stall_after,
        last_run,
        last_duration,
        next_run,
        success_count,
        failure_count,
        consecutive_failures,
        last_error,
        last_error_category,
        average,
        minimum,
        maximum,
        last_success,
        active_runs,
        stalled_runs,
        timeout_count,
        metadata,
        created_at,
        updated_at,
        schedule,
        zone,
        grace,
        missed_count,
        last_missed,
        skipped_count,
        last_skip_reason,
        stall_after_auto,
        p50,
        p95,
        p99,
        success_rate,
        history_runs,
        history_dropped,
    ) = job
    return member_text(
        encode_json_str(job_name),
        state,
        critical,
        last_run,
        last_duration,
        next_run,
        success_count,
        failures_json(
            failure_count, consecutive_failures, failure_threshold, last_error, last_error_category
        ),
        average,
        maximum,
        minimum,
        last_success,
        active_runs,
        stalled_runs,
        rare_json(
            timeout_count,
            settings_json(timeout, stall_after, stall_after_auto, schedule, zone, grace),
            missed_count,
            last_missed,
            skipped_count,
            last_skip_reason,
        ),
        p50,
        p95,
        p99,
        success_rate,
        history_runs,
        tail_json(history_dropped, metadata, created_at),
        updated_at,
    )


# `member_json` in pieces, for `_job.member_of`, which builds a member from a job without a
# record and keeps the pieces that change rarely: the failures, the settings with the
# missed and skipped runs, and what comes after the run counts but for the last update.


def member_text(
    name: str,
    state: JobState,
    critical: bool,
    last_run: int | None,
    last_duration: float | None,
    next_run: int | None,
    success_count: int,
    failures: str,
    average: float | None,
    maximum: float | None,
    minimum: float | None,
    last_success: int | None,
    active_runs: int,
    stalled_runs: int,
    rare: str,
    p50: float | None,
    p95: float | None,
    p99: float | None,
    success_rate: float | None,
    history_runs: int,
    tail: str,
    updated_at: int,
) -> bytes:
    """A member from the JSON string of the job's name (`encode_json_str`), the fields that
    change with every run, and the texts of `failures_json`, `rare_json` and `tail_json`."""
    time = _json_time
    kept = _json_ms_kept
    # Percentiles often share a bucket, and a run's end is the job's last change: each is
    # written once (not a zero: 0.0 and -0.0 are equal but written apart).
    p50_text = kept(p50)
    p95_text = p50_text if p95 == p50 and p50 else kept(p95)
    p99_text = p95_text if p99 == p95 and p95 else kept(p99)
    success_text = time(last_success)
    updated_text = success_text if updated_at == last_success else time(updated_at)
    return (
        f"{name}:{{"
        f'"job_name":{name},"status":{_STATUS_JSON[state]},'
        f'"critical":{_BOOL[critical]},'
        f'"last_run_time":{time(last_run)},'
        f'"last_duration_ms":{_json_ms(last_duration)},'
        f'"next_run_time":{time(next_run)},'
        f'"success_count":{success_count},'
        f"{failures}"
        f'"average_execution_ms":{_json_ms(average)},'
        f'"max_execution_ms":{kept(maximum)},'
        f'"min_execution_ms":{kept(minimum)},'
        f'"last_success_time":{success_text},'
        f'"active_runs":{active_runs},"stalled_runs":{stalled_runs},'
        f"{rare}"
        f'"p50_duration_ms":{p50_text},'
        f'"p95_duration_ms":{p95_text},'
        f'"p99_duration_ms":{p99_text},'
        f'"success_rate":{_json_rate_kept(success_rate)},'
        f'"history_runs":{history_runs},'
        f"{tail}{updated_text}}}"
    ).encode()


def failures_json(
    failure_count: int,
    consecutive_failures: int,
    failure_threshold: int,
    last_error: str | None,
    last_error_category: str | None,
) -> str:
    """The failure fields of a member, from ``"failure_count"`` to ``"last_error_category"``."""
    return (
        f'"failure_count":{failure_count},'
        f'"consecutive_failures":{consecutive_failures},'
        f'"failure_threshold":{failure_threshold},'
        f'"last_error":{_json_str(last_error)},'
        f'"last_error_category":{_json_str(last_error_category)},'
    )


def settings_json(
    timeout: float | None,
    stall_after: float,
    stall_after_auto: bool,
    schedule: str | None,
    zone: str | None,
    grace: float | None,
) -> str:
    """The settings of a member, from ``"timeout_ms"`` to ``"grace_ms"``. They rarely
    change, and many jobs share them: their text is kept by their values (equal values are
    written alike, but for 0.0 and -0.0)."""
    key = (timeout, stall_after, stall_after_auto, schedule, zone, grace)
    settings = _SETTINGS_JSON.get(key)
    if settings is None:
        ms = _json_ms
        settings = (
            f'"timeout_ms":{ms(timeout)},'
            f'"stall_after_ms":{ms(stall_after)},'
            f'"stall_after_auto":{_BOOL[stall_after_auto]},'
            f'"schedule":{_json_str(schedule)},"timezone":{_json_str(zone)},'
            f'"grace_ms":{ms(grace)},'
        )
        if timeout != 0 and stall_after != 0 and grace != 0:
            if len(_SETTINGS_JSON) >= 4096:
                _SETTINGS_JSON.clear()
            _SETTINGS_JSON[key] = settings
    return settings


def rare_json(
    timeout_count: int,
    settings: str,
    missed_count: int,
    last_missed: int | None,
    skipped_count: int,
    last_skip_reason: str | None,
) -> str:
    """A member's fields from ``"timeout_count"`` to ``"last_skip_reason"``, with the text of
    `settings_json`."""
    return (
        f'"timeout_count":{timeout_count},'
        f"{settings}"
        f'"missed_count":{missed_count},'
        f'"last_missed_run_time":{_json_time(last_missed)},'
        f'"skipped_count":{skipped_count},'
        f'"last_skip_reason":{_json_str(last_skip_reason)},'
    )


def tail_json(history_dropped: int, metadata: Mapping[str, Any], created_at: int) -> str:
    """A member's fields from ``"history_dropped"`` to ``"updated_at":`` (its value left out)."""
    return (
        f'"history_dropped":{history_dropped},'
        f'"metadata":{_ENCODER.encode(metadata) if metadata else "{}"},'
        f'"created_at":{_json_time(created_at)},"updated_at":'
    )


@dataclass(frozen=True)
class JobsSummary:
    """Counts of jobs by state. ``pending + running + healthy + unhealthy + stalled + missed``
    equals ``total``: healthy means the last run succeeded, unhealthy that it failed."""

    total_jobs: int
    pending_jobs: int
    running_jobs: int
    healthy_jobs: int
    unhealthy_jobs: int
    stalled_jobs: int
    missed_jobs: int
    last_update_time: datetime

    @classmethod
    def of(cls, statuses: Mapping[str, JobStatus], now: datetime) -> JobsSummary:
        return cls.count([status.state.value for status in statuses.values()], now)

    @classmethod
    def count(cls, states: Collection[str], now: datetime) -> JobsSummary:
        """The summary of jobs in `states` (`JobState` values), one state per job."""
        counts = dict.fromkeys(_STATE_VALUES, 0)
        for state in states:
            counts[state] += 1
        return cls.of_counts(counts, len(states), now)

    @classmethod
    def of_counts(cls, counts: Mapping[str, int], total: int, now: datetime) -> JobsSummary:
        """The summary of `total` jobs, `counts` of them in each state (by `JobState`
        value, every state named)."""
        return cls(
            total_jobs=total,
            pending_jobs=counts["pending"],
            running_jobs=counts["running"],
            healthy_jobs=counts["success"],
            unhealthy_jobs=counts["failed"],
            stalled_jobs=counts["stalled"],
            missed_jobs=counts["missed"],
            last_update_time=now,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_jobs": self.total_jobs,
            "pending_jobs": self.pending_jobs,
            "running_jobs": self.running_jobs,
            "healthy_jobs": self.healthy_jobs,
            "unhealthy_jobs": self.unhealthy_jobs,
            "stalled_jobs": self.stalled_jobs,
            "missed_jobs": self.missed_jobs,
            "last_update_time": rfc3339(self.last_update_time),
        }
