"""jobpulse in FastAPI: the router (at the root and under a prefix, in the OpenAPI document),
the Starlette routes added to a FastAPI app, the lifespans, and the documented code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter

from jobpulse import JobMonitor
from jobpulse.fastapi import router
from jobpulse.starlette import HEALTH_PATH, lifespan, routes
from tests.test_docs import ROOT, blocks_of
from tests.test_starlette import BAD_LIMITS, assert_json_405, client_for, fail, run_lifespan

JOB_PATH = HEALTH_PATH + "/{name}"
HEALTH_BADGE_PATH = HEALTH_PATH + "/badge.svg"
JOB_BADGE_PATH = JOB_PATH + "/badge.svg"


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("fastapi_things", "Things.", registry=registry).inc()
    return registry


def app_with_router(monitor: JobMonitor, registry: CollectorRegistry, prefix: str = "") -> FastAPI:
    app = FastAPI()
    app.include_router(router(monitor, registry=registry), prefix=prefix)
    return app


@pytest.mark.parametrize("prefix", ["", "/ops"])
def test_the_router_serves_what_the_starlette_routes_serve(
    monitor: JobMonitor, registry: CollectorRegistry, prefix: str
) -> None:
    with monitor.run("reports/nightly"):
        pass
    fail(monitor, "swaps")
    with client_for(app_with_router(monitor, registry, prefix)) as client:
        health = client.get(prefix + HEALTH_PATH)
        assert health.status_code == 206
        assert health.headers["content-type"] == "application/json"
        assert health.headers["cache-control"] == "no-cache"
        assert health.json()["jobs"] == monitor.health().to_dict()["jobs"]
        assert client.get(prefix + HEALTH_PATH + "/").json()["jobs"] == health.json()["jobs"]

        job = client.get(prefix + HEALTH_PATH + "/reports/nightly", params={"limit": "1"})
        assert job.status_code == 200
        assert job.json()["job"]["job_name"] == "reports/nightly"
        assert len(job.json()["history"]) == 1
        assert client.get(prefix + HEALTH_PATH + "/swaps").status_code == 206
        missing = client.get(prefix + HEALTH_PATH + "/nope")
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": "job not found", "job_name": "nope"},
        )
        for bad in BAD_LIMITS:
            response = client.get(prefix + HEALTH_PATH + "/swaps", params={"limit": bad})
            assert response.status_code == 400, bad
            assert response.json() == {"error": "limit must be an integer from 0 to 10000"}

        assert "fastapi_things_total 1.0" in client.get(prefix + "/metrics").text
        for path in (HEALTH_PATH, HEALTH_PATH + "/", HEALTH_PATH + "/swaps", "/metrics"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                assert_json_405(client.request(method, prefix + path))
            head = client.head(prefix + path)
            assert head.status_code == client.get(prefix + path).status_code
            assert head.content == b""
        assert client.get(HEALTH_PATH if prefix else "/ops" + HEALTH_PATH).status_code == 404


def test_the_router_is_in_the_openapi_document(
    monitor: JobMonitor, registry: CollectorRegistry
) -> None:
    app = FastAPI()
    app.include_router(router(monitor, registry=registry))
    app.include_router(router(monitor, metrics=False, auth="s3cret"), prefix="/ops")
    with client_for(app) as client:
        document = client.get("/openapi.json").json()
    paths = document["paths"]
    assert set(paths) == {
        HEALTH_PATH,
        HEALTH_BADGE_PATH,
        JOB_BADGE_PATH,
        JOB_PATH,
        "/metrics",
        "/ops" + HEALTH_PATH,
        "/ops" + HEALTH_BADGE_PATH,
        "/ops" + JOB_BADGE_PATH,
        "/ops" + JOB_PATH,
    }
    for operations in paths.values():
        assert set(operations) == {"get"}  # HEAD is served, not listed twice
        assert operations["get"]["tags"] == ["jobpulse"]
    health = paths[HEALTH_PATH]["get"]
    assert set(health["responses"]) == {"200", "206", "503", "304", "400", "405"}
    schema = health["responses"]["503"]["content"]["application/json"]["schema"]
    assert schema["properties"]["status"]["enum"] == ["healthy", "degraded", "unhealthy"]
    assert "ETag" in health["responses"]["200"]["headers"]
    assert health["responses"]["400"]["content"]["application/json"]["schema"]["properties"][
        "valid_states"
    ] == {"type": "array", "items": {"type": "string"}}
    parameters = {parameter["name"]: parameter for parameter in health["parameters"]}
    assert set(parameters) == {"state", "critical", "job", "pretty", "If-None-Match"}
    assert parameters["state"]["schema"]["items"]["enum"] == [
        "pending",
        "running",
        "success",
        "failed",
        "stalled",
        "missed",
    ]
    assert parameters["critical"]["schema"] == {"type": "boolean"}
    assert parameters["If-None-Match"]["in"] == "header"
    job = paths[JOB_PATH]["get"]
    assert set(job["responses"]) == {"200", "206", "503", "400", "404", "405"}
    assert "401" in paths["/ops" + JOB_PATH]["get"]["responses"]  # only where auth is given
    parameters = {parameter["name"]: parameter for parameter in job["parameters"]}
    assert parameters["name"]["in"] == "path"
    assert parameters["limit"]["schema"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": 10000,
        "default": 100,
    }
    for path, codes in (
        (HEALTH_BADGE_PATH, {"200", "304", "405"}),
        (JOB_BADGE_PATH, {"200", "304", "404", "405"}),
    ):
        responses = paths[path]["get"]["responses"]
        assert set(responses) == codes
        assert set(responses["200"]["content"]) == {"image/svg+xml"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {
        "text/plain",
        "application/openmetrics-text",
    }
    operation_ids = [operations["get"]["operationId"] for operations in paths.values()]
    assert len(set(operation_ids)) == len(operation_ids)


def test_starlette_routes_work_in_fastapi_but_are_not_in_its_openapi_document(
    monitor: JobMonitor, registry: CollectorRegistry
) -> None:
    with monitor.run("job"):
        pass
    app = FastAPI()
    app.router.routes.extend(routes(monitor, registry=registry))
    with client_for(app) as client:
        assert client.get(HEALTH_PATH).status_code == 200
        assert client.get(HEALTH_PATH + "/job").json()["job"]["job_name"] == "job"
        assert client.get("/metrics").status_code == 200
        assert_json_405(client.post(HEALTH_PATH))  # not FastAPI's {"detail": ...}
        assert client.get("/openapi.json").json().get("paths", {}) == {}


def test_jobpulse_lifespan_works_with_fastapi(monitor: JobMonitor) -> None:
    app = FastAPI(lifespan=lifespan(monitor))
    app.include_router(router(monitor, metrics=False))
    assert not monitor.closed
    assert run_lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert monitor.closed


def test_shutdown_at_the_end_of_an_own_fastapi_lifespan(monitor: JobMonitor) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        seen.append("started")
        yield
        seen.append("stopping")
        monitor.shutdown()

    app = FastAPI(lifespan=own)
    app.include_router(router(monitor, metrics=False))
    assert run_lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen == ["started", "stopping"]
    assert monitor.closed


@pytest.mark.usefixtures("otel_globals")
def test_the_documented_fastapi_code_serves_and_documents_the_endpoints() -> None:
    # The first FastAPI block, "Serving the routes" (a later one shows auth).
    code = next(code for code in blocks_of(ROOT / "docs" / "api.md") if "jobpulse.fastapi" in code)
    namespace: dict[str, Any] = {"__name__": "docs_fastapi"}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    monitor: JobMonitor = namespace["monitor"]
    app: FastAPI = namespace["app"]
    with monitor.run("btc_transaction_indexing"):
        pass
    with client_for(app) as client:
        body = client.get(HEALTH_PATH).json()
        assert body["jobs"]["btc_transaction_indexing"]["success_count"] == 1
        assert HEALTH_PATH in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200
        assert "icy_backend_background_job_runs_total" in client.get("/metrics").text
    assert run_lifespan(app)[-1] == "lifespan.shutdown.complete"
    assert monitor.closed


def test_missing_fastapi_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "jobpulse.fastapi")
    with pytest.raises(ImportError, match=r"pip install 'jobpulse\[fastapi\]'"):
        importlib.import_module("jobpulse.fastapi")
