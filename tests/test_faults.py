"""Decision 2: monitoring never breaks the host. Faults are injected into every hook."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.sdk.trace import Span

from jobpulse import JobMonitor, _duration, _metadata, set_metadata
from jobpulse._duration import FOLD_AT
from jobpulse._guard import Guard, report_internal_error
from jobpulse._registry import StatusRegistry
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors, Otel


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected fault")


@pytest.mark.parametrize(
    ("target", "attribute", "where"),
    [
        (StatusRegistry, "start_run", "span processor on_start"),
        (StatusRegistry, "end_run", "span processor on_end"),
        (_metadata, "decode", "run metadata"),
        (_metadata, "sanitize", "run metadata"),
    ],
)
def test_faults_in_hooks_never_reach_the_job(
    monitor: JobMonitor,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    attribute: str,
    where: str,
) -> None:
    monkeypatch.setattr(target, attribute, _boom)
    error = KeyError("the job's own")

    @monitor.job("victim")
    def ok() -> str:
        set_metadata(rows=1)
        return "result"

    @monitor.job("victim2")
    def bad() -> None:
        raise error

    assert ok() == "result"
    with pytest.raises(KeyError) as caught:
        bad()
    assert caught.value is error
    assert asyncio.run(_async_job(monitor)) == "async result"
    taken = internal_errors.take()
    assert taken
    assert all(str(exc) == "injected fault" for _, exc in taken)
    assert where in {w for w, _ in taken}


async def _async_job(monitor: JobMonitor) -> str:
    @monitor.job("victim3")
    async def job() -> str:
        await asyncio.sleep(0)
        return "async result"

    return await job()


def test_fault_in_histogram_record(
    monitor: JobMonitor, internal_errors: InternalErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed run is recorded at once (for its exemplar).
    monkeypatch.setattr(monitor._processor._recorder, "_histogram", _BrokenHistogram())

    @monitor.job("hist")
    def job() -> int:
        raise KeyError("the job's own")

    with pytest.raises(KeyError, match="the job's own"):
        job()
    assert [where for where, _ in internal_errors.take()] == ["span processor on_end"]
    assert monitor.status("hist").failure_count == 1  # type: ignore[union-attr]


def test_fault_in_folding_durations(
    monitor: JobMonitor,
    otel: Otel,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert monitor._processor._batched
    monkeypatch.setattr(_duration, "_fold_into", _boom)
    job = monitor.job("folded")(lambda: 1)
    assert job() == 1
    metrics = otel.metrics()  # a collection folds first: that fails, the rest is read
    assert [where for where, _ in internal_errors.take()] == ["metric callback"]
    assert "background_job.runs" in metrics
    for _ in range(FOLD_AT):  # the run that makes FOLD_AT wait folds on its own thread
        assert job() == 1
    assert [where for where, _ in internal_errors.take()] == ["span processor on_end"]
    assert monitor.status("folded").success_count == FOLD_AT + 1  # type: ignore[union-attr]


class _BrokenHistogram:
    def record(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")


def test_fault_in_span_start_runs_the_job_unmonitored(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK's start_span runs the application's sampler and span processors: what it
    # raises is theirs, logged as such (not one of jobpulse's internal errors).
    monkeypatch.setattr(monitor._tracer, "start_span", _boom)

    @monitor.job("unmonitored")
    def job() -> str:
        return "still runs"

    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        assert job() == "still runs"
        with monitor.run("unmonitored2") as run:
            run.set_metadata(a=1)
    assert "starting a span raised RuntimeError" in caplog.text
    assert "the run of 'unmonitored' is not monitored" in caplog.text
    assert monitor.status("unmonitored").run_count == 0  # type: ignore[union-attr]


def test_fault_in_failure_recording_keeps_the_jobs_exception(
    monitor: JobMonitor, internal_errors: InternalErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobpulse import _errors

    monkeypatch.setattr(_errors, "classify_exception", _boom)
    error = OSError("disk full")

    @monitor.job("failing")
    def job() -> None:
        raise error

    with pytest.raises(OSError, match="disk full") as caught:
        job()
    assert caught.value is error
    assert [where for where, _ in internal_errors.take()] == ["run failure"]


def test_fault_in_metric_callback(
    monitor: JobMonitor,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
    otel: Otel,
) -> None:
    monitor.register("x")
    monkeypatch.setattr(StatusRegistry, "metric_points", _boom)
    monkeypatch.setattr(StatusRegistry, "pending", _boom)
    otel.reader.get_metrics_data()
    wheres = {where for where, _ in internal_errors.take()}
    assert wheres == {"metric callback"}


def test_fault_decoding_metadata_of_an_app_span(
    monitor: JobMonitor,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
    otel: Otel,
) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    monkeypatch.setattr(_metadata, "decode", _boom)
    attributes = {"job.name": "app", "job.metadata": '{"a": 1}'}
    with tracer.start_as_current_span("app", attributes=attributes):
        pass
    assert [where for where, _ in internal_errors.take()] == ["span processor on_end"]


def test_fault_in_stall_report(
    monitor: JobMonitor,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
) -> None:
    monitor.register("hang", stall_after=1)
    monkeypatch.setattr(Span, "add_event", _boom)
    with monitor.run("hang"):
        clock.advance(2)
    assert [where for where, _ in internal_errors.take()] == ["stall report"]
    assert monitor.status("hang").success_count == 1  # type: ignore[union-attr]


def test_guard_lets_base_exceptions_through_and_rate_limits_logs(
    internal_errors: InternalErrors, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard("test site")
    with pytest.raises(KeyboardInterrupt), guard:
        raise KeyboardInterrupt
    with guard:
        pass
    for _ in range(5):
        report_internal_error("rate limited site", RuntimeError("x"))
    logged = [r for r in caplog.records if "rate limited site" in r.getMessage()]
    assert [r.getMessage().split("occurrence ")[1][0] for r in logged] == ["1", "2", "4"]
    assert len(internal_errors.take()) == 5
