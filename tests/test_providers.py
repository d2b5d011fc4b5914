"""Which OpenTelemetry providers the monitor uses, and sampling that never hides a run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.util._once import Once

import jobpulse
from jobpulse import JobAwareSampler, JobMonitor
from tests.conftest import Otel


@pytest.fixture
def clean_globals() -> Iterator[None]:
    """Restore OpenTelemetry's global providers (test-only: the API sets them once)."""
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    internal = metrics._internal
    saved_metrics = (
        internal._METER_PROVIDER,
        internal._METER_PROVIDER_SET_ONCE,
        internal._PROXY_METER_PROVIDER,
    )
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    internal._METER_PROVIDER = None
    internal._METER_PROVIDER_SET_ONCE = Once()
    # A fresh proxy: the one before holds the proxy meters of earlier tests' monitors, which
    # setting a provider here would bind first (their instruments then take the names).
    internal._PROXY_METER_PROVIDER = internal._ProxyMeterProvider()
    yield
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
    (
        internal._METER_PROVIDER,
        internal._METER_PROVIDER_SET_ONCE,
        internal._PROXY_METER_PROVIDER,
    ) = saved_metrics


def _run_jobs(monitor: JobMonitor, count: int) -> None:
    @monitor.job("sampled")
    def job() -> None:
        pass

    for _ in range(count):
        job()


def test_sampling_never_hides_a_run(otel: Otel) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=TraceIdRatioBased(0), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monitor = JobMonitor(provider, otel.meter_provider)
    try:
        _run_jobs(monitor, 25)
        status = monitor.status("sampled")
        assert status is not None
        assert status.success_count == 25
        assert exporter.get_finished_spans() == ()
        runs = otel.metrics()["background_job.runs"]
        assert runs[(("job.name", "sampled"), ("status", "success"))] == 25
        assert isinstance(provider.sampler, JobAwareSampler)
        assert "TraceIdRatioBased" in provider.sampler.get_description()
        # spans without job.name keep the user's sampling decision
        span = provider.get_tracer("app").start_span("other")
        assert not span.is_recording()
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_unsampled_parent_does_not_hide_a_run(otel: Otel) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF), shutdown_on_exit=False)
    monitor = JobMonitor(provider, otel.meter_provider)
    try:
        with provider.get_tracer("app").start_as_current_span("request"):
            _run_jobs(monitor, 2)
        assert monitor.status("sampled").success_count == 2  # type: ignore[union-attr]
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_wrapping_is_done_once_per_provider(otel: Otel) -> None:
    first = JobMonitor(otel.tracer_provider, otel.meter_provider)
    second = JobMonitor(otel.tracer_provider, otel.meter_provider)
    try:
        sampler = otel.tracer_provider.sampler
        assert isinstance(sampler, JobAwareSampler)
        assert not isinstance(sampler.delegate, JobAwareSampler)
    finally:
        first.shutdown()
        second.shutdown()


def test_a_tracer_made_before_wrapping_is_fixed(otel: Otel) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    early = provider.get_tracer("jobpulse", jobpulse.__version__)
    monitor = JobMonitor(provider, otel.meter_provider)
    try:
        # An SDK that caches its tracers (1.45) gives jobpulse the tracer made early, whose
        # sampler must be fixed; an older one (1.30) makes jobpulse a new one, wrapped.
        caches = provider.get_tracer("probe") is provider.get_tracer("probe")
        assert (monitor._tracer is early) is caches
        assert isinstance(monitor._tracer.sampler, JobAwareSampler)  # type: ignore[attr-defined]
        _run_jobs(monitor, 1)
        assert monitor.status("sampled").success_count == 1  # type: ignore[union-attr]
    finally:
        monitor.shutdown()
        provider.shutdown()


def test_global_sdk_provider_is_used(clean_globals: None) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    metrics.set_meter_provider(meter_provider)
    monitor = JobMonitor()
    try:
        _run_jobs(monitor, 3)
        assert len(exporter.get_finished_spans()) == 3
        assert monitor.status("sampled").success_count == 3  # type: ignore[union-attr]
        assert reader.get_metrics_data() is not None
    finally:
        monitor.shutdown()
        provider.shutdown()
        meter_provider.shutdown()


def test_without_opentelemetry_status_tracking_still_works(clean_globals: None) -> None:
    proxy = trace.get_tracer_provider()
    monitor = JobMonitor()
    try:
        _run_jobs(monitor, 4)
        assert monitor.status("sampled").success_count == 4  # type: ignore[union-attr]
        # nothing global was created or replaced
        assert trace.get_tracer_provider() is proxy
        assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    finally:
        monitor.shutdown()


def test_sdk_disabled_falls_back_to_a_private_provider(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = InMemorySpanExporter()
    disabled = TracerProvider(shutdown_on_exit=False)
    disabled.add_span_processor(SimpleSpanProcessor(exporter))
    monitor = JobMonitor(disabled, otel.meter_provider)
    try:
        _run_jobs(monitor, 2)
        assert monitor.status("sampled").success_count == 2  # type: ignore[union-attr]
        assert exporter.get_finished_spans() == ()
    finally:
        monitor.shutdown()
        disabled.shutdown()


def test_a_non_sdk_provider_is_refused(otel: Otel) -> None:
    with pytest.raises(TypeError, match=r"opentelemetry\.sdk\.trace\.TracerProvider"):
        JobMonitor(trace.NoOpTracerProvider(), otel.meter_provider)
