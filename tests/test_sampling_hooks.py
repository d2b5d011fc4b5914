"""JobAwareSampler's hooks for integrations: span adopters and record-only runs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.context import attach, detach
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from jobpulse import JobMonitor, JobState
from jobpulse._sampling import JobAwareSampler
from jobpulse._shared import (
    JOB_NAME,
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


@settings(max_examples=200, deadline=None)
@given(
    parent=st.sampled_from(["none", "invalid", "local", "remote"]),
    sampled=st.booleans(),
    state=st.sampled_from([(), (("vendor", "value"),)]),
    record_only=st.sampled_from([None, True, False, "true"]),
    through_context=st.booleans(),
)
def test_the_default_samplers_answer_for_a_run_is_the_delegates(
    parent: str,
    sampled: bool,
    state: tuple[tuple[str, str], ...],
    record_only: object,
    through_context: bool,
) -> None:
    # JobAwareSampler works out ParentBased(ALWAYS_ON)'s answer for a job run itself: it
    # must be the one the delegate gives, for every kind of parent.
    fast = JobAwareSampler(ParentBased(ALWAYS_ON))
    slow = JobAwareSampler(ParentBased(ALWAYS_ON))
    assert fast._parent_based_always_on
    slow._parent_based_always_on = False
    attributes: dict[str, AttributeValue] = {JOB_NAME: "sampled"}
    if record_only is not None:
        attributes[JOB_RECORD_ONLY] = record_only  # type: ignore[assignment]
    context = None
    if parent != "none":
        span_context = (
            INVALID_SPAN_CONTEXT
            if parent == "invalid"
            else SpanContext(
                trace_id=0xABC,
                span_id=0xDEF,
                is_remote=parent == "remote",
                trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
                trace_state=TraceState(list(state)),
            )
        )
        context = set_span_in_context(NonRecordingSpan(span_context))
    token = attach(context) if through_context and context is not None else None
    try:
        given_context = None if through_context else context
        answers = [
            sampler.should_sample(given_context, 0xABC, "run", None, attributes)
            for sampler in (fast, slow)
        ]
    finally:
        if token is not None:
            detach(token)
    fast_answer, slow_answer = answers
    assert fast_answer.decision is slow_answer.decision
    assert fast_answer.trace_state == slow_answer.trace_state
    assert dict(fast_answer.attributes) == dict(slow_answer.attributes) == attributes
    if record_only is True or (parent in ("local", "remote") and not sampled):
        assert fast_answer.decision is Decision.RECORD_ONLY
    else:
        assert fast_answer.decision is Decision.RECORD_AND_SAMPLE


def test_only_the_sdks_default_sampler_takes_the_shortcut() -> None:
    assert JobAwareSampler(ParentBased(ALWAYS_ON))._parent_based_always_on
    assert not JobAwareSampler(ParentBased(ALWAYS_OFF))._parent_based_always_on
    assert not JobAwareSampler(ALWAYS_ON)._parent_based_always_on
    assert not JobAwareSampler(
        ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    )._parent_based_always_on
    replaced = JobAwareSampler(ParentBased(ALWAYS_ON))
    replaced.delegate = ALWAYS_OFF  # the answer is the new delegate's from then on
    assert not replaced._parent_based_always_on
    answer = replaced.should_sample(None, 1, "run", None, {JOB_NAME: "run"})
    assert answer.decision is Decision.RECORD_ONLY
