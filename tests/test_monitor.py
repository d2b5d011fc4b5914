"""JobMonitor: registration, the decorator, run(), exceptions, metadata, the status view."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
from datetime import timedelta

import pytest
from opentelemetry.trace import StatusCode

import jobpulse
from jobpulse import InvalidJobError, JobLimitError, JobMonitor, JobState
from jobpulse.testing import FakeClock
from tests.conftest import MonitorFactory, Otel


def test_register_makes_a_pending_job_with_defaults(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("btc_transaction_indexing")
    status = monitor.status("btc_transaction_indexing")
    assert status is not None
    assert status.state is JobState.PENDING
    assert status.critical is False
    assert status.failure_threshold == 3
    assert status.timeout_seconds is None
    assert status.stall_after_seconds == 300.0
    assert (status.success_count, status.failure_count, status.consecutive_failures) == (0, 0, 0)
    assert status.last_run_time is None
    assert status.min_duration_seconds is None
    assert status.max_duration_seconds is None
    assert status.average_duration_seconds is None
    assert status.created_at == clock.now() == status.updated_at
    assert status.run_count == 0


def test_register_again_changes_only_the_settings_passed(monitor: JobMonitor) -> None:
    monitor.register("swap", critical=True, failure_threshold=5, timeout=900)
    monitor.register("swap", failure_threshold=2)
    status = monitor.status("swap")
    assert status is not None
    assert status.critical is True
    assert status.failure_threshold == 2
    assert status.timeout_seconds == 900.0
    # stall_after defaults to the longer of the monitor's default and the job's timeout
    assert status.stall_after_seconds == 900.0
    monitor.register("swap", stall_after=timedelta(minutes=20))
    status = monitor.status("swap")
    assert status is not None
    assert status.stall_after_seconds == 1200.0


def test_monitor_default_stall_after(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(stall_after=timedelta(seconds=30))
    monitor.register("a", timeout=10)
    monitor.register("b", timeout=60)
    assert monitor.status("a").stall_after_seconds == 30.0  # type: ignore[union-attr]
    assert monitor.status("b").stall_after_seconds == 60.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"critical": "yes"}, "critical must be a bool"),
        ({"failure_threshold": 0}, "failure_threshold must be at least 1"),
        ({"timeout": -1}, "timeout must be a positive"),
        ({"stall_after": "five"}, "must be a duration such as '90s'"),
    ],
)
def test_register_rejects_bad_settings(
    monitor: JobMonitor, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        monitor.register("job", **kwargs)  # type: ignore[arg-type]
    assert monitor.status("job") is None


@pytest.mark.parametrize("name", ["", "x" * 201, "a\nb", 7])
def test_invalid_names_raise_value_error_everywhere(monitor: JobMonitor, name: object) -> None:
    with pytest.raises(ValueError, match="job name"):
        monitor.register(name)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="job name"):
        monitor.job(name)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="job name"):
        monitor.run(name)  # type: ignore[arg-type]
    assert monitor.statuses() == {}


def test_bad_constructor_arguments(otel: Otel) -> None:
    with pytest.raises(InvalidJobError, match="namespace must be empty or match"):
        JobMonitor(otel.tracer_provider, otel.meter_provider, namespace="icy-backend")
    with pytest.raises(InvalidJobError, match="namespace must be a str"):
        JobMonitor(otel.tracer_provider, otel.meter_provider, namespace=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="max_jobs must be at least 1"):
        JobMonitor(otel.tracer_provider, otel.meter_provider, max_jobs=0)
    with pytest.raises(InvalidJobError, match="stall_after must be a positive"):
        JobMonitor(otel.tracer_provider, otel.meter_provider, stall_after=0)


def test_full_execution_cycle(monitor: JobMonitor, clock: FakeClock, otel: Otel) -> None:
    """The spec's TestJobStatusManager_JobExecution: start, succeed, fail, succeed."""
    durations = iter([2.0, 4.0, 3.0])
    outcomes = iter([None, RuntimeError("indexer down"), None])

    @monitor.job("btc_transaction_indexing", critical=True)
    def index() -> str:
        clock.advance(next(durations))
        error = next(outcomes)
        if error is not None:
            raise error
        return "indexed"

    started = clock.now()
    assert index() == "indexed"
    status = monitor.status("btc_transaction_indexing")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.last_run_time == started
    assert status.last_duration_seconds == 2.0
    assert status.last_success_time == clock.now()

    with pytest.raises(RuntimeError, match="indexer down"):
        index()
    status = monitor.status("btc_transaction_indexing")
    assert status is not None
    assert status.state is JobState.FAILED
    assert status.consecutive_failures == 1
    assert status.last_error == "RuntimeError: indexer down"
    assert status.last_error_category == "unknown"
    assert status.failing

    assert index() == "indexed"
    status = monitor.status("btc_transaction_indexing")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert (status.success_count, status.failure_count, status.consecutive_failures) == (2, 1, 0)
    assert status.last_error is None
    assert status.last_duration_seconds == 3.0
    assert status.min_duration_seconds == 2.0
    assert status.max_duration_seconds == 4.0
    assert status.average_duration_seconds == 3.0
    assert status.updated_at == clock.now()
    assert len(otel.spans()) == 3


