"""What every integration shares: finding its monitor and checking the library's version."""

from __future__ import annotations

import threading
from importlib import metadata
from typing import Any

from opentelemetry import metrics, trace

from jobpulse import JobMonitor
from jobpulse._shared import setup_monitor

__all__ = ["MonitorChoice", "check_monitor", "require_version", "resolve_monitor"]


def check_monitor(monitor: object) -> JobMonitor | None:
    """`monitor` if it is a `JobMonitor` or None; `TypeError` otherwise."""
    if monitor is not None and not isinstance(monitor, JobMonitor):
        raise TypeError(f"monitor must be a jobpulse.JobMonitor, not {type(monitor).__name__}")
    return monitor


def resolve_monitor(
    monitor: JobMonitor | None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> JobMonitor:
    """The monitor an integration reports to: the one given, else the open monitor of
    `jobpulse.setup()`, else a new `JobMonitor` on the given (or global) providers."""
    given = check_monitor(monitor)
    if given is not None:
        return given
    return setup_monitor() or JobMonitor(tracer_provider, meter_provider)


class MonitorChoice:
    """Which monitor an instrumentor reports to, chosen at first use (`get`), not when it
    is instrumented: the monitor given, else `jobpulse.setup()`'s if one is open by then,
    else a new `JobMonitor` on the given providers, which this choice owns: `close` shuts
    it down (and only it). Thread-safe."""

    def __init__(
        self,
        monitor: JobMonitor | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.given = check_monitor(monitor)
        self._providers = (tracer_provider, meter_provider)
        self._lock = threading.Lock()
        self._monitor = self.given
        self._owned = False

    @classmethod
    def of(cls, options: dict[str, Any]) -> MonitorChoice:
        """The choice that an instrumentor's ``instrument(**options)`` asks for."""
        return cls(
            options.get("monitor"), options.get("tracer_provider"), options.get("meter_provider")
        )

    def get(self) -> JobMonitor:
        """The monitor, chosen now if it was not yet."""
        monitor = self._monitor
        if monitor is not None:
            return monitor
        with self._lock:
            if self._monitor is None:
                found = setup_monitor()
                self._owned = found is None
                self._monitor = found or JobMonitor(*self._providers)
            return self._monitor

    def peek(self) -> JobMonitor | None:
        """The monitor if it was chosen, else None (nothing is chosen here)."""
        return self._monitor

    @property
    def owned(self) -> bool:
        """True when the chosen monitor was made by this choice."""
        return self._owned

    def replaced_by(self, options: dict[str, Any]) -> bool:
        """Whether ``instrument(**options)`` on an instrumentor already instrumented with this
        choice switches it to another monitor: a monitor is passed, it is not this one, and
        this choice was not given one (e.g. ``opentelemetry-instrument`` instrumented it).

        Raises:
            TypeError: ``options["monitor"]`` is not a `JobMonitor`.
            ValueError: this choice was given another monitor.
        """
        monitor = check_monitor(options.get("monitor"))
        if monitor is None or monitor is self.given:
            return False
        if self.given is not None:
            raise ValueError("already instrumented with another monitor: call uninstrument() first")
        return True

    def close(self) -> None:
        """Shut down the monitor if this choice made it; nothing is chosen any more."""
        with self._lock:
            monitor, owned = self._monitor, self._owned
            self._monitor, self._owned = self.given, False
        if owned and monitor is not None:
            monitor.shutdown()


def require_version(distribution: str, minimum: str, below: str, extra: str) -> str:
    """Check that the installed `distribution` is in ``[minimum, below)`` and return its
    version; raise `ImportError` naming the supported range, or the extra to install when it
    or ``packaging`` is missing, otherwise. Pre-releases of `below` (e.g. 4.0.0a6 for
    ``below="4"``) are outside the range."""
    install = f"pip install 'jobpulse[{extra}]'"
    try:
        found = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"jobpulse.integrations.{extra} needs {distribution}: {install}"
        ) from None
    try:
        from packaging.version import Version
    except ImportError:
        raise ImportError(f"jobpulse.integrations.{extra} needs packaging: {install}") from None
    version = Version(found)
    if not Version(minimum) <= version < Version(below + ".dev0"):
        raise ImportError(
            f"jobpulse.integrations.{extra} supports {distribution} >={minimum},<{below}; "
            f"{found} is installed. {install} installs a supported one."
        )
    return found
