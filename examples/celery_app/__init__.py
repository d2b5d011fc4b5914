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

With a store, the one place to set it is ``JOBPULSE_STORE`` (read by `jobpulse.setup()`), the
same in every process, e.g. ``redis://127.0.0.1:6379/1`` beside the broker's database 0.
Every process then answers with the deployment's view, and so does the web app, which runs
no task (docker-compose.yml runs all of it: the services ``redis``, ``celery-worker``,
``celery-beat`` and ``celery-web``)::

    export JOBPULSE_STORE=redis://127.0.0.1:6379/1      # for each of the commands below
    celery -A examples.celery_app worker -E --loglevel=INFO
    celery -A examples.celery_app beat --loglevel=INFO
    uvicorn examples.celery_app.web:web --port 8001     # http://127.0.0.1:8001/api/v1/health/jobs

- `tasks`: the Celery app, its tasks and beat schedule (nothing about jobpulse);
- `monitoring`: `jobpulse.setup()` and the Celery integration, once per process, at import;
- `web`: a Starlette app serving jobpulse's health routes from the same monitor.
"""

from __future__ import annotations

from .monitoring import monitor
from .tasks import app

__all__ = ["app", "monitor"]
