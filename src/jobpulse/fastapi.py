"""A FastAPI router for the health view and the Prometheus metrics (extra ``fastapi``).

::

    from fastapi import FastAPI
    from jobpulse.fastapi import lifespan, router

    app = FastAPI(lifespan=lifespan(monitor))
    app.include_router(router(monitor))               # or prefix="/ops"

The same endpoints, answers and codes as `jobpulse.starlette.routes` (see there), as FastAPI
path operations: they appear in the app's OpenAPI document (``/docs``) with their
responses: 200, 206 and 503 by health, 404 for an unknown job, 400 for a bad ``limit``,
405 for another method. Plain Starlette routes added to a FastAPI app work too but are left
out of its OpenAPI document: FastAPI documents only its own ``APIRoute``.
"""

from __future__ import annotations

from typing import Any

try:
    from fastapi import APIRouter, Request
    from fastapi.routing import APIRoute
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
except ImportError:
    raise ImportError("jobpulse.fastapi needs FastAPI: pip install 'jobpulse[fastapi]'") from None

from jobpulse._http import (
    DEFAULT_HISTORY_LIMIT,
    HEALTH_PATH,
    MAX_HISTORY_LIMIT,
    METRICS_PATH,
    answer_method_not_allowed,
    health_response,
    job_response,
    metrics_endpoint,
    prometheus_registry,
)
from jobpulse._monitor import JobMonitor
from jobpulse.starlette import lifespan

__all__ = ["lifespan", "router"]

TAG = "jobpulse"


class _Route(APIRoute):
    """A path operation whose 405 answer is JSON and the same as `jobpulse.starlette`'s,
    whatever exception handlers the app has."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await answer_method_not_allowed(scope, receive, send):
            await super().handle(scope, receive, send)


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_HEALTH_STATUS = {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]}
_HEALTH_DOCUMENT = {
    "type": "object",
    "required": ["status", "timestamp", "jobs", "summary", "duration_ms"],
    "properties": {
        "status": _HEALTH_STATUS,
        "timestamp": {"type": "string", "format": "date-time"},
        "jobs": {
            "type": "object",
            "description": "Each job's status, by job name (fields: docs/api.md).",
            "additionalProperties": {"type": "object"},
        },
        "summary": {"type": "object", "description": "How many jobs are in each state."},
        "duration_ms": {"type": "number"},
    },
}
_JOB_DOCUMENT = {
    "type": "object",
    "required": ["status", "timestamp", "job", "history"],
    "properties": {
        "status": _HEALTH_STATUS,
        "timestamp": {"type": "string", "format": "date-time"},
        "job": {"type": "object", "description": "The job's status (fields: docs/api.md)."},
        "history": {
            "type": "array",
            "description": "Its recent runs, newest first.",
            "items": {"type": "object"},
        },
    },
}
_METHOD_NOT_ALLOWED = {405: _json("Another method than GET or HEAD.", _ERROR)}
_BY_HEALTH = {
    200: "healthy: no job is stalled, failing or missed",
    206: "degraded: a job failed or missed its schedule",
    503: "unhealthy: a job is stalled, or a critical job failed `failure_threshold` times in a"
    " row or missed its schedule",
}
_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The job name, URL-encoded; it may contain '/'.",
    "schema": {"type": "string"},
}
_LIMIT_PARAMETER = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "How many recent runs to return, newest first.",
    "schema": {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_HISTORY_LIMIT,
        "default": DEFAULT_HISTORY_LIMIT,
    },
}


def router(monitor: JobMonitor, *, registry: Any = None, metrics: bool = True) -> APIRouter:
    """An `APIRouter` with the health endpoints, and ``/metrics`` unless `metrics` is False,
    tagged ``jobpulse`` in the OpenAPI document. Include it with ``app.include_router``
    (with a ``prefix=`` if you like). `registry` and `metrics` are those of
    `jobpulse.starlette.routes`; serving metrics needs ``jobpulse[prometheus]``.

    Each endpoint is also served for HEAD (left out of the OpenAPI document, which would
    otherwise list every operation twice).
    """
    result = APIRouter(route_class=_Route, tags=[TAG])

    async def health() -> Response:
        return health_response(monitor)

    async def job(request: Request) -> Response:
        # The parameters are read here, not declared to FastAPI, so that a bad limit gets
        # the same 400 as from the Starlette routes (FastAPI's own validation answers 422).
        name: str = request.path_params["name"]
        return job_response(monitor, name, request.query_params.get("limit"))

    def add(path: str, endpoint: Any, name: str, **documentation: Any) -> None:
        result.add_api_route(
            path, endpoint, methods=["GET"], name=name, response_class=Response, **documentation
        )
        result.add_api_route(
            path, endpoint, methods=["HEAD"], name=name + "_head", include_in_schema=False
        )

    by_health = {code: _json(text, _HEALTH_DOCUMENT) for code, text in _BY_HEALTH.items()}
    add(
        HEALTH_PATH,
        health,
        "jobpulse_health",
        summary="Health of every job",
        description="The HTTP status is the overall health, for probes and load balancers.",
        responses={**by_health, **_METHOD_NOT_ALLOWED},
    )
    by_job_health = {code: _json(text, _JOB_DOCUMENT) for code, text in _BY_HEALTH.items()}
    add(
        HEALTH_PATH + "/{name:path}",
        job,
        "jobpulse_job",
        summary="One job, its health and its recent runs",
        description="The HTTP status is this job's own health. An empty name (the health path"
        " with a trailing slash) answers the health document of every job.",
        responses={
            **by_job_health,
            400: _json(f"`limit` is not an integer from 0 to {MAX_HISTORY_LIMIT}.", _ERROR),
            404: _json("No job has this name.", _ERROR),
            **_METHOD_NOT_ALLOWED,
        },
        openapi_extra={"parameters": [_NAME_PARAMETER, _LIMIT_PARAMETER]},
    )
    if metrics:
        add(
            METRICS_PATH,
            metrics_endpoint(prometheus_registry(monitor, registry)),
            "jobpulse_metrics",
            summary="Prometheus metrics",
            description="The Prometheus text format, or OpenMetrics when the scraper asks.",
            responses={
                200: {
                    "description": "The exposition.",
                    "content": {"text/plain": {}, "application/openmetrics-text": {}},
                },
                **_METHOD_NOT_ALLOWED,
            },
        )
    return result
