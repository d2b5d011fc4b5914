"""A FastAPI router for the health view and the Prometheus metrics (extra ``fastapi``).

::

    from fastapi import FastAPI
    from jobpulse.fastapi import lifespan, router

    app = FastAPI(lifespan=lifespan(monitor))
    app.include_router(router(monitor))               # or prefix="/ops"

The same endpoints, answers and codes as `jobpulse.starlette.routes` (see there), as FastAPI
path operations: they appear in the app's OpenAPI document (``/docs``) with their
parameters and responses: 200, 206 and 503 by health, 304 to a poller whose copy is
current, 400 for a bad parameter, 401 without the token of ``auth``, 404 for an unknown
job, 405 for another method, and the badges. Plain Starlette routes added to a FastAPI app
work too but are left out of its OpenAPI document: FastAPI documents only its own
``APIRoute``; the status page's routes are such routes.
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

from jobpulse._auth import Access, Auth
from jobpulse._http import (
    BADGE,
    DEFAULT_HISTORY_LIMIT,
    HEALTH_PATH,
    JOB_STATES,
    MAX_HISTORY_LIMIT,
    METRICS_PATH,
    Endpoints,
    answer_method_not_allowed,
    metrics_endpoint,
    prometheus_registry,
    status_page_routes,
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
_NOT_MODIFIED = {
    304: {
        "description": "Not Modified: `If-None-Match` names the current `ETag`. Sent whatever"
        " the health: a probe that needs the health in the status code sends no"
        " `If-None-Match`.",
    }
}
_UNAUTHORIZED = {401: _json("The request does not carry the token of `auth`.", _ERROR)}
_BAD_QUERY = {
    400: _json(
        "An unknown `state` (the answer lists the valid ones), or a `critical` or `pretty`"
        " that is not one of its values.",
        {
            **_ERROR,
            "properties": {
                "error": {"type": "string"},
                "state": {"type": "string"},
                "valid_states": {"type": "array", "items": {"type": "string"}},
            },
        },
    )
}
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The `ETag` of the copy the client holds (or a list, or `*`): 304 while"
    " the answer would be the same but for its times.",
    "schema": {"type": "string"},
}
_HEALTH_PARAMETERS = [
    {
        "name": "state",
        "in": "query",
        "required": False,
        "description": "List only the jobs in these states (a comma-separated list, or the"
        " parameter repeated). The status, the HTTP status and `summary` stay those of"
        " every job.",
        "schema": {"type": "array", "items": {"type": "string", "enum": list(JOB_STATES)}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "critical",
        "in": "query",
        "required": False,
        "description": "List only the critical jobs (`true`) or the others (`false`).",
        "schema": {"type": "boolean"},
    },
    {
        "name": "job",
        "in": "query",
        "required": False,
        "description": "List only the jobs of these names (repeat the parameter); an unknown"
        " name matches nothing.",
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "pretty",
        "in": "query",
        "required": False,
        "description": "`1` or `true` (or empty): indented JSON, the same content.",
        "schema": {"type": "string", "enum": ["", "1", "true", "0", "false"]},
    },
    _IF_NONE_MATCH,
]
_ETAG_HEADER = {
    "ETag": {"description": "A weak entity tag of the answer.", "schema": {"type": "string"}}
}
_SVG = {"image/svg+xml": {"schema": {"type": "string"}}}
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


def router(
    monitor: JobMonitor,
    *,
    registry: Any = None,
    metrics: bool = True,
    auth: Auth = None,
    detail: bool = True,
    status_page: bool = False,
) -> APIRouter:
    """An `APIRouter` with the health endpoints and the badges, ``/metrics`` unless
    `metrics` is False, and the status page if `status_page` is True, tagged ``jobpulse``
    in the OpenAPI document. Include it with ``app.include_router`` (with a ``prefix=`` if
    you like). The arguments are those of `jobpulse.starlette.routes`.

    Each endpoint is also served for HEAD (left out of the OpenAPI document, which would
    otherwise list every operation twice). The status page's routes are plain Starlette
    routes, left out of the OpenAPI document.
    """
    endpoints = Endpoints(monitor, Access(auth), detail)
    result = APIRouter(route_class=_Route, tags=[TAG])

    # The parameters are read by the handlers, not declared to FastAPI, so that a bad one
    # gets the same 400 as from the Starlette routes (FastAPI's own validation answers 422).
    async def health(request: Request) -> Response:
        return await endpoints.health(request)

    async def job(request: Request) -> Response:
        return await endpoints.resource(request, request.path_params["name"])

    # The badges' paths are also job names' (a job may be named "x/badge.svg"): each hands
    # the whole name to Endpoints.resource, which serves a job of that name first.
    async def health_badge(request: Request) -> Response:
        return await endpoints.resource(request, BADGE)

    async def job_badge(request: Request) -> Response:
        return await endpoints.resource(request, request.path_params["name"] + "/" + BADGE)

    def add(path: str, endpoint: Any, name: str, **documentation: Any) -> None:
        result.add_api_route(
            path, endpoint, methods=["GET"], name=name, response_class=Response, **documentation
        )
        result.add_api_route(
            path, endpoint, methods=["HEAD"], name=name + "_head", include_in_schema=False
        )

    by_health = {
        code: {**_json(text, _HEALTH_DOCUMENT), "headers": _ETAG_HEADER}
        for code, text in _BY_HEALTH.items()
    }
    add(
        HEALTH_PATH,
        health,
        "jobpulse_health",
        summary="Health of every job",
        description="The HTTP status is the overall health of every job, for probes and load"
        " balancers, whatever jobs the filters list. Open to all; with `auth`, error texts"
        " and metadata only for a request that carries the token.",
        responses={**by_health, **_NOT_MODIFIED, **_BAD_QUERY, **_METHOD_NOT_ALLOWED},
        openapi_extra={"parameters": _HEALTH_PARAMETERS},
    )
    badge = {"description": "The badge.", "content": _SVG, "headers": _ETAG_HEADER}
    add(
        HEALTH_PATH + "/" + BADGE,
        health_badge,
        "jobpulse_health_badge",
        summary="A badge of the overall health",
        description="An SVG badge: healthy (green), degraded (orange) or unhealthy (red)."
        " Open to all. A job named `badge.svg` is served here instead.",
        responses={200: badge, **_NOT_MODIFIED, **_METHOD_NOT_ALLOWED},
        openapi_extra={"parameters": [_IF_NONE_MATCH]},
    )
    add(
        HEALTH_PATH + "/{name:path}/" + BADGE,
        job_badge,
        "jobpulse_job_badge",
        summary="A badge of one job's state",
        description="An SVG badge: the job's name and state. Open to all. A job whose name"
        " is the whole path after `/jobs/` is served here instead.",
        responses={
            200: badge,
            **_NOT_MODIFIED,
            404: {"description": "No job has this name: a grey badge.", "content": _SVG},
            **_METHOD_NOT_ALLOWED,
        },
        openapi_extra={"parameters": [_NAME_PARAMETER, _IF_NONE_MATCH]},
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
            **(_UNAUTHORIZED if endpoints.access.protected else {}),
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
    if status_page:
        result.routes.extend(
            status_page_routes(monitor, endpoints.access, detail=endpoints.shows_detail)
        )
    return result
