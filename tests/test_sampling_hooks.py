"""JobAwareSampler's hooks for integrations: span adopters and record-only runs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from jobpulse import JobMonitor, JobState
from jobpulse._shared import (
    JOB_RECORD_ONLY,
    SpanAdopter,
    add_span_adopter,
    remove_span_adopter,
)
from tests.conftest import InternalErrors


def _adopt_consumer_runs(name: str, kind: SpanKind | None) -> Mapping[str, AttributeValue] | None:
    if kind is SpanKind.CONSUMER and name.startswith("run/"):
        return {"job.name": name[4:], "adopted.by": "test"}
    return None


@pytest.fixture
def adopter() -> Iterator[SpanAdopter]:
    add_span_adopter(_adopt_consumer_runs)
    add_span_adopter(_adopt_consumer_runs)  # once is enough
    try:
        yield _adopt_consumer_runs
    finally:
        remove_span_adopter(_adopt_consumer_runs)


def _provider(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter, JobMonitor]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter, JobMonitor(provider)


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF], ids=["sampled", "dropped"])
@pytest.mark.usefixtures("adopter")
def test_an_adopted_span_is_the_run(sampler: Sampler) -> None:
    provider, exporter, monitor = _provider(sampler)
    tracer = provider.get_tracer("other.instrumentation")  # made after the monitor wrapped it
    try:
        tracer.start_span("run/report", kind=SpanKind.CONSUMER).end()
        tracer.start_span("run/report", kind=SpanKind.INTERNAL).end()  # not adopted
        tracer.start_span("publish/report", kind=SpanKind.CONSUMER).end()  # not adopted
        status = monitor.status("report")
        assert status is not None
        assert (status.state, status.success_count) == (JobState.SUCCESS, 1)
        exported = [
            (span.name, span.kind, dict(span.attributes or {}))
            for span in exporter.get_finished_spans()
        ]
        adopted = ("run/report", SpanKind.CONSUMER, {"job.name": "report", "adopted.by": "test"})
        left_alone: list[tuple[str, SpanKind, dict[str, object]]] = [
            ("run/report", SpanKind.INTERNAL, {}),
            ("publish/report", SpanKind.CONSUMER, {}),
        ]
        if sampler is ALWAYS_ON:
            assert exported == [adopted, *left_alone]
        else:  # recorded for the view, not exported; the others are dropped
            assert exported == []
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_without_the_adopter_the_span_is_left_alone() -> None:
    provider, exporter, monitor = _provider(ALWAYS_ON)
    try:
        provider.get_tracer("other").start_span("run/report", kind=SpanKind.CONSUMER).end()
        assert monitor.status("report") is None
        assert [dict(span.attributes or {}) for span in exporter.get_finished_spans()] == [{}]
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_a_failing_adopter_is_reported_and_the_span_goes_on(
    internal_errors: InternalErrors,
) -> None:
    def broken(name: str, kind: SpanKind | None) -> Mapping[str, AttributeValue] | None:
        raise RuntimeError("adopter bug")

    provider, exporter, monitor = _provider(ALWAYS_ON)
    add_span_adopter(broken)
    add_span_adopter(_adopt_consumer_runs)
    try:
        provider.get_tracer("other").start_span("run/report", kind=SpanKind.CONSUMER).end()
    finally:
        remove_span_adopter(broken)
        remove_span_adopter(_adopt_consumer_runs)
        monitor.shutdown()
        provider.shutdown()
    [(where, error)] = internal_errors.take()
    assert (where, str(error)) == ("span adopter", "adopter bug")
    assert [span.name for span in exporter.get_finished_spans()] == ["run/report"]
    assert monitor.status("report") is not None  # the next adopter took it


def test_a_record_only_run_is_tracked_but_never_exported() -> None:
    provider, exporter, monitor = _provider(ALWAYS_ON)
    try:
        tracer = provider.get_tracer("beat")
        tracer.start_span("mirror", attributes={"job.name": "mirror", JOB_RECORD_ONLY: True}).end()
        tracer.start_span("other", attributes={JOB_RECORD_ONLY: True}).end()  # not a run
        status = monitor.status("mirror")
        assert status is not None
        assert status.success_count == 1
        assert [span.name for span in exporter.get_finished_spans()] == ["other"]
    finally:
        monitor.shutdown()
        provider.shutdown()
