"""What every integration shares: finding its monitor and checking the library's version."""

from __future__ import annotations

from importlib import metadata

from opentelemetry import metrics, trace
from packaging.version import Version

from jobpulse import _setup
from jobpulse._monitor import JobMonitor

__all__ = ["require_version", "resolve_monitor"]


def resolve_monitor(
    monitor: JobMonitor | None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> JobMonitor:
    """The monitor an integration reports to: the one given, else the open monitor of
    `jobpulse.setup()`, else a new `JobMonitor` on the given (or global) providers."""
    if monitor is not None:
        if not isinstance(monitor, JobMonitor):
            raise TypeError(f"monitor must be a jobpulse.JobMonitor, not {type(monitor).__name__}")
        return monitor
    active = _setup._active
    if active is not None and not active.closed:
        return active
    return JobMonitor(tracer_provider, meter_provider)


def require_version(distribution: str, minimum: str, below: str, extra: str) -> str:
    """Check that the installed `distribution` is in ``[minimum, below)`` and return its
    version; raise `ImportError` naming the supported range otherwise. Pre-releases of
    `below` (e.g. 4.0.0a6 for ``below="4"``) are outside the range."""
    try:
        found = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"jobpulse.integrations.{extra} needs {distribution}: pip install 'jobpulse[{extra}]'"
        ) from None
    version = Version(found)
    if not Version(minimum) <= version < Version(below + ".dev0"):
        raise ImportError(
            f"jobpulse.integrations.{extra} supports {distribution} >={minimum},<{below}; "
            f"{found} is installed. pip install 'jobpulse[{extra}]' installs a supported one."
        )
    return found
