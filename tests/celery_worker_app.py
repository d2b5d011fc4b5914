"""What ``celery -A tests.celery_worker_app worker`` loads in the prefork tests: the test
tasks, `jobpulse.setup()` exporting over OTLP/HTTP to ``JOBPULSE_TEST_OTLP``, and the Celery
integration. The pool's children are forked from the process that ran this (OTLP/gRPC is not
used: a child forked while the parent's exporter is in a gRPC call can crash)."""

from __future__ import annotations

import os

import jobpulse
from jobpulse.integrations.celery import CeleryJobInstrumentor
from tests.celery_app import app

__all__ = ["app", "monitor"]

monitor = jobpulse.setup(
    service_name="celery-prefork-test",
    prometheus=False,
    otlp_endpoint=os.environ["JOBPULSE_TEST_OTLP"],
    otlp_protocol="http/protobuf",
    metric_export_interval=0.5,
)
CeleryJobInstrumentor().instrument(monitor=monitor)
