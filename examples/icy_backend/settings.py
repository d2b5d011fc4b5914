"""The demo's settings, read once from the environment (see the package docstring)."""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_STORE_PATH", "STORE_VARIABLE", "DemoSettings", "SettingsError"]

#: Where the demo keeps its store unless ``JOBPULSE_STORE`` says otherwise: ``.jobpulse/``
#: in the repository (the folder above ``examples/``), ignored by git.
DEFAULT_STORE_PATH = Path(__file__).resolve().parents[2] / ".jobpulse" / "icy_backend.db"
#: The variable `jobpulse.setup()` reads its store from; the demo passes it on as it is.
STORE_VARIABLE = "JOBPULSE_STORE"

_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_OTLP_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


class SettingsError(ValueError):
    """An environment variable has a value the demo cannot use; the message names it."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs with. Build it with `from_environ`."""

    index_interval_seconds: float
    host: str
    port: int
    seed: int
    failure_rate: float
    stall_every: int
    console_spans: bool
    otlp_endpoint: str | None
    #: The store's URL; None: no store (``JOBPULSE_STORE`` set and empty).
    store: str | None
    #: Whether `store` came from ``JOBPULSE_STORE`` (else it is the demo's default).
    store_from_environment: bool

    @property
    def stall_after_seconds(self) -> float:
        """Every job's ``stall_after``: two intervals, so one late run is not yet a stall."""
        return 2 * self.index_interval_seconds

    @property
    def stall_seconds(self) -> float:
        """How long a stalling run blocks: one interval past its ``stall_after``."""
        return 3 * self.index_interval_seconds

    @property
    def schedule(self) -> str:
        """The schedule every job is registered with, as the spec's cron line writes it."""
        return f"@every {self.index_interval_seconds:g}s"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DemoSettings:
        """Read the settings from `environ` (default ``os.environ``).

        Raises `SettingsError` naming the variable whose value is unusable.
        """
        env = os.environ if environ is None else environ
        seed_text = env.get("DEMO_SEED", "").strip()
        store_text = env.get(STORE_VARIABLE)
        return cls(
            index_interval_seconds=_interval(env.get("INDEX_INTERVAL", "5")),
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=_integer(env, "PORT", 8000, 0, 65535),
            seed=random.SystemRandom().randrange(2**32)
            if not seed_text
            else _integer(env, "DEMO_SEED", 0, 0, 2**63),
            failure_rate=_rate(env.get("DEMO_FAILURE_RATE", "0.1")),
            stall_every=_integer(env, "DEMO_STALL_EVERY", 4, 0, 1_000_000),
            console_spans=env.get("DEMO_CONSOLE_SPANS", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            otlp_endpoint=next(
                (env[name] for name in _OTLP_ENDPOINTS if env.get(name, "").strip()), None
            ),
            store=f"sqlite:///{DEFAULT_STORE_PATH}"
            if store_text is None
            else store_text.strip() or None,
            store_from_environment=store_text is not None,
        )


def _interval(text: str) -> float:
    """Seconds from ``5``, ``2.5``, ``1500ms``, ``5s``, ``2m`` (the spec's IndexInterval form),
    at least 1: the jobs' ``@every`` schedule takes nothing shorter."""
    match = _DURATION.fullmatch(text.strip())
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"] or "s"] if match else math.nan
    if not 1 <= seconds <= 3600:
        raise SettingsError(
            f"INDEX_INTERVAL must be seconds from 1 to 3600 (e.g. 5, 2.5, 1500ms, 2m), got {text!r}"
        )
    return seconds


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate <= 1.0:
        raise SettingsError(f"DEMO_FAILURE_RATE must be a number from 0 to 1, got {text!r}")
    return rate


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise SettingsError(f"{name} must be an integer from {low} to {high}, got {text!r}")
    return int(text)
