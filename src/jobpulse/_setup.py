"""`setup()`: OpenTelemetry for an application that has not set it up, in one call.

It builds what is missing and reuses what the application already has:

- a ``TracerProvider`` (made global only if none is set; never a second global one), with
  the OTLP and console span exporters behind ``BatchSpanProcessor``, so that a dead
  collector never blocks a job;
- a ``MeterProvider`` with the Prometheus reader and the OTLP metric reader. An SDK
  ``MeterProvider`` cannot take readers after it is built, so an application's own one is
  reused as it is and its readers receive the job metrics;
- every exporter gets a short timeout, and everything `setup()` built is shut down by
  `JobMonitor.shutdown()` (also at exit) within one deadline: the SDK's own exit handler
  can wait about 30 s on an unreachable collector;
- with a store (``store=`` or ``JOBPULSE_STORE``), the store is opened first, so that a
  store that cannot be opened raises before anything global is set.
"""

from __future__ import annotations

import atexit
import importlib
import inspect
import logging
import os
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

from jobpulse._backoff import BackoffSpanExporter
from jobpulse._exceptions import InvalidJobError
from jobpulse._guard import Guard
from jobpulse._instruments import METER_NAME, series_limit, validate_namespace
from jobpulse._monitor import JobMonitor, _open_store
from jobpulse._sampling import JobAwareSampler
from jobpulse._validation import Duration, to_seconds, validate_positive_int

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from jobpulse.store import Store

__all__ = ["setup", "setup_monitor"]

logger = logging.getLogger("jobpulse")

PROTOCOLS = ("grpc", "http/protobuf")
_TRACES_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_METRICS_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
#: The store `setup()` uses when its ``store`` argument is None (empty: none).
STORE_VARIABLE = "JOBPULSE_STORE"
_SHUTDOWN_GUARD = Guard("telemetry shutdown")
_lock = threading.Lock()
_active: JobMonitor | None = None
# The global providers setup() built, which its monitor's shutdown shuts down
_built_globals: weakref.WeakSet[object] = weakref.WeakSet()


def setup_monitor() -> JobMonitor | None:
    """The monitor of `setup()` while it is open, else None (no lock: one global read)."""
    active = _active
    return active if active is not None and not active.closed else None


