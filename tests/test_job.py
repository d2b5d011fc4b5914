"""A job's state and its health rows, as a second view (the store's fleet view) uses them:
its own `Job` objects by name, fields changed and the version bumped, rows built by one call."""

from __future__ import annotations

import gc
import json
import math
from array import array
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from jobpulse import JobMonitor, JobState
from jobpulse._history import RunHistory
from jobpulse._job import RunBuffer, _clamp, collect_rows, finish_rows, member_of, run_fields
from jobpulse._model import member_json
from jobpulse._schedule import parse_schedule
from jobpulse._shared import HealthRow, Job
from tests.conftest import InternalErrors

T0 = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00 UTC


def health_rows(jobs: list[Job], now_ns: int) -> list[HealthRow]:
    """Both steps of a view's build in one call, as the fleet view makes them."""
    return finish_rows(collect_rows(jobs, now_ns))


def _view(*names: str) -> dict[str, Job]:
    return {name: Job(name, T0, 60.0) for name in names}


def _member(row_member: bytes) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads(b"{" + row_member + b"}"))


def test_rows_follow_the_jobs_order_and_are_cached_per_version() -> None:
    view = _view("b", "a")
    first = health_rows([view[name] for name in sorted(view)], T0)
    assert [list(_member(row[4])) for row in first] == [["a"], ["b"]]
    assert [row[0] for row in first] == ["pending", "pending"]
    again = health_rows([view["a"], view["b"]], T0)
    assert again[0] is first[0]
    assert again[1] is first[1]

    job = view["b"]
    job.failure_count = job.consecutive_failures = 2
    job.last_outcome = JobState.FAILED
    job.critical = True
    job.version += 1
    changed = health_rows([view["a"], view["b"]], T0)
    assert changed[0] is first[0]  # unchanged job: its cached row
    assert changed[1] is not first[1]
    assert changed[1][:4] == ("failed", True, 2, 3)
    document = _member(changed[1][4])
    assert document["b"]["status"] == "failed"
    assert document["b"]["failure_count"] == 2


