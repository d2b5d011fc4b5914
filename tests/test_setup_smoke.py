from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

import jobpulse


@pytest.mark.usefixtures("otel_globals")
def test_setup_installs_providers_and_prometheus() -> None:
    registry = CollectorRegistry()
    monitor = jobpulse.setup("svc", namespace="icy", prometheus_registry=registry)
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
    with monitor.run("a"):
        pass
    assert b'icy_background_job_runs_total{job_name="a",status="success"} 1.0' in generate_latest(
        registry
    )
