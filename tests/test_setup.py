"""setup(): what it builds, what it reuses, the environment it honours, and its shutdown."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import threading

import prometheus_client
import pytest
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry, generate_latest

import jobpulse
from jobpulse import InvalidJobError, JobAwareSampler
from jobpulse._setup import _shutdown_within

pytestmark = pytest.mark.usefixtures("otel_globals")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
    ):
        monkeypatch.delenv(variable, raising=False)


def resource_attributes() -> dict[str, object]:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    return dict(provider.resource.attributes)


#: The Prometheus exporter writes to a registry other than the global one from 0.63b0; the
#: run on the lowest opentelemetry-sdk (1.30, exporter 0.51b0) has only the global one.
OWN_REGISTRY = "registry" in inspect.signature(PrometheusMetricReader).parameters


def a_registry() -> CollectorRegistry:
    """A registry of the test's own, or the global one where the exporter has no other."""
    return CollectorRegistry() if OWN_REGISTRY else prometheus_client.REGISTRY


def test_builds_global_providers_with_the_prometheus_reader() -> None:
    registry = a_registry()
    monitor = jobpulse.setup("icy-backend", namespace="icy_backend", prometheus_registry=registry)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert isinstance(provider.sampler, JobAwareSampler)
    assert isinstance(metrics.get_meter_provider(), MeterProvider)
    assert monitor._prometheus_registry is registry

    with monitor.run("btc_transaction_indexing"):
        pass
    exposition = generate_latest(registry).decode()
    assert (
        'icy_backend_background_job_runs_total{job_name="btc_transaction_indexing",'
        'status="success"} 1.0' in exposition
    )
    assert "otel_scope_name" not in exposition  # no scope labels on every series
    assert 'service_name="icy-backend"' in exposition  # target_info carries the resource
    assert monitor.status("btc_transaction_indexing") is not None


def test_every_state_series_of_max_jobs_jobs_fits_without_overflow() -> None:
    # 6 states x 400 jobs = 2400 series: past the SDK's default limit of 2000 per instrument.
    # (An SDK before 1.45.2 has no limit at all: setup() sets none, and nothing overflows.)
    registry = a_registry()
    monitor = jobpulse.setup("many", namespace="many", max_jobs=400, prometheus_registry=registry)
    for number in range(400):
        monitor.register(f"job_{number}")
    exposition = generate_latest(registry).decode()
    assert exposition.count("many_background_job_state{") == 6 * 400
    assert "overflow" not in exposition


def test_a_registry_of_its_own_needs_an_exporter_that_writes_to_one() -> None:
    registry = CollectorRegistry()
    if OWN_REGISTRY:
        monitor = jobpulse.setup("own", prometheus_registry=registry)
        assert monitor._prometheus_registry is registry
        return
    with pytest.raises(ImportError, match=r"opentelemetry-exporter-prometheus 0\.63b0 or later"):
        jobpulse.setup("own", prometheus_registry=registry)
    # Refused before anything global was built.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)


def test_resource_from_the_argument_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = jobpulse.setup("from-code", prometheus=False, resource_attributes={"team": "core"})
    first = resource_attributes()
    assert first["service.name"] == "from-code"
    assert first["team"] == "core"
    instance = first["service.instance.id"]
    assert isinstance(instance, str)
    assert len(instance) == 36
    monitor.shutdown()

    from tests.conftest import _reset_otel_globals

    _reset_otel_globals()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=ops")
    jobpulse.setup("from-code", prometheus=False, resource_attributes={"team": "core"})
    second = resource_attributes()
    assert second["service.name"] == "from-env"  # operators rename without a code change
    assert second["deployment.environment"] == "prod"
    assert second["team"] == "ops"
    assert second["service.instance.id"] != instance  # one per process start


def test_service_instance_id_from_the_environment_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=worker-7")
    jobpulse.setup(prometheus=False)
    attributes = resource_attributes()
    assert attributes["service.instance.id"] == "worker-7"
    assert str(attributes["service.name"]).startswith("unknown_service")


def test_sdk_disabled_configures_nothing_but_tracks_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monitor = jobpulse.setup("svc", otlp_endpoint="http://127.0.0.1:1", console=True)
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    assert monitor._prometheus_registry is None
    with monitor.run("job"):
        pass
    status = monitor.status("job")
    assert status is not None
    assert status.success_count == 1


