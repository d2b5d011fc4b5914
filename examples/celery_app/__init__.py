"""A Celery application monitored by jobpulse: a prefork worker runs its tasks, beat sends
one of them on a schedule, and each process keeps, logs and exports its own view.

Run it from the repository root with a Redis broker (``CELERY_BROKER_URL``, default
``redis://127.0.0.1:6379/0``); set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and preferably
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``) to export::

    celery -A examples.celery_app worker --beat --loglevel=INFO   # beat embedded
    celery -A examples.celery_app worker --loglevel=INFO          # or worker and beat
    celery -A examples.celery_app beat --loglevel=INFO            #   as two programs
    celery -A examples.celery_app call export_report --kwargs '{"failure_rate": 1}'

Each process logs ``jobpulse view of <role> (pid N): {...}`` when its view changes: the
pool children count the task runs, beat counts its entry ``beat:refresh-prices``.
``EXAMPLE_BEAT_SECONDS`` (default 5) and ``EXAMPLE_VIEW_SECONDS`` (default 5) speed it up.

- `tasks`: the Celery app, its tasks and beat schedule (nothing about jobpulse);
- `monitoring`: `jobpulse.setup()` and the Celery integration, once per process, at import.
"""

from __future__ import annotations

from .monitoring import monitor
from .tasks import app

__all__ = ["app", "monitor"]
