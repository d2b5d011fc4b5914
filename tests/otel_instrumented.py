"""Runs a script as ``__main__`` (``python tests/otel_instrumented.py SCRIPT [ARG...]``), meant
to be started by ``opentelemetry-instrument``, then prints every `JobMonitor` of the process
(made while the script ran, or before it by an instrumentor) as one line,
``jobpulse monitors: [{"closed": ..., "jobs": {...}}, ...]``, each job with its run, skipped and
missed counts. Tests read that line to check that the process had one monitor and that it
saw every job."""

from __future__ import annotations

import gc
import json
import runpy
import sys
from typing import Any

from jobpulse import JobMonitor

MARKER = "jobpulse monitors: "

made: list[JobMonitor] = []
_original_init = JobMonitor.__init__


def _recording_init(self: JobMonitor, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    made.append(self)


def describe(monitor: JobMonitor) -> dict[str, Any]:
    return {
        "closed": monitor.closed,
        "jobs": {
            name: {
                "success_count": status.success_count,
                "failure_count": status.failure_count,
                "skipped_count": status.skipped_count,
                "missed_count": status.missed_count,
            }
            for name, status in monitor.statuses().items()
        },
    }


def main() -> None:
    script, *arguments = sys.argv[1:]
    JobMonitor.__init__ = _recording_init  # type: ignore[method-assign]
    sys.argv = [script, *arguments]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        # Monitors made before this ran (by opentelemetry-instrument's instrumentors) are
        # still referenced by what made them.
        alive = [obj for obj in gc.get_objects() if isinstance(obj, JobMonitor)]
        unique = list(dict.fromkeys([*made, *alive]))
        print(MARKER + json.dumps([describe(monitor) for monitor in unique]), flush=True)


if __name__ == "__main__":
    main()
