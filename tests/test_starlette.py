"""The Starlette routes: the health document and its codes, one job, /metrics, mounting,
bad paths and methods, failures inside jobpulse, and a real uvicorn server."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.routing import Mount

from jobpulse import JobMonitor
from jobpulse.starlette import HEALTH_PATH, lifespan, routes
from jobpulse.testing import FakeClock
from tests.conftest import InternalErrors, prometheus_reader
from tests.uvicorn_server import serving


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
    assert response.headers["cache-control"] == "no-cache"  # revalidated: see test_pollers
    assert response.headers["etag"].startswith('W/"')
    body = response.json()
    expected = monitor.health().to_dict()
    assert body["jobs"] == expected["jobs"]
    assert body["summary"] == expected["summary"]
    assert body["timestamp"] == "2026-01-01T00:00:00.000Z"
    assert set(body) == {"status", "timestamp", "scope", "jobs", "summary", "duration_ms"}

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
    for bad in BAD_LIMITS:
        response = client.get(HEALTH_PATH + "/known", params={"limit": bad})
        assert response.status_code == 400, bad
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "limit must be an integer from 0 to 10000"}
    for good in ("0", "007", "10000"):
        response = client.get(HEALTH_PATH + "/known", params={"limit": good})
        assert response.status_code == 200, good
        assert len(response.json()["history"]) == min(int(good), 1)


#: Refused by ?limit=: not ASCII digits ("²" and "٣" pass str.isdigit, and int() refuses
#: "²"), too large, or more digits than int() converts (4,300).
BAD_LIMITS = ["-1", "ten", "1.5", "", "\u00b2", "\u0663", "+5", " 5", "1e3", "10001", "9" * 5000]


def test_the_health_path_with_a_trailing_slash_serves_the_document(
    monitor: JobMonitor, client: httpx.Client
) -> None:
    with monitor.run("reports/"):  # a name ending in "/" is still a job
        pass
    fail(monitor, "swaps")
    plain = client.get(HEALTH_PATH)
    slashed = client.get(HEALTH_PATH + "/")
    assert slashed.status_code == plain.status_code == 206
    assert slashed.headers["content-type"] == "application/json"
    body = slashed.json()
    assert set(body) == {"status", "timestamp", "scope", "jobs", "summary", "duration_ms"}
    assert body["jobs"] == plain.json()["jobs"]
    assert client.head(HEALTH_PATH + "/").status_code == 206
    assert client.get(HEALTH_PATH + "/reports/").json()["job"]["job_name"] == "reports/"


#: A path of each jobpulse route (the job route with a name holding a "/").
JSON_ROUTES = [HEALTH_PATH, HEALTH_PATH + "/", HEALTH_PATH + "/a/b", "/metrics"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", JSON_ROUTES)
def test_other_methods_answer_json_405(client: httpx.Client, method: str, path: str) -> None:
    assert_json_405(client.request(method, path))


def assert_json_405(response: httpx.Response) -> None:
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.headers["allow"] == "GET, HEAD"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"error": "method not allowed"}


def test_head_answers_every_route_without_a_body(monitor: JobMonitor, client: httpx.Client) -> None:
    with monitor.run("a/b"):
        pass
    for path in JSON_ROUTES:
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


def test_bad_paths_and_methods(monitor: JobMonitor, registry: CollectorRegistry) -> None:
    inner = routes(monitor, registry=registry)
    for app in (
        Starlette(routes=routes(monitor, registry=registry)),
        Starlette(routes=[Mount("/ops", routes=inner)]),
    ):
        prefix = "/ops" if app.routes[0].path == "/ops" else ""  # type: ignore[attr-defined]
        with client_for(app) as client:
            assert client.get(prefix + "/api/v1/health").status_code == 404
            assert client.get(prefix + "/api/v1/health/jobsx").status_code == 404
            for path in JSON_ROUTES:
                assert_json_405(client.post(prefix + path))
                assert_json_405(client.delete(prefix + path))


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

    monkeypatch.setattr(monitor, "_health_snapshot", broken)
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
    assert [route.name for route in routes(monitor, metrics=False)] == [  # type: ignore[attr-defined]
        "jobpulse_health",
        "jobpulse_job",
    ]

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
    with monitor.run("reports/nightly"):
        pass
    app = Starlette(routes=[Mount("/ops", routes=routes(monitor, registry=registry))])
    with serving(app) as base, httpx.Client(base_url=f"{base}/ops") as client:
        response = client.get(HEALTH_PATH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = json.loads(response.content)
        assert body["jobs"]["btc_transaction_indexing"]["success_count"] == 1
        assert client.get(HEALTH_PATH + "/btc_transaction_indexing").status_code == 200
        assert client.get(HEALTH_PATH + "/nope").status_code == 404
        assert client.get("/metrics").status_code == 200
        # The edges, as a real HTTP server sends them.
        slashed = client.get(HEALTH_PATH + "/")
        assert slashed.status_code == 200
        assert set(json.loads(slashed.content)["jobs"]) == {
            "btc_transaction_indexing",
            "reports/nightly",
        }
        one = client.get(HEALTH_PATH + "/reports/nightly", params={"limit": "1"})
        assert json.loads(one.content)["job"]["job_name"] == "reports/nightly"
        for bad in ("\u00b2", "9" * 5000):
            response = client.get(HEALTH_PATH + "/reports/nightly", params={"limit": bad})
            assert response.status_code == 400
            assert response.json() == {"error": "limit must be an integer from 0 to 10000"}
        for path in JSON_ROUTES:
            assert_json_405(client.put(path))
        for path in (HEALTH_PATH, HEALTH_PATH + "/", HEALTH_PATH + "/reports/nightly"):
            head = client.head(path)
            assert (head.status_code, head.content) == (200, b"")
            assert int(head.headers["content-length"]) > 0  # what GET would send


def test_metrics_are_gzipped_when_the_scraper_asks(
    registry: CollectorRegistry, client: httpx.Client
) -> None:
    Counter("zipped_things", "Things.", registry=registry).inc()
    response = client.get("/metrics", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "zipped_things_total 1.0" in response.text  # httpx decompresses
    plain = client.get("/metrics", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers


def run_lifespan(app: Any) -> list[str]:
    """Run the ASGI lifespan of `app` (startup, then shutdown) as a server does; the types
    of the messages the app sent back."""

    async def serve() -> list[str]:
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        return sent

    return asyncio.run(serve())


def test_lifespan_shuts_the_monitor_down_when_the_server_stops(monitor: JobMonitor) -> None:
    app = Starlette(routes=routes(monitor, metrics=False), lifespan=lifespan(monitor))
    assert not monitor.closed
    assert run_lifespan(app) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert monitor.closed


def test_metrics_default_to_the_global_registry(monitor: JobMonitor) -> None:
    with client_for(Starlette(routes=routes(monitor))) as client:
        assert "python_info" in client.get("/metrics").text  # prometheus_client's own collector


def test_metrics_carry_no_exemplars_while_otlp_readers_get_them(otel: Any) -> None:
    """What the README says: exemplars go out over OTLP, not on the app's /metrics (the
    OpenTelemetry Prometheus exporter drops them)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader, registry = prometheus_reader()
    otlp_like = InMemoryMetricReader()
    meter_provider = MeterProvider(
        metric_readers=[reader, otlp_like],
        shutdown_on_exit=False,
    )
    monitor = JobMonitor(otel.tracer_provider, meter_provider)
    try:
        for _ in range(2):  # the SDK may keep no exemplar for a series' first point
            fail(monitor, "job")
        with client_for(Starlette(routes=routes(monitor, registry=registry))) as client:
            exposition = client.get(
                "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
            ).text
        data = otlp_like.get_metrics_data()
        assert data is not None
        (duration,) = [
            metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "background_job.duration"
        ]
        assert any(point.exemplars for point in duration.data.data_points)
        assert 'background_job_duration_seconds_bucket{job_name="job"' in exposition
        assert " # {" not in exposition  # OpenMetrics writes an exemplar as `# {trace_id=...}`
    finally:
        monitor.shutdown()
        meter_provider.shutdown()