def test_a_job_whose_row_cannot_be_built_gets_the_unavailable_row(
    monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    view = _view("good", "bad")

    def broken_member_of(job: Job, now_ns: int) -> bytes:
        if job.name == "bad":
            raise RuntimeError("a bug building the member")
        return member_of(job, now_ns)

    monkeypatch.setattr("jobpulse._job.member_of", broken_member_of)
    bad, good = health_rows([view["bad"], view["good"]], T0)
    assert bad[:4] == ("pending", False, 0, 3)
    assert _member(bad[4]) == {
        "bad": {
            "job_name": "bad",
            "status": "pending",
            "critical": False,
            "consecutive_failures": 0,
            "failure_threshold": 3,
            "error": "this job's status could not be shown",
        }
    }
    assert _member(good[4])["good"]["status"] == "pending"
    assert [where for where, _ in internal_errors.take()] == ["health document row"]


def test_rows_are_not_left_to_the_garbage_collector() -> None:
    # Plain values in plain tuples: the collector stops tracking a row, and the (version,
    # row) pair cached on its job, the first time it sees them (1,000 changed jobs a poll
    # made full collections three times as frequent while they were tracked).
    view = _view("a", "b")
    rows = health_rows([view["a"], view["b"]], T0)
    gc.collect()
    assert not any(gc.is_tracked(row) for row in rows)
    assert not any(gc.is_tracked(view[name].member) for name in ("a", "b"))


def test_rows_built_in_two_steps_are_not_left_to_the_garbage_collector() -> None:
    # The registry's rows: its jobs are old, the list of rows is young and held only by
    # young objects (the view's cache, the document's jobs part). A young collection then
    # finds each row through its list after the job's cached row: what is cached must be
    # untracked whatever order the collector visits things in (cached (version, row)
    # pairs were promoted to the oldest generation: a full collection every ~150 polls).
    view = _view("a", "b")
    jobs = [view["a"], view["b"]]
    gc.collect()
    gc.disable()
    try:
        held = [finish_rows(collect_rows(jobs, T0))]
        gc.collect(0)
        assert not any(gc.is_tracked(job.member) for job in jobs)
        assert not any(gc.is_tracked(row) for row in held[0])
    finally:
        gc.enable()


def test_a_record_keeps_the_metadata_it_was_made_with() -> None:
    job = Job("meta", T0, 60.0)
    empty = job.to_record(T0)
    job.metadata["rows"] = 1
    one = job.to_record(T0)
    job.metadata["rows"] = 2
    assert (empty.metadata, one.metadata) == ({}, {"rows": 1})
    assert job.to_record(T0).metadata == {"rows": 2}


def test_the_record_takes_each_field_from_its_own_attribute() -> None:
    job = Job("every", T0, 60.0)
    job.critical = True
    job.failure_threshold = 4
    job.timeout = 5.5
    job.stall_after = 66.0
    job.auto_stall = True
    job.last_run_ns = T0 + 1
    job.last_duration_ns = 2_000_000_000
    job.next_run_ns = T0 + 3
    job.success_count, job.failure_count, job.consecutive_failures = 5, 3, 1
    job.last_error, job.last_error_category = "boom", "network"
    job.total_duration_ns = 16_000_000_000
    job.min_ns, job.max_ns = 1_000_000_000, 4_000_000_000
    job.last_success_ns = T0 + 4
    job.runs = {1: (0.0, None, T0), 2: (0.0, None, T0), 3: (0.0, None, T0)}
    job.stalled_ids = {1, 2}
    job.timeout_count = 7
    job.metadata = {"rows": 8}
    job.updated_ns = T0 + 9
    job.schedule = parse_schedule("0 3 * * *", "Europe/Berlin")
    job.slot_grace_ns = 10_000_000_000
    job.missed_count, job.last_missed_ns = 11, T0 + 12
    job.skipped_count, job.last_skip_reason = 13, "max_instances"
    job.store_dropped = 14
    job.history = RunHistory(capacity=2)
    for duration_ns in (100_000, 3_000_000_000, 60 * 1_000_000_000):  # the first is evicted
        job.history.add(T0, duration_ns, 0, T0)
    record = job.to_record(T0 + 15)
    assert record._asdict() == {
        "job_name": "every",
        "state": JobState.STALLED,
        "critical": True,
        "failure_threshold": 4,
        "timeout_seconds": 5.5,
        "stall_after_seconds": 66.0,
        "last_run_time": T0 + 1,
        "last_duration_seconds": 2.0,
        "next_run_time": T0 + 3,
        "success_count": 5,
        "failure_count": 3,
        "consecutive_failures": 1,
        "last_error": "boom",
        "last_error_category": "network",
        "average_duration_seconds": 2.0,
        "min_duration_seconds": 1.0,
        "max_duration_seconds": 4.0,
        "last_success_time": T0 + 4,
        "active_runs": 3,
        "stalled_runs": 2,
        "timeout_count": 7,
        "metadata": {"rows": 8},
        "created_at": T0,
        "updated_at": T0 + 9,
        "schedule": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "grace_seconds": 10.0,
        "missed_count": 11,
        "last_missed_run_time": T0 + 12,
        "skipped_count": 13,
        "last_skip_reason": "max_instances",
        "stall_after_auto": True,
        # Both held runs' buckets, clamped to the extremes seen: 3 s, then 60 s down to 4 s.
        "p50_duration_seconds": pytest.approx(3.0, rel=0.045),
        "p95_duration_seconds": 4.0,
        "p99_duration_seconds": 4.0,
        "success_rate": 1.0,
        "history_runs": 2,
        "history_dropped": 15,
    }
    assert record.metadata is not job.metadata


def test_clamp_returns_what_min_of_max_returns() -> None:
    # The very object: 0.0 and -0.0 are written apart.
    values = [-1.0, -0.0, 0.0, 0.5, float("0.5"), 2.0, math.nan, math.inf]
    for seconds in values:
        for low in values:
            for high in values:
                assert _clamp(seconds, low, high) is min(max(seconds, low), high)
    assert _clamp(None, 0.0, 1.0) is None


# What a job's fields may hold, each changed independently between two members: what
# `member_of` keeps on the job must follow every field it was written from.
_NS = st.integers(min_value=0, max_value=2 * 10**18)
_SMALL = st.integers(min_value=0, max_value=3)
_WORDS = st.sampled_from([None, "boom", "network", 'quote"d', "ünï ✓"])
_SCHEDULES = st.sampled_from([None, ("@every 1h", None), ("0 3 * * *", "Europe/Berlin")])
_JOB_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "critical": st.booleans(),
        "failure_threshold": st.integers(min_value=1, max_value=5),
        "timeout": st.none() | st.sampled_from([0.5, 5.5, 3600.0]),
        "stall_after": st.sampled_from([1.0, 66.0, 300.0]),
        "auto_stall": st.booleans(),
        "last_run_ns": st.none() | _NS,
        "last_duration_ns": st.none() | _NS,
        "next_run_ns": st.none() | _NS,
        "success_count": _SMALL,
        "failure_count": _SMALL,
        "consecutive_failures": _SMALL,
        "last_error": _WORDS,
        "last_error_category": _WORDS,
        "total_duration_ns": _NS,
        "min_ns": st.none() | _NS,
        "max_ns": st.none() | _NS,
        "last_success_ns": st.none() | _NS,
        "timeout_count": _SMALL,
        "metadata": st.sampled_from([{}, {"rows": 1}, {"rows": 2, "ünï": None}]),
        "created_ns": _NS,
        "updated_ns": _NS,
        "schedule": _SCHEDULES,
        "slot_grace_ns": st.sampled_from([0, 1, 10_000_000_000]),
        "missed_count": _SMALL,
        "last_missed_ns": st.none() | _NS,
        "skipped_count": _SMALL,
        "last_skip_reason": _WORDS,
        "store_dropped": _SMALL,
        "runs": _SMALL,
        "stalled": _SMALL,
        "history": st.none() | st.lists(st.integers(0, 10**11), max_size=5),
    },
)


