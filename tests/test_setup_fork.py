"""setup() in a process that forks (a Celery prefork worker, gunicorn): each child exports
with exporters of its own, under its own ``service.instance.id`` (opentelemetry-sdk 1.44 or
later; an older SDK's child keeps its parent's)."""

from __future__ import annotations

import os

import pytest
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import jobpulse
from jobpulse._setup import PerProcessMetricExporter, PerProcessSpanExporter
from tests.conftest import CELERY_SDK, SDK_VERSION, in_child
from tests.otlp_receiver import ReceivedSpan, http_receiver

#: opentelemetry-sdk gives a forked child a ``service.instance.id`` of its own from 1.44 on.
FORK_INSTANCE_ID_SDK = CELERY_SDK

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


class _Recording(SpanExporter):
    def __init__(self, built: list[_Recording]) -> None:
        built.append(self)
        self.exported = 0
        self.shut_down = False

    def export(self, spans: object) -> SpanExportResult:
        self.exported += 1
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut_down = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_a_forked_child_builds_its_own_span_exporter() -> None:
    built: list[_Recording] = []
    exporter = PerProcessSpanExporter(lambda: _Recording(built))
    parents = built[0]
    assert exporter.export([]) is SpanExportResult.SUCCESS
    assert exporter.force_flush(100)

    def child() -> dict[str, object]:  # pragma: no cover - runs in the child
        exporter.export([])
        exporter.export([])
        exporter.shutdown()
        return {
            "built": len(built),
            "parents_exports": parents.exported,
            "childs_exports": built[-1].exported,
            "parents_shut_down": parents.shut_down,
            "childs_shut_down": built[-1].shut_down,
        }

    assert in_child(child) == {
        "built": 2,  # one more, in the child, at its first export
        "parents_exports": 1,
        "childs_exports": 2,
        "parents_shut_down": False,  # the parent's sockets are the parent's
        "childs_shut_down": True,
    }
    exporter.shutdown()
    assert (len(built), parents.exported, parents.shut_down) == (1, 1, True)


def test_a_forked_child_that_never_exported_shuts_nothing_down() -> None:
    built: list[_Recording] = []
    exporter = PerProcessSpanExporter(lambda: _Recording(built))

    def child() -> dict[str, object]:  # pragma: no cover - runs in the child
        exporter.shutdown()
        return {"built": len(built), "parents_shut_down": built[0].shut_down}

    assert in_child(child) == {"built": 1, "parents_shut_down": False}


class _Metrics(MetricExporter):
    def __init__(self, built: list[_Metrics]) -> None:
        super().__init__()
        built.append(self)
        self.exported = 0
        self.shut_down = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.exported += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.shut_down = True


def test_a_forked_child_builds_its_own_metric_exporter() -> None:
    built: list[_Metrics] = []
    exporter = PerProcessMetricExporter(lambda: _Metrics(built))
    assert exporter._preferred_temporality == built[0]._preferred_temporality
    data = MetricsData(resource_metrics=[])
    assert exporter.export(data) is MetricExportResult.SUCCESS
    assert exporter.force_flush()

    def child() -> dict[str, object]:  # pragma: no cover - runs in the child
        exporter.export(data)
        exporter.shutdown()
        return {
            "built": len(built),
            "parents": [built[0].exported, built[0].shut_down],
            "childs": [built[-1].exported, built[-1].shut_down],
        }

    assert in_child(child) == {"built": 2, "parents": [1, False], "childs": [1, True]}
    exporter.shutdown()
    assert built[0].shut_down


@pytest.mark.usefixtures("otel_globals")
def test_after_fork_setup_exports_from_the_child_under_its_own_instance_id() -> None:
    with http_receiver() as receiver:
        monitor = jobpulse.setup(
            "forking-service",
            prometheus=False,
            otlp_endpoint=receiver.endpoint,
            otlp_protocol="http/protobuf",
        )
        with monitor.run("in_parent"):
            pass
        _flush()
        receiver.store.wait_for_spans(lambda spans: len(spans) == 1)

        def child() -> dict[str, object]:  # pragma: no cover - runs in the child
            with monitor.run("in_child"):
                pass
            _flush()
            status = monitor.status("in_child")
            return {"child_successes": status.success_count if status else None}

        assert in_child(child) == {"child_successes": 1}
        with monitor.run("in_parent"):  # the parent's exporter still works after the fork
            pass
        _flush()
        spans = receiver.store.wait_for_spans(lambda spans: len(spans) == 3)

    def instance(span: ReceivedSpan) -> object:
        return span.resource["service.instance.id"]

    parent_runs = [span for span in spans if span.name == "in_parent"]
    [child_run] = [span for span in spans if span.name == "in_child"]
    assert len(parent_runs) == 2
    assert instance(parent_runs[0]) == instance(parent_runs[1])
    if SDK_VERSION >= FORK_INSTANCE_ID_SDK:
        assert instance(child_run) != instance(parent_runs[0])
    else:  # the child keeps its parent's resource: why jobpulse[celery] needs 1.44
        assert instance(child_run) == instance(parent_runs[0])
    assert {span.resource["service.name"] for span in spans} == {"forking-service"}


def _flush() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.force_flush(10_000)
