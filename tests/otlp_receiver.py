"""Real OTLP receivers for tests: what a collector would get from `jobpulse.setup()`.

`grpc_receiver()` serves the official OTLP/gRPC trace and metrics services (the generated
``*_pb2_grpc`` servicers) and `http_receiver()` serves OTLP/HTTP (``POST /v1/traces`` and
``/v1/metrics`` with ``application/x-protobuf`` bodies, parsed by the same proto messages),
both on 127.0.0.1 at an ephemeral port. Each stores what it receives in an `OtlpStore`,
which the server threads fill and the test waits on (a Condition, with a deadline).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import HistogramDataPoint, Metric

__all__ = [
    "Attributes",
    "OtlpReceiver",
    "OtlpStore",
    "Points",
    "ReceivedSpan",
    "attributes",
    "grpc_receiver",
    "http_receiver",
]

Attributes = dict[str, object]
#: Metric name -> sorted attribute items -> the latest value (histograms: the data point).
Points = dict[str, dict[tuple[tuple[str, object], ...], float | HistogramDataPoint]]

WAIT_SECONDS = 10.0


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Sequence[KeyValue]) -> Attributes:
    """OTLP key-values as a plain dict (arrays become tuples)."""
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received, with its resource and instrumentation scope."""

    name: str
    attributes: Attributes
    #: `opentelemetry.proto.trace.v1.trace_pb2.Status.StatusCode`: 0 unset, 1 ok, 2 error.
    status_code: int
    status_message: str
    #: (event name, event attributes), in order.
    events: tuple[tuple[str, Attributes], ...]
    resource: Attributes
    scope: str


class OtlpStore:
    """The export requests a receiver got, in order of arrival. Thread-safe."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._traces: list[ExportTraceServiceRequest] = []
        self._metrics: list[ExportMetricsServiceRequest] = []
        self._headers: list[dict[str, str]] = []

    def add_traces(self, request: ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self._condition:
            self._traces.append(request)
            self._headers.append(headers)
            self._condition.notify_all()

    def add_metrics(self, request: ExportMetricsServiceRequest, headers: dict[str, str]) -> None:
        with self._condition:
            self._metrics.append(request)
            self._headers.append(headers)
            self._condition.notify_all()

    def headers(self) -> list[dict[str, str]]:
        """The headers (gRPC: metadata) of every request, names in lower case, in order."""
        with self._condition:
            return [dict(headers) for headers in self._headers]

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        with self._condition:
            return list(self._traces)

    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        with self._condition:
            return list(self._metrics)

    def spans(self) -> list[ReceivedSpan]:
        return _spans(self.trace_requests())

    def metrics(self) -> list[tuple[Attributes, Metric]]:
        """Every metric of every request as (resource attributes, metric), in order."""
        return _metrics(self.metric_requests())

    def points(self) -> Points:
        return _points(self.metric_requests())

    def wait_for_spans(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = WAIT_SECONDS
    ) -> list[ReceivedSpan]:
        """Wait until `predicate` holds for all the spans received so far, and return them.

        Raises `AssertionError` (naming what did arrive) after `timeout` seconds."""
        with self._condition:
            arrived = self._condition.wait_for(lambda: predicate(_spans(self._traces)), timeout)
            spans = _spans(self._traces)
        if not arrived:
            raise AssertionError(
                f"no matching spans within {timeout} s; received {[s.name for s in spans]}"
            )
        return spans

    def wait_for_points(
        self, predicate: Callable[[Points], bool], timeout: float = WAIT_SECONDS
    ) -> Points:
        """Wait until `predicate` holds for the latest metric points, and return them.

        Raises `AssertionError` (naming the metrics that did arrive) after `timeout` seconds."""
        with self._condition:
            arrived = self._condition.wait_for(lambda: predicate(_points(self._metrics)), timeout)
            points = _points(self._metrics)
        if not arrived:
            raise AssertionError(
                f"no matching metric points within {timeout} s; received {sorted(points)}"
            )
        return points


def _spans(requests: list[ExportTraceServiceRequest]) -> list[ReceivedSpan]:
    return [
        ReceivedSpan(
            name=span.name,
            attributes=attributes(span.attributes),
            status_code=span.status.code,
            status_message=span.status.message,
            events=tuple((event.name, attributes(event.attributes)) for event in span.events),
            resource=attributes(resource_spans.resource.attributes),
            scope=scope_spans.scope.name,
        )
        for request in requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def _metrics(requests: list[ExportMetricsServiceRequest]) -> list[tuple[Attributes, Metric]]:
    return [
        (attributes(resource_metrics.resource.attributes), metric)
        for request in requests
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    ]


def _points(requests: list[ExportMetricsServiceRequest]) -> Points:
    # Later exports overwrite earlier ones: with cumulative temporality the latest point of
    # each series holds its current value.
    points: Points = {}
    for _, metric in _metrics(requests):
        series = points.setdefault(metric.name, {})
        kind = metric.WhichOneof("data")
        if kind == "histogram":
            for histogram_point in metric.histogram.data_points:
                series[_key(histogram_point.attributes)] = histogram_point
        elif kind in ("sum", "gauge"):
            data = metric.sum if kind == "sum" else metric.gauge
            for point in data.data_points:
                value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
                series[_key(point.attributes)] = value
    return points


def _key(pairs: Sequence[KeyValue]) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(attributes(pairs).items()))


@dataclass(frozen=True)
class OtlpReceiver:
    """A running receiver: point an exporter at `endpoint`, read what came in `store`."""

    endpoint: str
    store: OtlpStore


def _metadata(context: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in context.invocation_metadata()}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: OtlpStore) -> None:
        self._store = store

    def Export(
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        self._store.add_traces(request, _metadata(context))
        return ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: OtlpStore) -> None:
        self._store = store

    def Export(
        self, request: ExportMetricsServiceRequest, context: Any
    ) -> ExportMetricsServiceResponse:
        self._store.add_metrics(request, _metadata(context))
        return ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/gRPC receiver (plaintext) on 127.0.0.1; its endpoint is ``http://host:port``."""
    store = OtlpStore()
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc")
    server = grpc.server(executor)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(store), server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(store), server)  # type: ignore[no-untyped-call]
    port: int = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield OtlpReceiver(f"http://127.0.0.1:{port}", store)
    finally:
        server.stop(grace=None).wait(5.0)
        executor.shutdown(wait=True)


class _OtlpHttpHandler(BaseHTTPRequestHandler):
    server: _OtlpHttpServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        content_type = self.headers.get("Content-Type", "")
        response: ExportTraceServiceResponse | ExportMetricsServiceResponse
        if content_type != "application/x-protobuf":
            self.send_error(415, f"expected application/x-protobuf, got {content_type!r}")
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        if self.path == "/v1/traces":
            self.server.store.add_traces(ExportTraceServiceRequest.FromString(body), headers)
            response = ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            self.server.store.add_metrics(ExportMetricsServiceRequest.FromString(body), headers)
            response = ExportMetricsServiceResponse()
        else:
            self.send_error(404)
            return
        payload = response.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _OtlpHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: OtlpStore) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHttpHandler)
        self.store = store


@contextmanager
def http_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on 127.0.0.1; its endpoint is ``http://host:port`` (the
    exporters append ``/v1/traces`` and ``/v1/metrics``)."""
    store = OtlpStore()
    server = _OtlpHttpServer(store)
    thread = threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True)
    thread.start()
    try:
        yield OtlpReceiver(f"http://127.0.0.1:{server.server_address[1]}", store)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