def test_reuses_the_providers_an_app_already_has(caplog: pytest.LogCaptureFixture) -> None:
    app_tracer_provider = TracerProvider(shutdown_on_exit=False)
    app_meter_provider = MeterProvider(shutdown_on_exit=False)
    trace.set_tracer_provider(app_tracer_provider)
    metrics.set_meter_provider(app_meter_provider)
    with caplog.at_level(logging.INFO, logger="jobpulse"):
        monitor = jobpulse.setup("svc")
    assert trace.get_tracer_provider() is app_tracer_provider
    assert metrics.get_meter_provider() is app_meter_provider
    assert isinstance(app_tracer_provider.sampler, JobAwareSampler)
    assert monitor._prometheus_registry is None  # /metrics then serves the default registry
    assert "cannot take more readers" in caplog.text
    with monitor.run("job"):
        pass
    assert monitor.status("job") is not None
    monitor.shutdown()
    # The app's providers are the app's: still working after the monitor is gone.
    assert app_tracer_provider.get_tracer("app").start_span("after").is_recording()
    app_tracer_provider.shutdown()
    app_meter_provider.shutdown()


def test_console_spans_on_the_app_provider_are_closed_with_the_monitor(
    capfd: pytest.CaptureFixture[str],
) -> None:
    app_tracer_provider = TracerProvider(shutdown_on_exit=False)
    trace.set_tracer_provider(app_tracer_provider)
    monitor = jobpulse.setup("svc", prometheus=False, console=True)
    with monitor.run("printed_job"):
        pass
    monitor.shutdown()  # flushes the batch processor it added
    printed = capfd.readouterr().out.splitlines()
    assert len(printed) == 1  # one line per span
    assert json.loads(printed[0])["attributes"]["job.name"] == "printed_job"
    with app_tracer_provider.get_tracer("app").start_as_current_span("not printed"):
        pass
    assert "not printed" not in capfd.readouterr().out
    app_tracer_provider.shutdown()


def test_a_foreign_global_tracer_provider_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    trace.set_tracer_provider(NoOpTracerProvider())
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        monitor = jobpulse.setup("svc", prometheus=False, console=True)
    assert "not the OpenTelemetry SDK's" in caplog.text
    assert isinstance(trace.get_tracer_provider(), NoOpTracerProvider)
    with monitor.run("job"):
        pass
    status = monitor.status("job")
    assert status is not None
    assert status.success_count == 1


def test_default_registry_and_its_release_at_shutdown() -> None:
    monitor = jobpulse.setup("svc", namespace="default_registry_test")
    assert monitor._prometheus_registry is prometheus_client.REGISTRY
    with monitor.run("job"):
        pass
    assert b"default_registry_test_background_job_runs_total" in generate_latest()
    monitor.shutdown()
    assert b"default_registry_test_background_job_runs_total" not in generate_latest()


def test_setup_twice_is_refused_until_the_first_monitor_is_shut_down() -> None:
    first = jobpulse.setup("svc", prometheus=False)
    with pytest.raises(RuntimeError, match="already called"):
        jobpulse.setup("svc", prometheus=False)
    first.shutdown()
    assert first.closed
    # Its global providers are shut down and cannot be replaced: refused, not silently dead.
    with pytest.raises(RuntimeError, match="once per process"):
        jobpulse.setup("svc", prometheus=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"otlp_protocol": "http/json"}, "otlp_protocol must be one of"),
        ({"export_timeout": -1}, "export_timeout"),
        ({"shutdown_timeout": "2 seconds"}, "shutdown_timeout"),
        ({"metric_export_interval": 0}, "metric_export_interval"),
        ({"namespace": "icy-backend"}, "namespace"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_built(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        jobpulse.setup("svc", **options)  # type: ignore[arg-type]
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_unknown_protocol_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(InvalidJobError, match="'http/json'"):
        jobpulse.setup("svc")


def test_missing_extras_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    with pytest.raises(ImportError, match=r"pip install 'jobpulse\[prometheus\]'"):
        jobpulse.setup("svc")
    for module in (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ):
        monkeypatch.setitem(sys.modules, module, None)
    for protocol in ("grpc", "http/protobuf"):
        with pytest.raises(ImportError, match=r"pip install 'jobpulse\[otlp\]'"):
            jobpulse.setup(
                "svc", prometheus=False, otlp_endpoint="http://127.0.0.1:1", otlp_protocol=protocol
            )


def test_shutdown_waits_at_most_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    done: list[str] = []
    with caplog.at_level(logging.WARNING, logger="jobpulse"):
        _shutdown_within(0.05, [release.wait, lambda: done.append("second")])
    assert "did not shut down within 0.1 s" in caplog.text
    assert done == []
    release.set()
    _shutdown_within(5.0, [lambda: done.append("quick")])
    assert "quick" in done


def test_a_foreign_global_meter_provider_is_left_alone() -> None:
    foreign = NoOpMeterProvider()
    metrics.set_meter_provider(foreign)
    monitor = jobpulse.setup("svc")
    assert metrics.get_meter_provider() is foreign
    assert monitor._prometheus_registry is None
    with monitor.run("job"):
        pass
    assert monitor.status("job") is not None
