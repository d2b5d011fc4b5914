"""What the integrations share: which monitor they report to, and the version range check."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import jobpulse
from jobpulse import JobMonitor
from jobpulse.integrations._common import MonitorChoice, require_version, resolve_monitor
from tests.conftest import MonitorFactory, Otel


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


@pytest.mark.parametrize("integration", ["apscheduler", "celery"])
def test_import_without_packaging_names_the_extra(integration: str) -> None:
    # packaging (and what imports it) made unimportable, as in an install without the extra.
    code = (
        "import sys\n"
        "for name in ('packaging', 'packaging.version', 'packaging.requirements'):\n"
        "    sys.modules[name] = None\n"
        f"import jobpulse.integrations.{integration}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: jobpulse.integrations."), result.stderr
    assert f"pip install 'jobpulse[{integration}]'" in last
    assert "No module named 'packaging'" not in result.stderr


def test_a_monitor_choice_is_made_at_first_use_and_closes_only_its_own(otel: Otel) -> None:
    choice = MonitorChoice(None, otel.tracer_provider, otel.meter_provider)
    assert choice.peek() is None
    made = choice.get()
    assert (choice.get(), choice.owned) == (made, True)
    choice.close()
    assert made.closed
    assert choice.peek() is None
    with pytest.raises(TypeError, match=r"jobpulse\.JobMonitor"):
        MonitorChoice("monitor")  # type: ignore[arg-type]


def test_a_monitor_choice_given_a_monitor_refuses_another(
    monitor: JobMonitor, make_monitor: MonitorFactory
) -> None:
    choice = MonitorChoice(monitor)
    assert not choice.replaced_by({"monitor": monitor})
    assert not choice.replaced_by({})
    with pytest.raises(ValueError, match="another monitor"):
        choice.replaced_by({"monitor": make_monitor()})
    choice.close()
    assert not monitor.closed
    assert MonitorChoice().replaced_by({"monitor": monitor})