def setup(
    service_name: str | None = None,
    *,
    namespace: str = "",
    prometheus: bool = True,
    prometheus_registry: CollectorRegistry | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    console: bool = False,
    resource_attributes: Mapping[str, str | bool | int | float] | None = None,
    export_timeout: Duration = 2.0,
    metric_export_interval: Duration | None = None,
    shutdown_timeout: Duration = 2.0,
    stall_after: Duration = 300.0,
    max_jobs: int = 1000,
    max_history: int = 4096,
    store: str | Store | None = None,
    flush_interval: Duration = 1.0,
    instance_ttl: Duration = 10.0,
) -> JobMonitor:
    """Configure OpenTelemetry for job monitoring and return the `JobMonitor`.

    Args:
        service_name: ``service.name`` of the resource, unless ``OTEL_SERVICE_NAME`` or
            ``OTEL_RESOURCE_ATTRIBUTES`` set one (the environment wins, so operators can
            rename a service without a code change). ``service.instance.id`` is a new
            UUID per process unless the environment sets it.
        namespace: metric name prefix (``icy_backend`` gives
            ``icy_backend_background_job_duration_seconds``).
        prometheus: add a Prometheus reader writing to `prometheus_registry` (default:
            prometheus_client's global registry); needs ``jobpulse[prometheus]``.
        otlp_endpoint: export spans and metrics over OTLP to this collector. None uses
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the per-signal variables) when set.
        otlp_protocol: ``grpc`` or ``http/protobuf``; None reads
            ``OTEL_EXPORTER_OTLP_PROTOCOL``, default ``grpc``. Needs ``jobpulse[otlp]``.
        otlp_headers: headers for every OTLP request (e.g. an API key).
        console: also print finished spans to stdout.
        resource_attributes: more resource attributes (the environment's win).
        export_timeout: seconds one OTLP export may take, retries included.
        metric_export_interval: seconds between OTLP metric exports; None reads
            ``OTEL_METRIC_EXPORT_INTERVAL`` (ms), default 60 s.
        shutdown_timeout: one deadline for flushing and closing every exporter at
            `JobMonitor.shutdown()` and at exit; what is unsent by then is dropped.
        stall_after, max_jobs, max_history: passed to `JobMonitor`.
        store: where the processes of this service share their view (see docs/store.md): a
            URL such as ``sqlite:///.jobpulse/jobs.db`` or a `jobpulse.store.Store`. None
            reads ``JOBPULSE_STORE`` (unset or empty: no store). Opened before anything
            global is built. The store's last write at shutdown is bounded by
            `shutdown_timeout` too (it comes after the exporters').
        flush_interval, instance_ttl: passed to `JobMonitor` with the store.

    With ``OTEL_SDK_DISABLED=true`` nothing is configured or exported: the returned
    monitor still keeps the status view, with the store if one is given. If the application
    already set SDK providers globally, they are reused: span exporters are added to its
    tracer provider only when asked for here explicitly (`otlp_endpoint`, `console`), since
    its own configuration already read the environment.

    Raises `RuntimeError` if a monitor from an earlier `setup()` is still open,
    `InvalidJobError` (a ValueError) for an unknown protocol or a bad duration, and
    `jobpulse.StoreError` (naming the URL without its password) for a store that cannot be
    opened; nothing global is set then.
    """
    global _active
    export_seconds = to_seconds(export_timeout, "export_timeout")
    shutdown_seconds = to_seconds(shutdown_timeout, "shutdown_timeout")
    interval = (
        None
        if metric_export_interval is None
        else to_seconds(metric_export_interval, "metric_export_interval")
    )
    protocol = otlp_protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "grpc"
    if protocol not in PROTOCOLS:
        raise InvalidJobError(f"otlp_protocol must be one of {PROTOCOLS}, got {protocol!r}")
    # Every argument is checked before anything global is built.
    monitor_options: dict[str, Any] = {
        "namespace": validate_namespace(namespace),
        "stall_after": to_seconds(stall_after, "stall_after"),
        "max_jobs": validate_positive_int(max_jobs, "max_jobs"),
        "max_history": validate_positive_int(max_history, "max_history"),
    }
    if store is None:
        store = os.environ.get(STORE_VARIABLE, "").strip() or None
    if store is not None:
        monitor_options["flush_interval"] = to_seconds(flush_interval, "flush_interval")
        monitor_options["instance_ttl"] = to_seconds(instance_ttl, "instance_ttl")
    with _lock:
        if _active is not None and not _active.closed:
            raise RuntimeError(
                "jobpulse.setup() was already called in this process; use the monitor it "
                "returned (or shut that one down first)"
            )
        current = (trace.get_tracer_provider(), metrics.get_meter_provider())
        if any(provider in _built_globals for provider in current):
            raise RuntimeError(
                "jobpulse.setup() cannot run again after its monitor was shut down: the global "
                "providers it set are shut down and OpenTelemetry cannot replace them; call "
                "setup() once per process"
            )
        opened = None
        if store is not None:
            opened = _open_store(
                store,
                monitor_options["flush_interval"],
                monitor_options["instance_ttl"],
                monitor_options["namespace"],
                _service(service_name, resource_attributes),
            )
            monitor_options["store"] = opened
        try:
            _active = _build(
                monitor_options,
                service_name=service_name,
                prometheus=prometheus,
                prometheus_registry=prometheus_registry,
                otlp_endpoint=otlp_endpoint,
                protocol=protocol,
                otlp_headers=otlp_headers,
                console=console,
                resource_attributes=resource_attributes,
                export_seconds=export_seconds,
                interval=interval,
                shutdown_seconds=shutdown_seconds,
            )
        except BaseException:
            if opened is not None and opened is not store:  # opened here from a URL: ours
                opened.close()
            raise
        return _active