def test_decorator_keeps_name_docstring_and_signature(monitor: JobMonitor) -> None:
    def process_swaps(batch: int, *, dry_run: bool = False) -> int:
        """Process swap requests."""
        return batch

    wrapped = monitor.job("swap_request_processing", timeout=900)(process_swaps)
    assert wrapped.__name__ == "process_swaps"
    assert wrapped.__doc__ == "Process swap requests."
    assert inspect.signature(wrapped) == inspect.signature(process_swaps)
    assert wrapped(3, dry_run=True) == 3


def test_bare_decorator_and_default_name(monitor: JobMonitor) -> None:
    @monitor.job
    def nightly() -> int:
        return 1

    @monitor.job()
    def hourly() -> int:
        return 2

    assert nightly() + hourly() == 3
    names = set(monitor.statuses())
    assert names == {
        f"{__name__}.test_bare_decorator_and_default_name.<locals>.nightly",
        f"{__name__}.test_bare_decorator_and_default_name.<locals>.hourly",
    }


def test_decorating_registers_at_decoration_time(monitor: JobMonitor) -> None:
    @monitor.job("later", critical=True)
    def later() -> None:
        pass

    status = monitor.status("later")
    assert status is not None
    assert status.state is JobState.PENDING
    assert status.critical


def test_async_job(monitor: JobMonitor, clock: FakeClock) -> None:
    @monitor.job("async_indexer")
    async def index(n: int) -> int:
        """Index n blocks."""
        await asyncio.sleep(0)
        clock.advance(1.5)
        return n * 2

    assert inspect.iscoroutinefunction(index)
    assert index.__doc__ == "Index n blocks."
    assert asyncio.run(index(21)) == 42
    status = monitor.status("async_indexer")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.last_duration_seconds == 1.5


def test_exception_is_recorded_and_reraised_unchanged(monitor: JobMonitor, otel: Otel) -> None:
    error = ConnectionRefusedError("btc node at http://rpc:hunter2@10.0.0.1 refused")

    @monitor.job("btc")
    def index() -> None:
        raise error

    with pytest.raises(ConnectionRefusedError) as caught:
        index()
    assert caught.value is error
    (span,) = otel.spans()
    assert span.name == "btc"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ConnectionRefusedError"
    assert span.attributes["job.error.category"] == "network"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ConnectionRefusedError"
    assert "hunter2" not in json.dumps(dict(event.attributes))
    status = monitor.status("btc")
    assert status is not None
    assert (
        status.last_error == "ConnectionRefusedError: btc node at http://rpc:***@10.0.0.1 refused"
    )
    assert status.last_error_category == "network"


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (KeyboardInterrupt(), "interrupted"),
        (SystemExit(3), "interrupted"),
        (asyncio.CancelledError(), "cancelled"),
        (ZeroDivisionError("division by zero"), "panic"),
    ],
)
def test_base_exceptions_are_recorded_and_reraised(
    monitor: JobMonitor, otel: Otel, error: BaseException, category: str
) -> None:
    """The spec's panic recovery: recorded as a failure, but never swallowed."""

    @monitor.job("fragile")
    def fragile() -> None:
        raise error

    with pytest.raises(type(error)) as caught:
        fragile()
    assert caught.value is error
    status = monitor.status("fragile")
    assert status is not None
    assert status.state is JobState.FAILED
    assert status.last_error_category == category
    assert otel.spans()[0].status.status_code is StatusCode.ERROR


