"""jobpulse in one file: jobs run, one fails, one stalls, one misses its schedule; then the
health document.

Run with ``python examples/quickstart.py`` (after ``make install``, ``.venv/bin/python
examples/quickstart.py``). Takes about two seconds and serves nothing: ``make demo`` runs the
demo service (examples/icy_backend), ``examples/quickstart_app.py`` is the README's app.
Its Prometheus reader's ``registry`` and ``scope_info_enabled`` arguments need
opentelemetry-exporter-prometheus 0.64b0 or later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from datetime import timedelta

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

import jobpulse

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

# The application's own OpenTelemetry setup; jobpulse adds its span processor to it.
resource = Resource.create({"service.name": "icy-backend"})
tracer_provider = TracerProvider(resource=resource)
metrics_registry = CollectorRegistry()
meter_provider = MeterProvider(
    resource=resource,
    metric_readers=[
        PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=metrics_registry
        )
    ],
)

monitor = jobpulse.JobMonitor(
    tracer_provider, meter_provider, namespace="icy_backend", stall_after=1.0
)


@monitor.job("btc_transaction_indexing", critical=True, timeout=5, schedule="@every 2m")
def index_btc_transactions() -> int:
    """Index new BTC transactions; returns how many."""
    time.sleep(0.05)
    jobpulse.set_metadata(indexed=42, last_block=871_234)
    return 42


@monitor.job("swap_request_processing", critical=True, failure_threshold=3)
def process_swap_requests() -> None:
    raise ConnectionError("swap API at https://svc:hunter2@swap.internal refused the connection")


@monitor.job("icy_transaction_indexing", stall_after=0.5)
def index_icy_transactions(release: threading.Event) -> None:
    release.wait()  # hangs until released: the watchdog flags it stalled after 0.5 s


# Expected every second; nothing runs it, so 0.1 s after the first second it is missed.
monitor.register("settlement_export", schedule="@every 1s", grace=timedelta(milliseconds=100))


def show(title: str) -> None:
    report = monitor.health()
    print(f"\n--- {title}: {report.status} (HTTP {report.http_status}) ---")
    print(json.dumps(report.to_dict(), indent=2))


def main() -> None:
    monitor.set_pending("btc", 12)
    for _ in range(3):
        index_btc_transactions()
    for _ in range(2):
        # the job's own error reaches its caller unchanged; jobpulse recorded it
        with contextlib.suppress(ConnectionError):
            process_swap_requests()

    release = threading.Event()
    hanging = threading.Thread(target=index_icy_transactions, args=(release,), daemon=True)
    hanging.start()
    try:
        time.sleep(1.5)
        show("while icy_transaction_indexing hangs and settlement_export is overdue")
    finally:
        release.set()
    hanging.join()
    show("after it finished")

    print("\n--- Prometheus exposition (what GET /metrics serves) ---")
    for line in generate_latest(metrics_registry).decode().splitlines():
        if line.startswith("icy_backend_") and "_bucket" not in line:
            print(line)

    print("\n--- run history of btc_transaction_indexing, newest first ---")
    for record in monitor.history("btc_transaction_indexing"):
        print(json.dumps(record.to_dict()))

    monitor.shutdown()
    tracer_provider.shutdown()
    meter_provider.shutdown()


if __name__ == "__main__":
    main()
