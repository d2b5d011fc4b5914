"""The Starlette routes: the health document and its codes, one job, /metrics, mounting,
bad paths and methods, failures inside jobpulse, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.routing import Mount

from jobpulse import JobMonitor
from jobpulse.starlette import HEALTH_PATH, lifespan, routes
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors


def client_for(app: Starlette) -> httpx.Client:
    """A sync client calling the ASGI app in process. (Starlette's TestClient now warns
    unless the httpx2 package is installed; httpx's ASGI transport is async only.)"""

    class Transport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            async def send() -> httpx.Response:
                response = await httpx.ASGITransport(app=app).handle_async_request(request)
                content = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
                return httpx.Response(
                    response.status_code, headers=response.headers, content=content
                )

            return asyncio.run(send())

    return httpx.Client(transport=Transport(), base_url="http://testserver")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(monitor: JobMonitor, registry: CollectorRegistry) -> Iterator[httpx.Client]:
    with client_for(Starlette(routes=routes(monitor, registry=registry))) as client:
        yield client


def fail(monitor: JobMonitor, name: str) -> None:
    with pytest.raises(RuntimeError), monitor.run(name):
        raise RuntimeError("boom")


def test_health_codes_follow_the_jobs(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    monitor.register("critical_job", critical=True, failure_threshold=2)
    monitor.register("slow_job", stall_after=10)
    response = client.get(HEALTH_PATH)
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"

    fail(monitor, "critical_job")
    assert client.get(HEALTH_PATH).status_code == 206
    fail(monitor, "critical_job")
    response = client.get(HEALTH_PATH)
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"

    with monitor.run("critical_job"):
        pass
    assert client.get(HEALTH_PATH).status_code == 200
    with monitor.run("slow_job"):
        clock.advance(11)
        response = client.get(HEALTH_PATH)
        assert response.status_code == 503
        assert response.json()["jobs"]["slow_job"]["status"] == "stalled"
    assert client.get(HEALTH_PATH).status_code == 200


def test_health_document_headers_and_body(
    monitor: JobMonitor, clock: FakeClock, client: httpx.Client
) -> None:
    with monitor.run("btc_transaction_indexing") as run:
        run.set_metadata(blocks=3)
    response = client.get(HEALTH_PATH)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    expected = monitor.health().to_dict()
    assert body["jobs"] == expected["jobs"]
    assert body["summary"] == expected["summary"]
    assert body["timestamp"] == "2026-01-01T00:00:00.000Z"
    assert set(body) == {"status", "timestamp", "jobs", "summary", "duration_ms"}

    head = client.head(HEALTH_PATH)
    assert head.status_code == 200
    assert head.content == b""


def test_one_job_with_history(monitor: JobMonitor, clock: FakeClock, client: httpx.Client) -> None:
    for _ in range(3):
        with monitor.run("reports/nightly export"):
            clock.advance(2)
    fail(monitor, "reports/nightly export")
    response = client.get(HEALTH_PATH + "/reports/nightly%20export")
    assert response.status_code == 206  # this job's own health: its last run failed
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "degraded"
    assert body["job"] == monitor.status("reports/nightly export").to_dict()  # type: ignore[union-attr]
    assert body["job"]["p50_duration_ms"] == pytest.approx(2000, rel=0.05)
    assert [run["outcome"] for run in body["history"]] == [
        "failed",
        "success",
        "success",
        "success",
    ]
    assert body["history"][0]["error_category"] == "unknown"

    limited = client.get(HEALTH_PATH + "/reports/nightly%20export", params={"limit": "1"})
    assert len(limited.json()["history"]) == 1
    assert client.get(HEALTH_PATH + "/reports/nightly%20export?limit=0").json()["history"] == []


def test_unknown_job_and_bad_limit(monitor: JobMonitor, client: httpx.Client) -> None:
    response = client.get(HEALTH_PATH + "/no_such_job")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "job not found", "job_name": "no_such_job"}

    with monitor.run("known"):
        pass
    for bad in ("-1", "ten", "1.5", ""):
        response = client.get(HEALTH_PATH + "/known", params={"limit": bad})
        assert response.status_code == 400, bad
        assert response.json() == {"error": "limit must be an integer >= 0"}


def test_bad_paths_and_methods(client: httpx.Client) -> None:
    assert client.get("/api/v1/health").status_code == 404
    assert client.get("/api/v1/health/jobsx").status_code == 404
    for method in ("POST", "PUT", "DELETE"):
        response = client.request(method, HEALTH_PATH)
        assert response.status_code == 405
        assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert client.post("/metrics").status_code == 405
    assert client.post(HEALTH_PATH + "/known").status_code == 405


def test_metrics_text_and_openmetrics(
    monitor: JobMonitor, registry: CollectorRegistry, client: httpx.Client
) -> None:
    Counter("demo_things", "Things.", registry=registry).inc(3)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "demo_things_total 3.0" in response.text
    assert response.headers["cache-control"] == "no-store"

    response = client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_routes_work_under_a_prefix_and_in_an_existing_app(
    monitor: JobMonitor, registry: CollectorRegistry
) -> None:
    with monitor.run("job"):
        pass
    mounted = Starlette(routes=[Mount("/ops", routes=routes(monitor, registry=registry))])
    with client_for(mounted) as client:
        assert client.get("/ops" + HEALTH_PATH).status_code == 200
        assert client.get("/ops" + HEALTH_PATH + "/job").json()["job"]["job_name"] == "job"
        assert client.get("/ops/metrics").status_code == 200
        assert client.get(HEALTH_PATH).status_code == 404

    existing = Starlette()  # FastAPI: app.router.routes.extend(...) the same way
    existing.router.routes.extend(routes(monitor, metrics=False))
    with client_for(existing) as client:
        assert client.get(HEALTH_PATH).status_code == 200
        assert client.get("/metrics").status_code == 404


def test_metrics_serve_the_registry_setup_made(monitor: JobMonitor) -> None:
    own = CollectorRegistry()
    Counter("from_setup", "Made by setup.", registry=own).inc()
    monitor._prometheus_registry = own
    with client_for(Starlette(routes=routes(monitor))) as client:
        assert "from_setup_total 1.0" in client.get("/metrics").text


def test_a_failure_inside_jobpulse_answers_a_bare_500(
    monitor: JobMonitor,
    client: httpx.Client,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monitor.run("job"):
        pass

    def broken(*args: Any) -> Any:
        raise RuntimeError("secret=hunter2 in a bug")

    monkeypatch.setattr(monitor, "_health_parts", broken)
    monkeypatch.setattr(monitor, "history", broken)
    for path in (HEALTH_PATH, HEALTH_PATH + "/job"):
        response = client.get(path)
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
        assert "hunter2" not in response.text
    assert [where for where, _ in internal_errors.take()] == ["health endpoint", "job endpoint"]


def test_a_failing_collector_answers_a_bare_500(
    monitor: JobMonitor, registry: CollectorRegistry, internal_errors: InternalErrors
) -> None:
    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("collector bug")

    registry.register(Broken())
    with client_for(Starlette(routes=routes(monitor, registry=registry))) as client:
        response = client.get("/metrics")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert [where for where, _ in internal_errors.take()] == ["metrics endpoint"]


def test_missing_optional_packages_say_what_to_install(
    monitor: JobMonitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'jobpulse\[prometheus\]'"):
        routes(monitor)
    assert len(routes(monitor, metrics=False)) == 2

    monkeypatch.setitem(sys.modules, "starlette.routing", None)
    monkeypatch.delitem(sys.modules, "jobpulse.starlette")
    with pytest.raises(ImportError, match=r"pip install 'jobpulse\[starlette\]'"):
        importlib.import_module("jobpulse.starlette")


@pytest.mark.slow
def test_real_uvicorn_server(make_monitor: Any) -> None:
    monitor: JobMonitor = make_monitor(clock=None, namespace="icy_backend")
    registry = CollectorRegistry()
    with monitor.run("btc_transaction_indexing"):
        pass
    app = Starlette(routes=[Mount("/ops", routes=routes(monitor, registry=registry))])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    started = threading.Event()

    def serve() -> None:
        async def main() -> None:
            task = asyncio.create_task(server.serve())
            while not server.started:  # uvicorn offers no startup event to wait on
                await asyncio.sleep(0.01)
            started.set()
            await task

        asyncio.run(main())

    thread = threading.Thread(target=serve, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/ops") as client:
            response = client.get(HEALTH_PATH)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            body = json.loads(response.content)
            assert body["jobs"]["btc_transaction_indexing"]["success_count"] == 1
            assert client.get(HEALTH_PATH + "/btc_transaction_indexing").status_code == 200
            assert client.get(HEALTH_PATH + "/nope").status_code == 404
            assert client.put(HEALTH_PATH).status_code == 405
            assert client.get("/metrics").status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_metrics_are_gzipped_when_the_scraper_asks(
    registry: CollectorRegistry, client: httpx.Client
) -> None:
    Counter("zipped_things", "Things.", registry=registry).inc()
    response = client.get("/metrics", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "zipped_things_total 1.0" in response.text  # httpx decompresses
    plain = client.get("/metrics", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers


def test_lifespan_shuts_the_monitor_down_when_the_server_stops(monitor: JobMonitor) -> None:
    app = Starlette(routes=routes(monitor, metrics=False), lifespan=lifespan(monitor))

    async def serve_lifespan() -> list[str]:
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        return sent

    assert not monitor.closed
    sent = asyncio.run(serve_lifespan())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert monitor.closed


def test_metrics_default_to_the_global_registry(monitor: JobMonitor) -> None:
    with client_for(Starlette(routes=routes(monitor))) as client:
        assert "python_info" in client.get("/metrics").text  # prometheus_client's own collector