def test_async_job_cancelled_from_outside(monitor: JobMonitor) -> None:
    started = asyncio.Event()

    @monitor.job("waiter")
    async def waiter() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(waiter())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    status = monitor.status("waiter")
    assert status is not None
    assert status.last_error_category == "cancelled"
    assert status.timeout_count == 0


def test_run_context_manager(monitor: JobMonitor, clock: FakeClock, otel: Otel) -> None:
    with monitor.run("nightly_report") as run:
        assert run.name == "nightly_report"
        assert run.span.is_recording()
        run.set_metadata(rows=1200)
        run.set_metadata({"source": "s3"}, rows=1300)
        clock.advance(60)
    status = monitor.status("nightly_report")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.last_duration_seconds == 60.0
    assert dict(status.metadata) == {"rows": 1300, "source": "s3"}
    (span,) = otel.spans()
    assert span.attributes is not None
    assert json.loads(str(span.attributes["job.metadata"])) == {"rows": 1300, "source": "s3"}


def test_run_context_manager_failure(monitor: JobMonitor) -> None:
    with pytest.raises(LookupError), monitor.run("report"):
        raise LookupError("missing row")
    status = monitor.status("report")
    assert status is not None
    assert status.last_error == "LookupError: missing row"


def test_async_run_context_manager(monitor: JobMonitor, clock: FakeClock) -> None:
    async def main() -> None:
        async with monitor.run("async_report") as run:
            run.set_metadata(pages=3)
            clock.advance(2)

    asyncio.run(main())
    status = monitor.status("async_report")
    assert status is not None
    assert status.last_duration_seconds == 2.0
    assert dict(status.metadata) == {"pages": 3}


def test_run_is_single_use_and_metadata_needs_a_run(monitor: JobMonitor) -> None:
    run = monitor.run("once")
    with pytest.raises(RuntimeError, match="inside the block"):
        run.set_metadata(a=1)
    assert not run.span.is_recording()
    with run:
        pass
    with pytest.raises(RuntimeError, match="already started"), run:
        pass


def test_metadata_merges_across_runs_and_is_json_safe(monitor: JobMonitor) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    @monitor.job("meta")
    def meta(value: object) -> None:
        assert jobpulse.set_metadata(value=value, dsn="redis://:pw@cache")

    meta(Thing())
    meta(float("nan"))
    status = monitor.status("meta")
    assert status is not None
    assert dict(status.metadata) == {"value": "nan", "dsn": "***"}
    json.dumps(status.to_dict(), allow_nan=False)


def test_set_metadata_outside_a_run_does_nothing(monitor: JobMonitor, otel: Otel) -> None:
    assert jobpulse.set_metadata(a=1) is False
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("not a job"):
        assert jobpulse.set_metadata(a=1) is False


def test_metadata_key_cap(monitor: JobMonitor, caplog: pytest.LogCaptureFixture) -> None:
    with monitor.run("wide") as run:
        run.set_metadata({f"k{i}": i for i in range(70)})
    status = monitor.status("wide")
    assert status is not None
    assert len(status.metadata) == 64
    assert "6 keys dropped" in caplog.text


