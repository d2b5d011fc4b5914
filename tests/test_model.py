"""The health document's numbers written by hand: exactly what json.dumps writes for the
rounded values, which is what they were before they were written by hand."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobpulse import _model
from jobpulse._model import JobRecord, JobState


def _repr_ms(seconds: float | None) -> str:
    return "null" if seconds is None else repr(round(seconds * 1000.0, 3))


def _repr_rate(rate: float | None) -> str:
    return "null" if rate is None else repr(round(rate, 4))


# Every float there is (by bit pattern), and more where the fast path ends (1e12 ms).
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2e9, max_value=2e9),
    st.floats(min_value=0.99e9, max_value=1.01e9),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.integers(min_value=0, max_value=2**64 - 1).map(
        lambda bits: struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    ),
)


@settings(max_examples=5000)
@given(_FLOATS)
@example(0.0)
@example(-0.0)
@example(-1e-7)  # rounds to -0.0
@example(5e-7)  # 0.0005 ms
@example(2.5e-6)
@example(1e9)  # 1e12 ms: the first value past the fast path
@example(999_999_999.999_999_9)
@example(-999_999_999.999_999_9)
@example(1e300)
@example(5e-324)
@example(math.nan)
@example(math.inf)
@example(-math.inf)
def test_ms_are_written_as_repr_of_round(seconds: float) -> None:
    assert _model._json_ms(seconds) == _repr_ms(seconds)


@settings(max_examples=5000)
@given(_FLOATS)
@example(0.0)
@example(-0.0)
@example(1.0)
@example(2 / 3)
@example(0.00005)
@example(1e11)
@example(99_999_999_999.999_99)
@example(math.nan)
@example(-math.inf)
def test_rates_are_written_as_repr_of_round(rate: float) -> None:
    assert _model._json_rate(rate) == _repr_rate(rate)


def test_exact_ties_round_half_to_even() -> None:
    # odd / 16 is exactly halfway between two values of 3 places: both ways of writing it
    # must round it the same way (to even), not away from zero.
    ties = 0
    for odd in range(1, 20_000, 2):
        ms = odd / 16
        seconds = ms / 1000.0
        ties += seconds * 1000.0 == ms
        assert _model._json_ms(seconds) == _repr_ms(seconds)
        assert _model._json_rate(ms) == _repr_rate(ms)
    assert ties > 1000
    assert _model._json_ms(0.0625 / 1000.0) == "0.062"


def test_other_types_keep_their_repr() -> None:
    class Seconds(float):
        pass

    for value in (None, 0, 1, 7, True, -3, Seconds(1.5), 10**20):
        assert _model._json_ms(value) == _repr_ms(value)
        assert _model._json_rate(value) == _repr_rate(value)


# member_json as it was before it was made faster, with the helpers it used then.
def _old_time(ns: int | None) -> str:
    if ns is None:
        return "null"
    seconds, rest = divmod(ns, 1_000_000_000)
    prefix = _model.from_ns(seconds * 1_000_000_000).strftime("%Y-%m-%dT%H:%M:%S")
    return f'"{prefix}.{rest // 1_000_000:03d}Z"'


def _old_member_json(job: JobRecord) -> bytes:
    text = _model._json_str
    time = _old_time
    ms = _repr_ms
    name = _model.encode_json_str(job.job_name)
    rate = job.success_rate
    return (
        f"{name}:{{"
        f'"job_name":{name},"status":"{job.state.value}",'
        f'"critical":{_model._BOOL[job.critical]},'
        f'"last_run_time":{time(job.last_run_time)},'
        f'"last_duration_ms":{ms(job.last_duration_seconds)},'
        f'"next_run_time":{time(job.next_run_time)},'
        f'"success_count":{job.success_count},"failure_count":{job.failure_count},'
        f'"consecutive_failures":{job.consecutive_failures},'
        f'"failure_threshold":{job.failure_threshold},'
        f'"last_error":{text(job.last_error)},'
        f'"last_error_category":{text(job.last_error_category)},'
        f'"average_execution_ms":{ms(job.average_duration_seconds)},'
        f'"max_execution_ms":{ms(job.max_duration_seconds)},'
        f'"min_execution_ms":{ms(job.min_duration_seconds)},'
        f'"last_success_time":{time(job.last_success_time)},'
        f'"active_runs":{job.active_runs},"stalled_runs":{job.stalled_runs},'
        f'"timeout_count":{job.timeout_count},'
        f'"timeout_ms":{ms(job.timeout_seconds)},'
        f'"stall_after_ms":{ms(job.stall_after_seconds)},'
        f'"stall_after_auto":{_model._BOOL[job.stall_after_auto]},'
        f'"schedule":{text(job.schedule)},"timezone":{text(job.timezone)},'
        f'"grace_ms":{ms(job.grace_seconds)},'
        f'"missed_count":{job.missed_count},'
        f'"last_missed_run_time":{time(job.last_missed_run_time)},'
        f'"skipped_count":{job.skipped_count},'
        f'"last_skip_reason":{text(job.last_skip_reason)},'
        f'"p50_duration_ms":{ms(job.p50_duration_seconds)},'
        f'"p95_duration_ms":{ms(job.p95_duration_seconds)},'
        f'"p99_duration_ms":{ms(job.p99_duration_seconds)},'
        f'"success_rate":{"null" if rate is None else repr(round(rate, 4))},'
        f'"history_runs":{job.history_runs},"history_dropped":{job.history_dropped},'
        f'"metadata":{_model._ENCODER.encode(job.metadata) if job.metadata else "{}"},'
        f'"created_at":{time(job.created_at)},'
        f'"updated_at":{time(job.updated_at)}}}'
    ).encode()


# Few distinct values, so that fields often equal each other, and earlier examples' fields:
# what member_json writes once and reuses must be written as the old code writes it.
_SECONDS = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-7, 5e-7, 0.0625e-3, 1.5, 300.0, 3600.0, 1e9, math.nan]),
    _FLOATS,
)
_TIMES = st.one_of(
    st.sampled_from([0, -1, 999_999, 1_767_225_600_000_000_000, 1_767_225_600_999_999_999]),
    st.integers(min_value=-(10**18), max_value=2 * 10**18),
)
_TEXTS = st.one_of(st.sampled_from(["", "x", 'quote"back\\slash', "ünï ✓ 🚀"]), st.text())
_COUNTS = st.integers(min_value=0, max_value=2**64)
_RECORDS = st.builds(
    JobRecord,
    job_name=_TEXTS,
    state=st.sampled_from(JobState),
    critical=st.booleans(),
    failure_threshold=_COUNTS,
    timeout_seconds=st.none() | _SECONDS,
    stall_after_seconds=_SECONDS,
    last_run_time=st.none() | _TIMES,
    last_duration_seconds=st.none() | _SECONDS,
    next_run_time=st.none() | _TIMES,
    success_count=_COUNTS,
    failure_count=_COUNTS,
    consecutive_failures=_COUNTS,
    last_error=st.none() | _TEXTS,
    last_error_category=st.none() | _TEXTS,
    average_duration_seconds=st.none() | _SECONDS,
    min_duration_seconds=st.none() | _SECONDS,
    max_duration_seconds=st.none() | _SECONDS,
    last_success_time=st.none() | _TIMES,
    active_runs=_COUNTS,
    stalled_runs=_COUNTS,
    timeout_count=_COUNTS,
    metadata=st.dictionaries(_TEXTS, st.none() | st.integers() | _TEXTS | st.floats(), max_size=3),
    created_at=_TIMES,
    updated_at=_TIMES,
    schedule=st.none() | _TEXTS,
    timezone=st.none() | _TEXTS,
    grace_seconds=st.none() | _SECONDS,
    missed_count=_COUNTS,
    last_missed_run_time=st.none() | _TIMES,
    skipped_count=_COUNTS,
    last_skip_reason=st.none() | _TEXTS,
    stall_after_auto=st.booleans(),
    p50_duration_seconds=st.none() | _SECONDS,
    p95_duration_seconds=st.none() | _SECONDS,
    p99_duration_seconds=st.none() | _SECONDS,
    success_rate=st.none() | _SECONDS,
    history_runs=_COUNTS,
    history_dropped=_COUNTS,
)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_RECORDS)
def test_member_json_is_byte_for_byte_what_it_was(record: JobRecord) -> None:
    assert _model.member_json(record) == _old_member_json(record)


def _record(**changes: Any) -> JobRecord:
    fields: dict[str, Any] = dict.fromkeys(JobRecord._fields)
    fields.update(
        job_name="j",
        state=JobState.SUCCESS,
        critical=False,
        failure_threshold=3,
        stall_after_seconds=300.0,
        success_count=0,
        failure_count=0,
        consecutive_failures=0,
        active_runs=0,
        stalled_runs=0,
        timeout_count=0,
        metadata={},
        created_at=0,
        updated_at=0,
        missed_count=0,
        skipped_count=0,
        stall_after_auto=False,
        history_runs=0,
        history_dropped=0,
    )
    fields.update(changes)
    return JobRecord(**fields)


def test_equal_values_of_other_signs_are_written_apart() -> None:
    for zero in (0.0, -0.0, 0.0):
        for name in ("timeout_seconds", "grace_seconds", "p95_duration_seconds"):
            record = _record(p50_duration_seconds=-zero, **{name: zero})
            assert _model.member_json(record) == _old_member_json(record)
