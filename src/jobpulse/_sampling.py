"""A sampler wrapper under which no job run is ever sampled out of the status view."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from jobpulse._registry import JOB_NAME

__all__ = ["JobAwareSampler"]


class JobAwareSampler(Sampler):
    """Wraps another sampler; a span carrying ``job.name`` that it would drop is recorded
    instead (``RECORD_ONLY``): span processors, and so the status view and the metrics, see
    every run, while exporters still receive only sampled spans.

    ``job.name`` must be passed when the span is created, not set afterwards.
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP and attributes and JOB_NAME in attributes:
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"JobAwareSampler{{{self.delegate.get_description()}}}"