def test_overlapping_runs_are_tracked_separately(monitor: JobMonitor, clock: FakeClock) -> None:
    # Overlapping runs live in different threads or tasks, each with its own context: the
    # first may end before the second without either restoring the other's context.
    first, first_context = monitor.run("indexer"), contextvars.copy_context()
    second, second_context = monitor.run("indexer"), contextvars.copy_context()
    first_context.run(first.__enter__)
    clock.advance(1)
    second_context.run(second.__enter__)
    status = monitor.status("indexer")
    assert status is not None
    assert status.state is JobState.RUNNING
    assert status.active_runs == 2
    clock.advance(1)
    first_context.run(first.__exit__, None, None, None)
    status = monitor.status("indexer")
    assert status is not None
    assert status.state is JobState.RUNNING
    assert status.active_runs == 1
    assert status.last_duration_seconds == 2.0
    clock.advance(3)
    second_context.run(second.__exit__, None, None, None)
    status = monitor.status("indexer")
    assert status is not None
    assert status.state is JobState.SUCCESS
    assert status.active_runs == 0
    assert status.success_count == 2
    assert status.last_duration_seconds == 4.0


def test_job_spans_are_parents_of_the_jobs_own_spans(monitor: JobMonitor, otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")

    @monitor.job("parent")
    def parent() -> None:
        with tracer.start_as_current_span("query"):
            pass

    parent()
    query, job = otel.spans()
    assert query.parent is not None
    assert query.parent.span_id == job.context.span_id
    assert job.attributes is not None
    assert job.attributes["job.name"] == "parent"
    assert str(job.attributes["code.function.name"]).endswith("parent")
    assert monitor.status("query") is None


def test_spans_from_the_apps_own_tracer_are_runs(monitor: JobMonitor, otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("manual", attributes={"job.name": "handmade"}):
        pass
    with (
        pytest.raises(TimeoutError),
        tracer.start_as_current_span("manual", attributes={"job.name": "handmade"}),
    ):
        raise TimeoutError("upstream took too long")
    status = monitor.status("handmade")
    assert status is not None
    assert (status.success_count, status.failure_count) == (1, 1)
    assert status.last_error == "TimeoutError: upstream took too long"
    assert status.last_error_category == "timeout"
    assert status.timeout_count == 0  # not the job's own timeout


def test_app_span_failure_without_exception_event(monitor: JobMonitor, otel: Otel) -> None:
    from opentelemetry.trace import Status

    tracer = otel.tracer_provider.get_tracer("app")
    span = tracer.start_span("manual", attributes={"job.name": "quiet"})
    span.set_status(Status(StatusCode.ERROR))
    span.end()
    status = monitor.status("quiet")
    assert status is not None
    assert status.last_error == "error"
    assert status.last_error_category == "unknown"


def test_app_spans_with_bad_job_names_are_ignored(
    monitor: JobMonitor, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    for _ in range(3):
        with tracer.start_as_current_span("manual", attributes={"job.name": "bad\nname"}):
            pass
    with tracer.start_as_current_span("manual", attributes={"job.name": 12}):
        pass
    assert monitor.statuses() == {}
    assert caplog.text.count("span ignored by the job status view") == 2


def test_job_cap(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(max_jobs=3)

    @monitor.job("a")
    def a() -> str:
        return "a"

    monitor.register("b")
    monitor.register("c")
    with pytest.raises(JobLimitError, match="already tracks 3 jobs"):
        monitor.register("d")
    with pytest.raises(JobLimitError):
        monitor.job("e")(a)
    ran = []
    with pytest.raises(JobLimitError), monitor.run("f"):
        ran.append("f")
    assert ran == []
    monitor.register("b", critical=True)  # existing jobs can still be changed
    assert a() == "a"
    assert set(monitor.statuses()) == {"a", "b", "c"}
    assert monitor.status("a").success_count == 1  # type: ignore[union-attr]


def test_pending_counts(monitor: JobMonitor, otel: Otel) -> None:
    monitor.set_pending("btc", 12)
    monitor.set_pending("swap", 0)
    monitor.set_pending("btc", 7)
    assert monitor.pending() == {"btc": 7, "swap": 0}
    points = otel.metrics()["background_jobs.pending"]
    assert points == {(("kind", "btc"),): 7, (("kind", "swap"),): 0}
    monitor.set_pending("swap", None)
    assert monitor.pending() == {"btc": 7}
    with pytest.raises(InvalidJobError, match="pending count must be an int >= 0"):
        monitor.set_pending("btc", -1)
    with pytest.raises(InvalidJobError, match="pending kind must not be empty"):
        monitor.set_pending("", 1)
    with pytest.raises(InvalidJobError):
        monitor.set_pending("btc", True)


def test_pending_kinds_are_capped(make_monitor: MonitorFactory) -> None:
    monitor = make_monitor(max_jobs=2)
    monitor.set_pending("a", 1)
    monitor.set_pending("b", 1)
    with pytest.raises(JobLimitError, match="pending kind 'c'"):
        monitor.set_pending("c", 1)
    monitor.set_pending("a", 2)


def test_summary_counts_add_up(monitor: JobMonitor, clock: FakeClock) -> None:
    monitor.register("pending")

    @monitor.job("ok")
    def ok() -> None:
        pass

    @monitor.job("bad")
    def bad() -> None:
        raise ValueError("x")

    ok()
    with pytest.raises(ValueError, match="x"):
        bad()
    with monitor.run("running"):
        summary = monitor.summary()
    assert summary.total_jobs == 4
    assert (summary.pending_jobs, summary.running_jobs) == (1, 1)
    assert (summary.healthy_jobs, summary.unhealthy_jobs, summary.stalled_jobs) == (1, 1, 0)
    assert summary.missed_jobs == 0
    assert summary.last_update_time == clock.now()


def test_shutdown_is_idempotent_and_stops_tracking(monitor: JobMonitor, otel: Otel) -> None:
    @monitor.job("after")
    def after() -> int:
        return 5

    monitor.shutdown()
    monitor.shutdown()
    assert after() == 5  # the job still runs
    assert monitor.status("after").run_count == 0  # type: ignore[union-attr]
    assert otel.metrics().get("background_job.runs", {}) == {}


def test_statuses_are_sorted_snapshots(monitor: JobMonitor) -> None:
    for name in ["c", "a", "b"]:
        monitor.register(name)
    statuses = monitor.statuses()
    assert list(statuses) == ["a", "b", "c"]
    first = statuses["a"]
    with monitor.run("a"):
        pass
    assert first.state is JobState.PENDING  # snapshots do not change under the caller
    assert monitor.statuses()["a"].state is JobState.SUCCESS
    assert monitor.statuses()["b"] is statuses["b"]  # unchanged jobs reuse their snapshot


def test_metadata_key_cap_across_runs(
    monitor: JobMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    for run_index in range(2):
        with monitor.run("wide") as run:
            run.set_metadata({f"r{run_index}k{i}": i for i in range(40)})
    status = monitor.status("wide")
    assert status is not None
    assert len(status.metadata) == 64
    assert (
        "job 'wide': 16 metadata keys dropped (at most 64 keys, 2048 bytes of JSON per job)"
        in caplog.text
    )


def test_decorated_job_past_the_cap_after_retention_runs_unmonitored(
    make_monitor: MonitorFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = make_monitor(max_jobs=1, retention=60)

    @monitor.job("first")
    def first() -> str:
        return "ran"

    clock.advance(61)
    monitor.register("second")  # "first" is dropped to make room
    assert first() == "ran"
    assert set(monitor.statuses()) == {"second"}
    assert "cannot register job 'first'" in caplog.text


def test_processor_contract(monitor: JobMonitor) -> None:
    assert monitor._processor.force_flush() is True
    assert monitor._processor.force_flush(timeout_millis=1) is True
