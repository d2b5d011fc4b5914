"""jobpulse in the example: set up once per process at import, the Celery integration, and a
log line each time a process's view of its jobs changes.

Every Celery process (the worker, each prefork pool child, beat) imports this module or is
forked from one that did, so each has the monitor made here. Setting it up at import, before
the pool forks, is what the integration asks for: a forked child restarts jobpulse's threads
and builds its own OTLP exporters at its first export, and the integration resets its per-run
state at ``worker_process_init`` and flushes the child's monitor at
``worker_process_shutdown``. Nothing has to be set up again in ``worker_process_init``.

Without a store, a status view lives in the memory of the process that keeps it: the pool
child that ran a task counts the run, and beat's view has one job ``beat:<entry>`` per
schedule entry. So each process logs its own view (`ViewLog`); exported over OTLP, each
process's spans and metrics carry a ``service.instance.id`` of their own. With a store
(``JOBPULSE_STORE``, which `jobpulse.setup()` reads), every process's view is the
deployment's, and the web app (`web`) serves it: the service name below is what puts every
process's keys in one place, so all of them (and the web app) set jobpulse up here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import signals

import jobpulse
from jobpulse.integrations.celery import CeleryJobInstrumentor

__all__ = [
    "BEAT_GRACE_SECONDS",
    "VIEW_FIELDS",
    "VIEW_SECONDS",
    "ViewLog",
    "monitor",
    "view_log",
    "view_of",
]

logger = logging.getLogger(__name__)

#: How long a task sent by beat may wait in the queue before its slot counts as missed.
#: jobpulse's default is 10% of the entry's period (at least 1 s): too tight for a queue
#: that a busy or starting worker drains a few seconds late.
BEAT_GRACE_SECONDS = 10.0
#: Seconds between two looks at this process's view (a line is logged only on a change).
VIEW_SECONDS = float(os.environ.get("EXAMPLE_VIEW_SECONDS", "5"))
#: What the log line shows of each job (the health document's field names).
VIEW_FIELDS = ("status", "success_count", "failure_count", "missed_count", "last_error_category")

# OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT and the other OTEL_* variables apply.
monitor = jobpulse.setup(service_name="celery-example", prometheus=False)
CeleryJobInstrumentor().instrument(monitor=monitor, beat_grace=BEAT_GRACE_SECONDS)


def view_of(monitor: jobpulse.JobMonitor) -> dict[str, Any]:
    """The overall health and, for each job, its `VIEW_FIELDS`."""
    report = monitor.health()
    jobs = {name: status.to_dict() for name, status in report.jobs.items()}
    return {
        "health": report.status.value,
        "jobs": {name: {key: job[key] for key in VIEW_FIELDS} for name, job in jobs.items()},
    }


class ViewLog:
    """Logs ``jobpulse view of <role> (pid N): <JSON of view_of()>`` at INFO whenever the view
    of this process changes (looked at every `interval` seconds), until the monitor closes.

    Threads do not survive ``fork()``: `start` is called in each process (by the signal
    handlers below) and starts one daemon thread per process.
    """

    def __init__(self, monitor: jobpulse.JobMonitor, interval: float) -> None:
        self._monitor = monitor
        self._interval = interval
        self._pid: int | None = None  # the process whose thread is running

    def start(self, role: str) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        thread = threading.Thread(
            target=self._run, args=(role,), name="example-view-log", daemon=True
        )
        thread.start()

    def _run(self, role: str) -> None:
        last: dict[str, Any] | None = None
        while not self._monitor.closed:
            view = view_of(self._monitor)
            if view["jobs"] and view != last:
                text = json.dumps(view, separators=(",", ":"))
                logger.info("jobpulse view of %s (pid %d): %s", role, os.getpid(), text)
                last = view
            time.sleep(self._interval)


view_log = ViewLog(monitor, VIEW_SECONDS)


def _start_view_log(role: str) -> Callable[..., None]:
    def handler(**kwargs: Any) -> None:
        view_log.start(role)

    return handler


# The worker's own process (it runs the tasks with ``--pool=solo`` or ``threads``; with the
# prefork pool it records only what its children cannot: time limits, lost children).
signals.worker_ready.connect(_start_view_log("worker"), weak=False)
signals.worker_process_init.connect(_start_view_log("worker-child"), weak=False)
# ``celery beat``, or the beat process that ``worker --beat`` forks.
signals.beat_init.connect(_start_view_log("beat"), weak=False)
