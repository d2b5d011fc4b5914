"""Health rules (decision 8) and the JSON document (decision 9)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from jobpulse import HealthReport, HealthStatus, JobMonitor, JobsSummary, JobState, JobStatus
from jobpulse._health import HealthDocument, _judge, evaluate
from jobpulse._job import HealthRow
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory

SPEC_JOB_FIELDS = {
    "job_name", "status", "last_run_time", "last_duration_ms", "next_run_time", "success_count",
    "failure_count", "consecutive_failures", "last_error", "average_execution_ms",
    "max_execution_ms", "min_execution_ms", "metadata", "created_at", "updated_at",
}  # fmt: skip
SPEC_SUMMARY_FIELDS = {
    "total_jobs", "running_jobs", "healthy_jobs", "unhealthy_jobs", "stalled_jobs",
    "last_update_time",
}  # fmt: skip

_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
_BASE = JobStatus(
    job_name="j",
    state=JobState.SUCCESS,
    critical=False,
    failure_threshold=3,
    timeout_seconds=None,
    stall_after_seconds=300.0,
    last_run_time=_EPOCH,
    last_duration_seconds=1.0,
    next_run_time=None,
    success_count=1,
    failure_count=0,
    consecutive_failures=0,
    last_error=None,
    last_error_category=None,
    average_duration_seconds=1.0,
    min_duration_seconds=1.0,
    max_duration_seconds=1.0,
    last_success_time=_EPOCH,
    active_runs=0,
    stalled_runs=0,
    timeout_count=0,
    metadata={},
    created_at=_EPOCH,
    updated_at=_EPOCH,
)


def _job(**changes: object) -> JobStatus:
    return replace(_BASE, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], HealthStatus.HEALTHY),
        ([_job(state=JobState.PENDING)], HealthStatus.HEALTHY),
        ([_job(), _job(state=JobState.RUNNING)], HealthStatus.HEALTHY),
        ([_job(state=JobState.STALLED)], HealthStatus.UNHEALTHY),
        ([_job(state=JobState.FAILED, consecutive_failures=1)], HealthStatus.DEGRADED),
        ([_job(state=JobState.FAILED, consecutive_failures=9)], HealthStatus.DEGRADED),
        (
            [_job(state=JobState.FAILED, consecutive_failures=2, critical=True)],
            HealthStatus.DEGRADED,
        ),
        (
            [_job(state=JobState.FAILED, consecutive_failures=3, critical=True)],
            HealthStatus.UNHEALTHY,
        ),
        (
            [
                _job(
                    state=JobState.FAILED,
                    consecutive_failures=1,
                    critical=True,
                    failure_threshold=1,
                )
            ],
            HealthStatus.UNHEALTHY,
        ),
        # a critical job retrying after its threshold stays unhealthy until a success
        (
            [_job(state=JobState.RUNNING, consecutive_failures=3, critical=True)],
            HealthStatus.UNHEALTHY,
        ),
        ([_job(state=JobState.MISSED)], HealthStatus.DEGRADED),
        ([_job(state=JobState.MISSED, critical=True)], HealthStatus.UNHEALTHY),
        (
            [_job(state=JobState.FAILED, consecutive_failures=1), _job(state=JobState.STALLED)],
            HealthStatus.UNHEALTHY,
        ),
    ],
)
def test_health_rules(jobs: list[JobStatus], expected: HealthStatus) -> None:
    statuses = {f"job{i}": job for i, job in enumerate(jobs)}
    assert evaluate(statuses) is expected


def test_http_codes() -> None:
    assert HealthStatus.HEALTHY.http_status == 200
    assert HealthStatus.DEGRADED.http_status == 206
    assert HealthStatus.UNHEALTHY.http_status == 503
    assert str(HealthStatus.DEGRADED) == "degraded"
    assert str(JobState.STALLED) == "stalled"


def test_health_document(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("btc_transaction_indexing", critical=True)
    monitor.register("never_ran")

    @monitor.job("swap_request_processing")
    def swap(fail: bool) -> None:
        clock.advance(1.2345)
        if fail:
            raise ConnectionError("rpc http://admin:letmein@node:8332 refused")

    swap(False)
    with pytest.raises(ConnectionError):
        swap(True)

    report = monitor.health()
    assert report.status is HealthStatus.DEGRADED
    assert report.http_status == 206
    document = report.to_dict()
    text = json.dumps(document, allow_nan=False)
    assert set(document) == {"status", "timestamp", "scope", "jobs", "summary", "duration_ms"}
    assert document["scope"] == "process"
    assert document["status"] == "degraded"
    assert document["timestamp"] == "2026-01-01T00:00:02.469Z"
    assert isinstance(document["duration_ms"], float)

    swap_doc = document["jobs"]["swap_request_processing"]
    assert set(swap_doc) >= SPEC_JOB_FIELDS
    assert swap_doc["status"] == "failed"
    assert swap_doc["last_duration_ms"] == 1234.5  # real milliseconds, not nanoseconds
    assert swap_doc["min_execution_ms"] == 1234.5
    assert swap_doc["last_run_time"] == "2026-01-01T00:00:01.234Z"
    assert swap_doc["last_error"] == "ConnectionError: rpc http://admin:***@node:8332 refused"
    assert swap_doc["consecutive_failures"] == 1
    never = document["jobs"]["never_ran"]
    assert never["status"] == "pending"
    assert never["min_execution_ms"] is None  # not MaxInt64
    assert never["max_execution_ms"] is None
    assert never["last_run_time"] is None
    assert document["jobs"]["btc_transaction_indexing"]["critical"] is True

    summary = document["summary"]
    assert set(summary) >= SPEC_SUMMARY_FIELDS
    assert summary["total_jobs"] == 3
    assert (
        summary["pending_jobs"] + summary["running_jobs"] + summary["healthy_jobs"]
        + summary["unhealthy_jobs"] + summary["stalled_jobs"] + summary["missed_jobs"]
    ) == summary["total_jobs"]  # fmt: skip
    # no secrets and no stack traces in the unauthenticated document
    assert "letmein" not in text
    assert "Traceback" not in text
    assert 'File "' not in text


def test_critical_job_over_threshold_makes_the_service_unhealthy(monitor: JobMonitor) -> None:
    @monitor.job("btc_transaction_indexing", critical=True)
    def index() -> None:
        raise RuntimeError("down")

    for expected in (HealthStatus.DEGRADED, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY):
        with pytest.raises(RuntimeError):
            index()
        assert monitor.health().status is expected
    assert monitor.health().http_status == 503


def _random_status(rng: random.Random, index: int) -> JobStatus:
    def maybe(value: object) -> Any:
        return None if rng.random() < 0.3 else value

    def seconds() -> float:
        return rng.choice((0.0, 1e-7, 0.0004, 1.5, 1234.56789, 86400.0, rng.random() * 10))

    def moment() -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(
            microseconds=rng.randrange(10**14)
        )

    names = ["plain", 'quote"back\\slash', "tab\tnewline\n", "ünïcödé ✓", "emoji 🚀", "<b>&"]
    return JobStatus(
        job_name=f"{rng.choice(names)}-{index}",
        state=rng.choice(list(JobState)),
        critical=rng.random() < 0.5,
        failure_threshold=rng.randrange(1, 10),
        timeout_seconds=maybe(seconds()),
        stall_after_seconds=seconds(),
        last_run_time=maybe(moment()),
        last_duration_seconds=maybe(seconds()),
        next_run_time=maybe(moment()),
        success_count=rng.randrange(10**9),
        failure_count=rng.randrange(1000),
        consecutive_failures=rng.randrange(5),
        last_error=maybe(rng.choice(names) + " error"),
        last_error_category=maybe(rng.choice(("timeout", "network", "unknown"))),
        average_duration_seconds=maybe(seconds()),
        min_duration_seconds=maybe(seconds()),
        max_duration_seconds=maybe(seconds()),
        last_success_time=maybe(moment()),
        active_runs=rng.randrange(3),
        stalled_runs=rng.randrange(2),
        timeout_count=rng.randrange(3),
        metadata=rng.choice(({}, {"rows": 12, "ratio": 0.5, "name": rng.choice(names)})),
        created_at=moment(),
        updated_at=moment(),
        schedule=maybe(rng.choice(("@every 2m", "*/5 * * * *", "CRON_TZ=Europe/Berlin 0 3 * * *"))),
        timezone=maybe("Europe/Berlin"),
        grace_seconds=maybe(seconds()),
        missed_count=rng.randrange(4),
        last_missed_run_time=maybe(moment()),
        skipped_count=rng.randrange(4),
        last_skip_reason=maybe(rng.choice(("max_instances", "revoked"))),
        stall_after_auto=rng.random() < 0.5,
        p50_duration_seconds=maybe(seconds()),
        p95_duration_seconds=maybe(seconds()),
        p99_duration_seconds=maybe(seconds()),
        success_rate=maybe(rng.choice((0.0, 1.0, 2 / 3, rng.random()))),
        history_runs=rng.randrange(4097),
        history_dropped=rng.randrange(10),
    )


def test_the_cached_json_member_equals_to_dict() -> None:
    # The health document is assembled from members written out field by field; they must
    # say exactly what to_dict says, whatever the values.
    rng = random.Random(3)
    for index in range(500):
        status = _random_status(rng, index)
        member = status.json_member
        assert json.loads(b"{" + member + b"}") == {status.job_name: status.to_dict()}
        assert status.json_member is member  # built once per snapshot


def test_the_health_json_equals_to_dict(monitor: JobMonitor, clock: FakeClock) -> None:
    empty = monitor.health()
    assert json.loads(empty.to_json()) == empty.to_dict()
    rng = random.Random(5)
    jobs = {status.job_name: status for status in (_random_status(rng, i) for i in range(50))}
    report = HealthReport(
        status=evaluate(jobs),
        timestamp=clock.now(),
        jobs=jobs,
        summary=JobsSummary.of(jobs, clock.now()),
        duration_ms=0.25,
    )
    body = report.to_json()
    assert json.loads(body) == report.to_dict()
    assert body.startswith(b'{"status":"')
    assert b'", "' not in body.split(b'"jobs"')[0]


def test_registry_snapshots_set_every_field(monitor: JobMonitor) -> None:
    # The registry builds snapshots without the dataclass __init__: it must still set
    # exactly the declared fields, and compare equal to a normally built JobStatus.
    with monitor.run("job") as run:
        run.set_metadata(rows=1)
    status = monitor.status("job")
    assert status is not None
    declared = {field.name for field in dataclasses.fields(JobStatus)}
    assert set(vars(status)) == declared
    rebuilt = JobStatus(**{name: getattr(status, name) for name in declared})
    assert rebuilt == status
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.success_count = 5  # type: ignore[misc]


def test_times_are_written_in_utc_whatever_their_zone() -> None:
    berlin = timezone(timedelta(hours=1))
    moment = datetime(2026, 3, 1, 13, 30, 15, 123456, tzinfo=berlin)
    status = _job(last_run_time=moment)
    assert status.to_dict()["last_run_time"] == "2026-03-01T12:30:15.123Z"
    assert b'"last_run_time":"2026-03-01T12:30:15.123Z"' in status.json_member


def test_the_seconds_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobpulse import _model

    monkeypatch.setattr(_model, "_SECONDS_CACHE", {})
    start = _model.to_ns(_EPOCH)
    for second in range(8200):
        _model._json_time(start + second * 1_000_000_000 + 999_999_999)
    assert len(_model._SECONDS_CACHE) <= 8192
    assert _model._json_time(start + 1_999_999) == '"2026-01-01T00:00:00.001Z"'
    assert _model._json_time(start - 1) == '"2025-12-31T23:59:59.999Z"'


def test_the_kept_milliseconds_are_those_written_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobpulse import _model

    monkeypatch.setattr(_model, "_MS_TEXTS", {})
    rng = random.Random(29)
    values: list[float | None] = [None, 0.0, -0.0, 1e-9, 2.5, 1e10, 5e12]
    values += [rng.uniform(0, 3600) for _ in range(4100)]
    for seconds in values + values[:50]:  # the first ones again, from the cache
        assert _model._json_ms_kept(seconds) == _model._json_ms(seconds)
        assert len(_model._MS_TEXTS) <= 4096
    assert _model._json_ms_kept(-0.0) == "-0.0"
    assert _model._json_ms_kept(0.0) == "0.0"


def test_the_kept_success_rates_are_those_written_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobpulse import _model

    monkeypatch.setattr(_model, "_RATE_TEXTS", {})
    rng = random.Random(31)
    values: list[float | None] = [None, 0, 0.0, -0.0, 1, 1.0, 0.5, 2 / 3, 1e12]
    values += [rng.random() for _ in range(4100)]
    for rate in values + values[:50]:  # the first ones again, from the cache
        assert _model._json_rate_kept(rate) == _model._json_rate(rate)
        assert len(_model._RATE_TEXTS) <= 4096
    assert _model._json_rate_kept(-0.0) == "-0.0"
    assert _model._json_rate_kept(1) == "1"


def test_the_endpoint_document_follows_every_change(monitor: JobMonitor, clock: FakeClock) -> None:
    # health_json() re-serializes only the jobs whose version moved; after any sequence of
    # changes it must say what health().to_dict() says.
    rng = random.Random(17)
    names = [f"job_{index}" for index in range(8)]
    monitor.register(names[0], critical=True, failure_threshold=2)
    monitor.register(names[1], schedule="@every 1m")
    monitor.register(names[2], stall_after=30)
    open_runs: list[Any] = []
    for step in range(400):
        action = rng.random()
        name = rng.choice(names)
        if action < 0.4:
            try:
                with monitor.run(name) as run:
                    run.set_metadata(step=step)
                    clock.advance(rng.choice((0.001, 0.5, 3)))
                    if rng.random() < 0.3:
                        raise ConnectionError("https://user:pw@example.com down")
            except ConnectionError:
                pass
        elif action < 0.5 and len(open_runs) < 2:
            run = monitor.run(names[2])
            run.__enter__()
            open_runs.append(run)
        elif action < 0.6 and open_runs:
            open_runs.pop().__exit__(None, None, None)
        elif action < 0.7:
            clock.advance(rng.choice((1, 31, 61, 3600, 6 * 3600, 25 * 3600)))
        elif action < 0.75:
            monitor.unregister(name)
        elif action < 0.8:
            monitor.register(name, critical=rng.random() < 0.5)
        elif action < 0.9:
            monitor.history(name)  # reading the history prunes it too
        else:
            monitor.set_pending("kind", step)
        if rng.random() < 0.5:  # either reader may be the first to see a change of time
            expected = monitor.health().to_dict()
            status, body = monitor.health_json()
        else:
            status, body = monitor.health_json()
            expected = monitor.health().to_dict()
        document = json.loads(body)
        assert document["jobs"] == expected["jobs"], step
        assert document["summary"] == expected["summary"], step
        assert document["status"] == expected["status"] == status.value, step
        assert document["timestamp"] == expected["timestamp"]
    while open_runs:  # last in, first out: each run restores the context it found
        open_runs.pop().__exit__(None, None, None)


@pytest.mark.parametrize("first_reader", ["health", "history", "health_json"])
def test_runs_leaving_the_window_reach_the_endpoint_whoever_reads_first(
    make_monitor: MonitorFactory, clock: FakeClock, first_reader: str
) -> None:
    monitor = make_monitor(retention=timedelta(days=30))
    with monitor.run("job"):
        clock.advance(1)
    assert json.loads(monitor.health_json()[1])["jobs"]["job"]["history_runs"] == 1
    clock.advance(25 * 3600)  # the run leaves the 24 h window
    readers: dict[str, Callable[[], object]] = {
        "health": monitor.health,
        "history": lambda: monitor.history("job"),
        "health_json": monitor.health_json,
    }
    readers[first_reader]()
    assert json.loads(monitor.health_json()[1])["jobs"]["job"]["history_runs"] == 0
    assert monitor.health().to_dict()["jobs"]["job"]["history_runs"] == 0


def test_a_steady_poll_reuses_the_jobs_part(monitor: JobMonitor, clock: FakeClock) -> None:
    for name in ("a", "b", "c"):
        with monitor.run(name):
            pass
    _, first = monitor._health_parts()
    clock.advance(1)
    _, second = monitor._health_parts()
    assert second[1] is first[1]  # nothing changed: the jobs part is not rebuilt
    assert second[0] != first[0]  # the timestamp moved
    with monitor.run("b"):
        pass
    _, third = monitor._health_parts()
    assert third[1] is not first[1]
    monitor.unregister("c")
    monitor.register("d")  # as many jobs as before, but not the same ones
    _, fourth = monitor._health_parts()
    assert b'"d":{' in fourth[1]
    assert b'"c":{' not in fourth[1]
    document = json.loads(b"".join(fourth))
    expected = monitor.health().to_dict()
    assert document["jobs"] == expected["jobs"]
    assert document["summary"] == expected["summary"]


def test_changed_settings_are_shown_at_once(monitor: JobMonitor) -> None:
    # The settings' text is reused while they are the same: a job registered again with other
    # settings shows the new ones, and the job that still has the old ones keeps them.
    def jobs() -> dict[str, Any]:
        document: dict[str, Any] = json.loads(monitor.health_json()[1])["jobs"]
        for name, job in document.items():
            status = monitor.status(name)
            assert status is not None
            assert job == status.to_dict()
        return document

    for name in ("a", "b"):
        monitor.register(name, schedule="0 3 * * *", timeout=5, timezone="Europe/Berlin")
    before = jobs()
    assert before["a"]["schedule"] == before["b"]["schedule"] == "0 3 * * *"
    assert before["a"]["timezone"] == "Europe/Berlin"
    monitor.register("a", schedule="@every 2m", timeout=7, grace=30, stall_after=600)
    after = jobs()
    assert (after["a"]["schedule"], after["a"]["timezone"]) == ("@every 2m", None)
    assert (after["a"]["timeout_ms"], after["a"]["grace_ms"]) == (7000.0, 30000.0)
    assert after["a"]["stall_after_ms"] == 600000.0
    assert after["b"] == before["b"]
    monitor.register("a", schedule="0 3 * * *", timezone="Europe/Berlin", timeout=5, grace=45)
    monitor.register("a", stall_after="auto")
    again = jobs()
    assert (again["a"]["schedule"], again["a"]["timezone"]) == ("0 3 * * *", "Europe/Berlin")
    assert (again["a"]["timeout_ms"], again["a"]["grace_ms"]) == (5000.0, 45000.0)
    assert again["a"]["stall_after_auto"] is True


def test_the_settings_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobpulse import _model

    monkeypatch.setattr(_model, "_SETTINGS_JSON", {})
    for index in range(4100):
        status = replace(_BASE, stall_after_seconds=1.0 + index)
        assert json.loads(b"{" + status.json_member + b"}")["j"] == status.to_dict()
        assert len(_model._SETTINGS_JSON) <= 4096
    assert len(_model._SETTINGS_JSON) < 4096  # cleared once full


def test_a_jobs_part_judges_and_counts_only_the_changed_rows_alike() -> None:
    # A part built from the one before, its rows changed in place, added or removed, has
    # the status and counts of a part built from scratch (evaluate's rules).
    rng = random.Random(7)
    states = [state.value for state in JobState]

    def row(index: int) -> HealthRow:
        failures = rng.choice((0, 0, 0, 1, 3))
        state = rng.choice(states)
        member = f'"job{index}":{{}}'.encode()
        return (state, rng.random() < 0.2, failures, 3, member, rng.randrange(1 << 20))

    document = HealthDocument()
    rows = [row(index) for index in range(30)]
    for step in range(300):
        rows = list(rows)
        if step % 7 == 0:
            if rng.random() < 0.5 and rows:
                del rows[rng.randrange(len(rows))]
            else:
                rows.append(row(len(rows)))
        for _ in range(rng.choice((0, 1, 3, 10))):
            if rows:
                index = rng.randrange(len(rows))
                rows[index] = row(index)
        if step % 11 == 0 and rows:
            index = rng.randrange(len(rows))
            rows[index] = (*rows[index][:5], rows[index][5] + 1)  # rebuilt alike
        part = document.snapshot(rows, _EPOCH, 0.0).jobs
        assert [kept[:5] for kept in part.rows] == [each[:5] for each in rows]
        assert part.status == _judge(rows)
        assert part.counts == JobsSummary.count([each[0] for each in rows], _EPOCH)