def _apply(job: Job, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if name == "schedule":
            job.schedule = None if value is None else parse_schedule(*value)
        elif name == "runs":
            job.runs = dict.fromkeys(range(value), (0.0, None, T0))
        elif name == "stalled":
            job.stalled_ids = set(range(value))
        elif name == "history":
            job.history = None if value is None else RunHistory(capacity=3)
            for index, duration_ns in enumerate(value or ()):
                job.history.add(T0, duration_ns, index % 2, T0)  # type: ignore[union-attr]
        elif name == "metadata":
            job.metadata = dict(value)
        else:
            setattr(job, name, value)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_JOB_FIELDS, min_size=1, max_size=4))
def test_a_member_built_from_the_job_is_the_member_of_its_record(
    changes: list[dict[str, Any]],
) -> None:
    job = Job("every", T0, 60.0)
    for fields in changes:
        _apply(job, fields)
        assert member_of(job, T0 + 15) == member_json(job.to_record(T0 + 15))


def test_run_fields_put_each_failure_back_in_its_place() -> None:
    buffer = RunBuffer(array("q", [1, 2, 3, 4, 5, 9, 7, 8, 15]), {1: ("network", "boom", True)})
    assert run_fields(buffer) == [
        (1, 2, 3, None, None, False),
        (4, 5, 9, "network", "boom", True),
        (7, 8, 15, None, None, False),
    ]
    assert run_fields(RunBuffer(array("q"), None)) == []


@pytest.fixture
def publishing() -> Iterator[JobMonitor]:
    """A monitor whose registry keeps changes for a store's publisher, with a job "job"."""
    monitor = JobMonitor(
        TracerProvider(shutdown_on_exit=False), MeterProvider(shutdown_on_exit=False)
    )
    monitor._registry.enable_changes(10)
    monitor.register("job")
    yield monitor
    monitor.shutdown()


def test_a_store_gets_each_finished_run_with_what_a_failed_one_has(
    publishing: JobMonitor,
) -> None:
    monitor, registry = publishing, publishing._registry
    with monitor.run("job"):
        pass
    with pytest.raises(ValueError, match="boom"), monitor.run("job"):
        raise ValueError("boom")
    with monitor.run("job"):
        pass
    (change,) = registry.collect_changes()
    runs = run_fields(change.runs)
    assert [run[3] is None for run in runs] == [True, False, True]
    assert runs[1][3] == "unknown"
    assert runs[1][4] is not None
    assert "boom" in runs[1][4]
    assert all(start + duration == end for start, duration, end, *_ in runs)
    assert runs == sorted(runs, key=lambda run: run[2])
    # Handed over: the next collection starts from nothing.
    (again,) = registry.collect_changes(full=True)
    assert run_fields(again.runs) == []


def test_a_run_past_what_a_store_holds_is_left_out_and_the_others_kept(
    publishing: JobMonitor,
) -> None:
    registry = publishing._registry
    late = (1 << 63) - 500  # ends in 2262, past a signed 64-bit count of nanoseconds
    ends = [
        (100, 200, None),
        (late, late + 1000, "network"),
        (300, 400, "network"),
        (500, 600, None),
    ]
    for run_id, (start_ns, end_ns, category) in enumerate(ends):
        registry.start_run("job", run_id, None, start_ns)
        registry.end_run("job", run_id, start_ns, end_ns, category and "boom", category)
    (change,) = registry.collect_changes()
    assert change.dropped_runs == 1
    assert run_fields(change.runs) == [
        (100, 100, 200, None, None, False),
        (300, 100, 400, "network", "boom", False),
        (500, 100, 600, None, None, False),
    ]