def _build(
    monitor_options: dict[str, Any],
    *,
    service_name: str | None,
    prometheus: bool,
    prometheus_registry: CollectorRegistry | None,
    otlp_endpoint: str | None,
    protocol: str,
    otlp_headers: Mapping[str, str] | None,
    console: bool,
    resource_attributes: Mapping[str, str | bool | int | float] | None,
    export_seconds: float,
    interval: float | None,
    shutdown_seconds: float,
) -> JobMonitor:
    """The providers, exporters and monitor of `setup()` (called under its lock, with every
    argument checked and the store open)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        logger.info("OTEL_SDK_DISABLED=true: job runs are tracked, nothing is exported")
        if "store" in monitor_options:  # no resource is built: the store still names it
            named = _resource(service_name, resource_attributes).attributes[SERVICE_NAME]
            monitor_options["service_name"] = str(named)
        disabled = JobMonitor(**monitor_options)
        if "store" in monitor_options:
            # Its last write at exit marks this instance stopped: runs still open there
            # are lost at once, not an instance_ttl later.
            disabled._shutdown_timeout = shutdown_seconds
            atexit.register(disabled.shutdown)
            disabled._on_shutdown.append(lambda: atexit.unregister(disabled.shutdown))
        return disabled
    otlp_traces = otlp_endpoint is not None or _environment_has(_TRACES_ENDPOINTS)
    otlp_metrics = otlp_endpoint is not None or _environment_has(_METRICS_ENDPOINTS)
    _check_extras(
        prometheus=prometheus,
        prometheus_registry=prometheus_registry,
        otlp_protocol=protocol if otlp_traces or otlp_metrics else None,
    )
    resource = _resource(service_name, resource_attributes)
    # Shut down in this order: the final metric export first, while the status view its
    # observable instruments read is still open (the tracer provider's shutdown closes
    # it, through the monitor's span processor), then the spans.
    metric_steps: list[Callable[[], object]] = []
    span_steps: list[Callable[[], object]] = []

    tracer_provider, new_tracer_provider = _tracer_provider(resource)
    if tracer_provider is not None:
        if new_tracer_provider:
            span_steps.append(tracer_provider.shutdown)
        exporters: list[SpanExporter] = []
        if otlp_traces and (new_tracer_provider or otlp_endpoint is not None):
            exporters.append(
                BackoffSpanExporter(
                    PerProcessSpanExporter(
                        lambda: _otlp_span_exporter(
                            protocol, otlp_endpoint, otlp_headers, export_seconds
                        )
                    )
                )
            )
        if console:
            exporters.append(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line))
        for exporter in exporters:
            processor = BatchSpanProcessor(exporter, export_timeout_millis=export_seconds * 1000.0)
            tracer_provider.add_span_processor(processor)
            if not new_tracer_provider:
                # Added to the application's provider: ours to close, the provider is not.
                span_steps.append(processor.shutdown)

    def readers() -> tuple[list[MetricReader], CollectorRegistry | None]:
        built: list[MetricReader] = []
        registry = None
        if prometheus:
            reader, registry = _prometheus_reader(prometheus_registry)
            built.append(reader)
        if otlp_metrics:
            built.append(
                PeriodicExportingMetricReader(
                    PerProcessMetricExporter(
                        lambda: _otlp_metric_exporter(
                            protocol, otlp_endpoint, otlp_headers, export_seconds
                        )
                    ),
                    export_interval_millis=None if interval is None else interval * 1000.0,
                    export_timeout_millis=export_seconds * 1000.0,
                )
            )
        return built, registry

    meter_provider, registry = _meter_provider(
        resource, readers, shutdown_seconds, metric_steps, monitor_options["max_jobs"]
    )

    monitor = JobMonitor(tracer_provider, meter_provider, **monitor_options)
    monitor._prometheus_registry = registry
    monitor._shutdown_timeout = shutdown_seconds
    steps = metric_steps + span_steps
    if steps:
        monitor._on_shutdown.append(lambda: _shutdown_within(shutdown_seconds, steps))
    atexit.register(monitor.shutdown)
    monitor._on_shutdown.append(lambda: atexit.unregister(monitor.shutdown))
    return monitor


def _environment_has(variables: tuple[str, ...]) -> bool:
    return any(os.environ.get(variable, "").strip() for variable in variables)


def _service(
    service_name: str | None, attributes: Mapping[str, str | bool | int | float] | None
) -> str:
    """The ``service.name`` the monitor will have: the global SDK provider's, if there is
    one already (it is reused), else the one `_resource` makes."""
    current = trace.get_tracer_provider()
    resource = (
        current.resource
        if isinstance(current, SdkTracerProvider)
        else _resource(service_name, attributes)
    )
    return str(resource.attributes.get(SERVICE_NAME, "unknown_service"))


def _resource(
    service_name: str | None, attributes: Mapping[str, str | bool | int | float] | None
) -> Resource:
    # Resource.create() lets the attributes it is given win over OTEL_RESOURCE_ATTRIBUTES
    # and OTEL_SERVICE_NAME; here the environment wins, and the code fills in the rest.
    from_environment = OTELResourceDetector().detect()
    defaults: dict[str, str | bool | int | float] = dict(attributes or {})
    if service_name:
        defaults[SERVICE_NAME] = service_name
    defaults.setdefault(SERVICE_INSTANCE_ID, str(uuid.uuid4()))
    return Resource.create({**defaults, **from_environment.attributes})


def _tracer_provider(resource: Resource) -> tuple[SdkTracerProvider | None, bool]:
    """The provider to use, and whether it is new (built and set global here)."""
    current = trace.get_tracer_provider()
    if isinstance(current, SdkTracerProvider):
        return current, False
    if not isinstance(current, trace.ProxyTracerProvider):
        logger.warning(
            "the global tracer provider is a %s, not the OpenTelemetry SDK's: job runs are "
            "tracked but their spans are not exported",
            type(current).__name__,
        )
        return None, False
    provider = SdkTracerProvider(
        resource=resource,
        sampler=JobAwareSampler(_get_from_env_or_default()),
        shutdown_on_exit=False,
    )
    trace.set_tracer_provider(provider)
    _built_globals.add(provider)
    return provider, True


def _one_line(span: ReadableSpan) -> str:
    # The SDK's default prints each span as about 50 lines of indented JSON.
    return str(span.to_json(indent=None)) + os.linesep


def _meter_provider(
    resource: Resource,
    readers: Callable[[], tuple[list[MetricReader], CollectorRegistry | None]],
    shutdown_seconds: float,
    steps: list[Callable[[], object]],
    max_jobs: int,
) -> tuple[metrics.MeterProvider | None, CollectorRegistry | None]:
    """The meter provider to use, and the Prometheus registry its reader writes to (if it
    has one of ours). Readers are built only for a provider built here, whose shutdown is
    added to `steps`."""
    current = metrics.get_meter_provider()
    if isinstance(current, SdkMeterProvider):
        logger.info(
            "an OpenTelemetry MeterProvider is already set; it cannot take more readers, "
            "so the job metrics go to the readers it has"
        )
        return current, None
    if not isinstance(current, _ProxyMeterProvider):
        return None, None
    built, registry = readers()
    provider = SdkMeterProvider(
        resource=resource,
        metric_readers=built,
        views=_cardinality_views(max_jobs),
        shutdown_on_exit=False,
    )
    metrics.set_meter_provider(provider)
    _built_globals.add(provider)
    steps.append(lambda: provider.shutdown(timeout_millis=shutdown_seconds * 1000.0))
    return provider, registry


def _cardinality_views(max_jobs: int) -> list[View]:
    """Room for every series of `max_jobs` jobs: the SDK folds the rest into one overflow
    series. An SDK before 1.45.2 has no cardinality limit, so there is nothing to raise."""
    if "aggregation_cardinality_limit" not in inspect.signature(View).parameters:
        return []
    return [View(meter_name=METER_NAME, aggregation_cardinality_limit=series_limit(max_jobs))]


def _prometheus_reader(
    registry: CollectorRegistry | None,
) -> tuple[MetricReader, CollectorRegistry]:
    default_registry, reader_class = _prometheus_classes()
    target = default_registry if registry is None else registry
    accepted = inspect.signature(reader_class).parameters
    options: dict[str, object] = {}
    # The exporter before 0.64b0 adds no scope labels (and has no switch for them); before
    # 0.63b0 it writes to the global registry only (_check_extras refuses another one).
    if "scope_info_enabled" in accepted:
        options["scope_info_enabled"] = False
    if "registry" in accepted:
        options["registry"] = target
    return reader_class(**options), target


def _prometheus_classes() -> tuple[CollectorRegistry, Callable[..., MetricReader]]:
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:
        raise ImportError(
            "setup(prometheus=True) needs the Prometheus exporter: "
            "pip install 'jobpulse[prometheus]' (or pass prometheus=False)"
        ) from None
    return prometheus_client.REGISTRY, PrometheusMetricReader


def _check_extras(
    *, prometheus: bool, prometheus_registry: CollectorRegistry | None, otlp_protocol: str | None
) -> None:
    """Raise the ImportError naming the extra to install before anything global is built."""
    if prometheus:
        default_registry, reader_class = _prometheus_classes()
        if (
            prometheus_registry is not None
            and prometheus_registry is not default_registry
            and "registry" not in inspect.signature(reader_class).parameters
        ):
            raise ImportError(
                "setup(prometheus_registry=...) needs opentelemetry-exporter-prometheus 0.63b0 "
                "or later (opentelemetry-sdk 1.42 or later); older ones write to "
                "prometheus_client's global registry only"
            )
    if otlp_protocol is not None:
        package = "grpc" if otlp_protocol == "grpc" else "http"
        try:
            importlib.import_module(f"opentelemetry.exporter.otlp.proto.{package}.trace_exporter")
        except ImportError:
            raise ImportError(
                "OTLP export needs the OTLP exporters: pip install 'jobpulse[otlp]'"
            ) from None
        if package == "http":
            # requests imports netrc at its first request, on an exporter thread. A process
            # that forks during that import (a Celery pool replacing a child) leaves the
            # module's import lock held in the child, whose own exports then hang on it.
            importlib.import_module("netrc")


def _http_url(endpoint: str | None, path: str) -> str | None:
    # The HTTP exporters take a full URL when given one, and append the path themselves
    # only to the endpoint they read from the environment.
    if endpoint is None:
        return None
    base = endpoint.rstrip("/")
    return base if base.endswith(path) else base + path


def _grpc_metadata(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    # gRPC rejects a metadata key with a capital letter ("Illegal header key") and the
    # exporter passes a dict through as it is, so every export would fail. Header names are
    # case-insensitive; the exporter lower-cases those it reads from the environment too.
    return {name.lower(): value for name, value in headers.items()} if headers else None


# The two builders below import what `_check_extras` has already found importable.


def _otlp_span_exporter(
    protocol: str, endpoint: str | None, headers: Mapping[str, str] | None, timeout: float
) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, headers=_grpc_metadata(headers), timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(
        endpoint=_http_url(endpoint, "/v1/traces"), headers=headers, timeout=timeout
    )


def _otlp_metric_exporter(
    protocol: str, endpoint: str | None, headers: Mapping[str, str] | None, timeout: float
) -> MetricExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(
            endpoint=endpoint, headers=_grpc_metadata(headers), timeout=timeout
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(
        endpoint=_http_url(endpoint, "/v1/metrics"), headers=headers, timeout=timeout
    )


class PerProcessSpanExporter(SpanExporter):
    """A span exporter built by `factory` in each process that uses it.

    A forked child (a Celery or gunicorn worker) inherits its parent's exporters with their
    connections: an HTTP session's keep-alive sockets, which parent and child would then
    share (each reading the other's responses), or a gRPC channel, which gRPC does not
    support across fork. In a child, the first call builds a new exporter; the parent's is
    left alone (shutting it down would close the parent's sockets).
    """

    def __init__(self, factory: Callable[[], SpanExporter]) -> None:
        self._factory = factory
        self._pid = os.getpid()
        self._delegate = factory()

    def _current(self) -> SpanExporter:
        if self._pid != os.getpid():  # pragma: no cover - runs in the child
            self._delegate, self._pid = self._factory(), os.getpid()
        return self._delegate

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._current().export(spans)

    def shutdown(self) -> None:
        if self._pid == os.getpid():  # pragma: no branch - else: a child that never exported
            self._delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._current().force_flush(timeout_millis)


class PerProcessMetricExporter(MetricExporter):
    """A metric exporter built by `factory` in each process that uses it (see
    `PerProcessSpanExporter`)."""

    def __init__(self, factory: Callable[[], MetricExporter]) -> None:
        self._factory = factory
        self._pid = os.getpid()
        self._delegate = factory()
        super().__init__(
            preferred_temporality=self._delegate._preferred_temporality,
            preferred_aggregation=self._delegate._preferred_aggregation,
        )

    def _current(self) -> MetricExporter:
        if self._pid != os.getpid():  # pragma: no cover - runs in the child
            self._delegate, self._pid = self._factory(), os.getpid()
        return self._delegate

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return self._current().export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._current().force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._pid == os.getpid():  # pragma: no branch - else: a child that never exported
            self._delegate.shutdown(timeout_millis=timeout_millis, **kwargs)


def _shutdown_within(seconds: float, steps: list[Callable[[], object]]) -> None:
    """Run `steps` in order on a daemon thread and wait at most `seconds` for all of them.

    The SDK's shutdowns ignore most timeouts (a flush to a dead collector can take 30 s);
    a daemon thread still stuck at the deadline does not hold up the process's exit.
    """

    def run() -> None:
        for step in steps:
            with _SHUTDOWN_GUARD:
                step()

    thread = threading.Thread(target=run, name="jobpulse-telemetry-shutdown", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        logger.warning(
            "telemetry exporters did not shut down within %.1f s; unsent data was dropped",
            seconds,
        )
