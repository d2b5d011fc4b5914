"""What the integrations share: which monitor they report to, and the version range check."""

from __future__ import annotations

from importlib import metadata

import pytest

import jobpulse
from jobpulse import JobMonitor
from jobpulse.integrations._common import require_version, resolve_monitor
from tests.conftest import Otel


@pytest.fixture
def versions(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    installed: dict[str, str] = {}

    def version(distribution: str) -> str:
        if distribution not in installed:
            raise metadata.PackageNotFoundError(distribution)
        return installed[distribution]

    monkeypatch.setattr(metadata, "version", version)
    return installed


def test_resolve_monitor_prefers_the_given_one(monitor: JobMonitor) -> None:
    assert resolve_monitor(monitor) is monitor
    with pytest.raises(TypeError, match=r"jobpulse\.JobMonitor"):
        resolve_monitor("monitor")  # type: ignore[arg-type]


@pytest.mark.usefixtures("otel_globals")
def test_resolve_monitor_uses_the_open_setup_monitor() -> None:
    active = jobpulse.setup(service_name="svc", prometheus=False)
    assert resolve_monitor(None) is active
    active.shutdown()
    fresh = resolve_monitor(None)
    try:
        assert fresh is not active
    finally:
        fresh.shutdown()


def test_resolve_monitor_builds_one_on_the_given_providers(otel: Otel) -> None:
    built = resolve_monitor(None, otel.tracer_provider, otel.meter_provider)
    try:
        with built.run("job"):
            pass
        assert [span.name for span in otel.spans()] == ["job"]
    finally:
        built.shutdown()


@pytest.mark.parametrize("found", ["3.10.0", "3.11.3", "3.99"])
def test_require_version_accepts_the_range(versions: dict[str, str], found: str) -> None:
    versions["apscheduler"] = found
    assert require_version("apscheduler", "3.10", "4", "apscheduler") == found


@pytest.mark.parametrize("found", ["3.9.1", "4.0.0a6", "4.0.0", "5.1"])
def test_require_version_refuses_outside_the_range(versions: dict[str, str], found: str) -> None:
    versions["apscheduler"] = found
    with pytest.raises(ImportError, match=rf">=3.10,<4; {found} is installed"):
        require_version("apscheduler", "3.10", "4", "apscheduler")


def test_require_version_names_the_extra_when_missing(versions: dict[str, str]) -> None:
    with pytest.raises(ImportError, match=r"pip install 'jobpulse\[celery\]'"):
        require_version("celery", "5.3", "6", "celery")
