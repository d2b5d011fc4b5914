"""collector-config/otel-collector.yaml, checked for structure (no collector binary here):
every component a pipeline names is defined and every defined one is used, processors are in
a safe order, traces reach Jaeger and metrics the Prometheus exporter, and everything listens
where other containers reach it. Its agreement with prometheus.yml and docker-compose.yml
is checked in tests/test_compose.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector-config"
COLLECTOR_CONFIG = CONFIG_DIR / "otel-collector.yaml"
PIPELINE_KINDS = ("receivers", "processors", "exporters")
# Processor types that sample or filter data away: job spans must all reach Jaeger.
DROPPING_PROCESSORS = {"filter", "probabilistic_sampler", "tail_sampling"}

Config = dict[str, Any]


def _load(path: Path) -> Config:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _component_type(name: str) -> str:
    """``otlp/jaeger`` -> ``otlp``: the part before the slash names the component type."""
    return name.split("/", 1)[0]


def _pipelines(config: Config) -> dict[str, Config]:
    pipelines: dict[str, Config] = config["service"]["pipelines"]
    return pipelines


def _defined(config: Config, kind: str) -> set[str]:
    return set(config.get(kind) or {})


def _used(config: Config, kind: str) -> set[str]:
    if kind == "extensions":
        return set(config["service"].get("extensions") or [])
    return {name for pipeline in _pipelines(config).values() for name in pipeline.get(kind, [])}


def component_problems(config: Config) -> list[str]:
    """What the collector would reject (a name used but not defined) or what would sit there
    for nothing (a component defined but never used), as messages; empty when consistent."""
    problems = []
    for kind in (*PIPELINE_KINDS, "extensions"):
        defined, used = _defined(config, kind), _used(config, kind)
        problems += [f"{kind[:-1]} {name!r} is used but not defined" for name in used - defined]
        problems += [f"{kind[:-1]} {name!r} is defined but unused" for name in defined - used]
    return sorted(problems)


def _exporters_of(config: Config, signal: str) -> dict[str, Config]:
    names: list[str] = _pipelines(config)[signal]["exporters"]
    return {name: config["exporters"][name] for name in names}


@pytest.fixture
def config() -> Config:
    return _load(COLLECTOR_CONFIG)


def test_components_are_defined_and_used(config: Config) -> None:
    assert component_problems(config) == []


def test_undefined_and_unused_components_are_reported(config: Config) -> None:
    _pipelines(config)["traces"]["exporters"] = ["otlp/missing"]

    assert component_problems(config) == [
        "exporter 'otlp/jaeger' is defined but unused",
        "exporter 'otlp/missing' is used but not defined",
    ]


def test_the_expected_pipelines_exist(config: Config) -> None:
    assert set(_pipelines(config)) == {"traces", "metrics"}
    for pipeline in _pipelines(config).values():
        assert pipeline["receivers"] == ["otlp"]


@pytest.mark.parametrize("signal", ["traces", "metrics"])
def test_memory_limiter_first_batch_last_nothing_dropped(config: Config, signal: str) -> None:
    processors: list[str] = _pipelines(config)[signal]["processors"]

    assert _component_type(processors[0]) == "memory_limiter"
    assert _component_type(processors[-1]) == "batch"
    assert {_component_type(name) for name in processors} & DROPPING_PROCESSORS == set()


def test_memory_limiter_is_configured(config: Config) -> None:
    limiter = config["processors"]["memory_limiter"]
    assert {"check_interval", "limit_percentage", "spike_limit_percentage"} <= set(limiter)
    assert limiter["spike_limit_percentage"] < limiter["limit_percentage"] <= 90


def test_receivers_listen_on_all_interfaces(config: Config) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_traces_go_to_jaeger_over_otlp(config: Config) -> None:
    (jaeger,) = [
        exporter
        for name, exporter in _exporters_of(config, "traces").items()
        if _component_type(name) == "otlp" and exporter["endpoint"] == "jaeger:4317"
    ]
    assert jaeger["tls"]["insecure"] is True
    assert jaeger["sending_queue"]["enabled"] is True
    assert jaeger["retry_on_failure"]["enabled"] is True


def test_metrics_go_to_the_prometheus_exporter(config: Config) -> None:
    (name, exporter), *others = _exporters_of(config, "metrics").items()
    assert (_component_type(name), others) == ("prometheus", [])
    assert exporter["resource_to_telemetry_conversion"]["enabled"] is False
    assert exporter["enable_open_metrics"] is True
    assert "metric_expiration" in exporter


# That the exporter and telemetry ports are the ones prometheus.yml scrapes is checked with
# the rest of the files' agreement in tests/test_compose.py (collector_problems).


def test_telemetry_is_served_on_all_interfaces(config: Config) -> None:
    telemetry = config["service"]["telemetry"]["metrics"]
    (reader,) = telemetry["readers"]
    prometheus = reader["pull"]["exporter"]["prometheus"]

    assert telemetry["level"] in ("basic", "normal")
    assert prometheus["host"] == "0.0.0.0"


def test_health_check_listens_on_all_interfaces(config: Config) -> None:
    assert config["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
