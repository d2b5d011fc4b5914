"""The example's web app: jobpulse's health routes, serving the whole deployment's view.

It runs no task. With a store shared by every process of the deployment (``JOBPULSE_STORE``,
e.g. ``redis://127.0.0.1:6379/1``, set for the worker, beat and this app alike), its
``/api/v1/health/jobs`` shows the task runs of every pool child and beat's entries
(``beat:refresh-prices``), with the instances that wrote them. Without a store it shows this
process's own view, which has no runs. Run it from the repository root::

    JOBPULSE_STORE=redis://127.0.0.1:6379/1 uvicorn examples.celery_app.web:web --port 8001

It uses the monitor of `monitoring` (the package's import sets it up), so its
``jobpulse.setup(service_name="celery-example")`` is the worker's and beat's: the store's keys
(``jobpulse:<namespace>:<service>:``) are the same in every process. ``/metrics`` is left
out: the example's processes export their metrics over OTLP, each its own.
"""

from __future__ import annotations

from starlette.applications import Starlette

from jobpulse.starlette import lifespan, routes

from .monitoring import monitor

__all__ = ["web"]

#: The ASGI application; its lifespan shuts the monitor down (its last write to the store).
web = Starlette(routes=routes(monitor, metrics=False), lifespan=lifespan(monitor))
