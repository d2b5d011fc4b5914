"""Starlette routes for the health view and the Prometheus metrics (extra ``starlette``).

::

    from jobpulse.starlette import lifespan, routes
    app = Starlette(routes=routes(monitor), lifespan=lifespan(monitor))
    # or Mount("/ops", routes=routes(monitor)); FastAPI: see jobpulse.fastapi

- ``GET /api/v1/health/jobs`` (also with a trailing slash): the health document; 200
  healthy, 206 degraded, 503 unhealthy, always for every job. ``?state=failed,stalled``,
  ``?critical=true`` and ``?job=a&job=b`` select the jobs listed; ``?pretty=1`` indents.
  A weak ``ETag``; ``If-None-Match`` naming it gets 304 while nothing changed.
- ``GET /api/v1/health/jobs/badge.svg`` and ``/api/v1/health/jobs/{name}/badge.svg``: SVG
  badges of the overall health and of a job's state (a job named so is served instead).
- ``GET /api/v1/health/jobs/{name}``: one job, its health and its recent runs; 404 for an
  unknown job. ``?limit=N`` sets how many runs: an integer from 0 to 10,000 (default 100),
  else 400.
- ``GET /metrics``: the Prometheus exposition (OpenMetrics when the scraper asks for it).
- with ``status_page=True``, ``GET /jobs`` and ``/jobs/{name}``: the status page.

Every route answers GET and HEAD; another method gets ``405 {"error": "method not
allowed"}`` with ``Allow: GET, HEAD``. Errors are JSON, like the documents.

``lifespan(monitor)`` shuts the monitor down when the server stops (uvicorn skips
``atexit`` on SIGTERM).

The health document and the badges are open to all. With ``auth``, the per-job route and
the status page answer 401 to a request without the token, and the health document leaves
out error texts and metadata for it; ``detail=False`` leaves them out for everyone when
nothing is protected. No answer shows a stack trace or a secret: errors are redacted when
recorded, and a failure inside jobpulse answers a bare 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

try:
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route
    from starlette.types import Receive, Scope, Send
except ImportError:
    raise ImportError(
        "jobpulse.starlette needs Starlette: pip install 'jobpulse[starlette]'"
    ) from None

from jobpulse._auth import Access, Auth
from jobpulse._http import (
    DEFAULT_HISTORY_LIMIT,
    HEALTH_PATH,
    MAX_HISTORY_LIMIT,
    METRICS_PATH,
    Endpoints,
    answer_method_not_allowed,
    metrics_endpoint,
    prometheus_registry,
    status_page_routes,
)
from jobpulse._monitor import JobMonitor

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "HEALTH_PATH",
    "MAX_HISTORY_LIMIT",
    "METRICS_PATH",
    "lifespan",
    "routes",
]


class _Route(Route):
    """A GET route whose 405 answer is JSON, like every other answer of jobpulse's."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette's own 405 is plain text, or its app's exception handler's format.
        if not await answer_method_not_allowed(scope, receive, send):
            await super().handle(scope, receive, send)


def routes(
    monitor: JobMonitor,
    *,
    registry: Any = None,
    metrics: bool = True,
    auth: Auth = None,
    detail: bool = True,
    status_page: bool = False,
) -> list[BaseRoute]:
    """The health routes, ``/metrics`` unless `metrics` is False, and the status page if
    `status_page` is True.

    `registry`: the prometheus_client ``CollectorRegistry`` that ``/metrics`` serves. None
    uses the one `jobpulse.setup()` gave the monitor's Prometheus reader, else
    prometheus_client's global registry. Serving metrics needs ``jobpulse[prometheus]``.

    `auth`: a token (``Authorization: Bearer <token>``, or the password of HTTP Basic) or a
    callable taking the request and returning a bool (or an awaitable of one). With it, the
    per-job route and the status page answer 401 without it, and the health document shows
    error texts and metadata (``last_error``, ``metadata``, ``store_error``) only to a
    request that passes; the document itself and the badges stay open, for probes (a
    callable is asked for each request to the document too, on the event loop).
    `detail` False leaves those fields out (null, ``{}``) of every answer when nothing is
    protected; with `auth` it changes nothing.

    `status_page` (``jobpulse[page]``): ``/jobs`` and ``/jobs/{name}``, HTML.

    Raises:
        InvalidJobError: a bad `auth`.
        ImportError: what to install for ``/metrics`` or the status page.

    The handlers run on the event loop and take well under a millisecond for a few
    hundred jobs; ``/metrics`` is collected on a worker thread.
    """
    endpoints = Endpoints(monitor, Access(auth), detail)

    async def job(request: Request) -> Response:
        return await endpoints.resource(request, request.path_params["name"])

    result: list[BaseRoute] = [
        _Route(HEALTH_PATH, endpoints.health, methods=["GET"], name="jobpulse_health"),
        # {name:path} also takes "", the trailing-slash form of the health path, and the
        # badges' paths: Endpoints.resource tells them apart (a job of that name first).
        _Route(HEALTH_PATH + "/{name:path}", job, methods=["GET"], name="jobpulse_job"),
    ]
    if metrics:
        endpoint = metrics_endpoint(prometheus_registry(monitor, registry))
        result.append(_Route(METRICS_PATH, endpoint, methods=["GET"], name="jobpulse_metrics"))
    if status_page:
        result.extend(status_page_routes(monitor, endpoints.access, detail=endpoints.shows_detail))
    return result


def lifespan(monitor: JobMonitor) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Starlette (or FastAPI) ``lifespan`` that shuts `monitor` down when the server stops.

    uvicorn stops on SIGTERM and then re-raises the signal, so ``atexit`` handlers never run
    and the spans and metrics still buffered would be lost: shut the monitor down in the
    application's lifespan instead. ``Starlette(routes=..., lifespan=lifespan(monitor))``;
    an application with its own lifespan calls ``monitor.shutdown()`` at the end of it.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # It may wait for exporters (up to setup()'s shutdown_timeout): not on the loop.
            await run_in_threadpool(monitor.shutdown)

    return run
