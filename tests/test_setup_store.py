"""setup() with a store: the argument, ``JOBPULSE_STORE``, a store that cannot be opened
(nothing global is set), and the store's last write at shutdown."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.sdk.trace import TracerProvider

import jobpulse
from jobpulse import InvalidJobError, JobMonitor, StoreError, StoreVersionError, _setup
from jobpulse.store import SCHEMA_VERSION, SQLiteStore, Store

pytestmark = pytest.mark.usefixtures("otel_globals")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "JOBPULSE_STORE",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ):
        monkeypatch.delenv(variable, raising=False)


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def document(monitor: JobMonitor) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(monitor.health_json()[1])
    return body


def assert_nothing_global() -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)
    assert _setup.setup_monitor() is None


def test_the_store_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state" / "jobs.db"
    monkeypatch.setenv("JOBPULSE_STORE", url_of(path))
    monitor = jobpulse.setup("svc", prometheus=False)
    with monitor.run("nightly"):
        pass
    assert monitor.flush()
    assert path.exists()
    body = document(monitor)
    assert body["scope"] == "fleet"
    assert body["store"] == "ok"
    (instance,) = body["instances"]
    assert instance["service"] == "svc"
    assert instance["alive"] is True
    assert body["jobs"]["nightly"]["success_count"] == 1
    assert monitor.health().to_dict()["scope"] == "fleet"


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_variable_is_no_store(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOBPULSE_STORE", value)
    monitor = jobpulse.setup("svc", prometheus=False)
    assert monitor._store is None
    assert document(monitor)["scope"] == "process"
    assert list(tmp_path.iterdir()) == []


def test_the_argument_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_environment, from_code = tmp_path / "env.db", tmp_path / "code.db"
    monkeypatch.setenv("JOBPULSE_STORE", url_of(from_environment))
    monitor = jobpulse.setup("svc", prometheus=False, store=url_of(from_code))
    assert monitor._store is not None
    assert monitor._store.store.url == url_of(from_code)
    assert from_code.exists()
    assert not from_environment.exists()


def test_a_store_object_is_used_as_it_is(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    monitor = jobpulse.setup("svc", prometheus=False, store=store, flush_interval=0.5)
    assert monitor._store is not None
    assert monitor._store.store is store
    assert monitor._store.publisher.flush_interval == 0.5


def newer_store(path: Path) -> str:
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    return url_of(path)


@pytest.mark.parametrize(
    ("make_url", "error", "message"),
    [
        (lambda tmp: "postgres://app:hunter2@db/jobs", StoreError, "unsupported URL scheme"),
        (lambda tmp: url_of(tmp / "blocker" / "jobs.db"), StoreError, "cannot create the folder"),
        (lambda tmp: newer_store(tmp / "newer.db"), StoreVersionError, "newer jobpulse"),
    ],
    ids=["bad-url", "unwritable", "newer-schema"],
)
@pytest.mark.parametrize("where", ["argument", "environment"])
def test_a_store_that_cannot_be_opened_sets_nothing_global(
    make_url: Any,
    error: type[Exception],
    message: str,
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    url: str = make_url(tmp_path)
    options: dict[str, Any] = {"prometheus": False}
    if where == "argument":
        options["store"] = url
    else:
        monkeypatch.setenv("JOBPULSE_STORE", url)
    with pytest.raises(error, match=message) as caught:
        jobpulse.setup("svc", **options)
    assert "hunter2" not in str(caught.value)
    assert_nothing_global()
    monkeypatch.delenv("JOBPULSE_STORE", raising=False)
    monitor = jobpulse.setup("svc", prometheus=False)  # a later setup() works
    assert isinstance(trace.get_tracer_provider(), TracerProvider)
    assert _setup.setup_monitor() is monitor


def test_the_password_of_a_url_is_hidden(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        jobpulse.setup("svc", store="sqlite://admin:hunter2@host/jobs.db")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
    assert_nothing_global()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flush_interval": 0}, "flush_interval must be a positive"),
        ({"flush_interval": 6, "instance_ttl": 10}, "at least twice"),
        ({"instance_ttl": "soon"}, "instance_ttl"),
    ],
)
def test_bad_store_timings_are_refused_before_anything_is_built(
    options: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidJobError, match=message):
        jobpulse.setup("svc", store=url_of(tmp_path / "jobs.db"), **options)  # type: ignore[arg-type]
    assert_nothing_global()


def test_a_store_opened_here_is_closed_when_setup_fails_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Store] = []
    from jobpulse._monitor import _open_store as real

    def spy(store: str | Store, *args: Any) -> Store:
        opened.append(real(store, *args))
        return opened[-1]

    monkeypatch.setattr(_setup, "_open_store", spy)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    with pytest.raises(ImportError, match="jobpulse\\[prometheus\\]"):
        jobpulse.setup("svc", store=url_of(tmp_path / "jobs.db"))
    (store,) = opened
    assert isinstance(store, SQLiteStore)
    assert store._writer is None
    assert store._reader is None
    assert_nothing_global()

    # A Store the application made is the application's: left open.
    own = SQLiteStore(tmp_path / "own.db")
    with pytest.raises(ImportError):
        jobpulse.setup("svc", store=own)
    assert own._writer is not None
    own.close()


def test_the_last_write_at_shutdown_has_the_shutdown_timeout(tmp_path: Path) -> None:
    url = url_of(tmp_path / "jobs.db")
    monitor = jobpulse.setup("svc", prometheus=False, store=url, shutdown_timeout=3.5)
    assert monitor._shutdown_timeout == 3.5
    with monitor.run("last"):
        pass
    monitor.shutdown()  # no flush() before: the last write takes the run
    reader = JobMonitor(store=url)
    try:
        status = reader.status("last")
        assert status is not None
        assert status.success_count == 1
        (instance,) = [i for i in reader.instances() if i.service == "svc"]
        assert instance.alive is False
        assert instance.stopped is True
    finally:
        reader.shutdown()


def test_with_the_sdk_disabled_the_store_still_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    url = url_of(tmp_path / "jobs.db")
    monitor = jobpulse.setup("svc", store=url, shutdown_timeout=1.5)
    assert_nothing_global_but(monitor)
    assert monitor._shutdown_timeout == 1.5
    with monitor.run("quiet"):
        pass
    assert monitor.flush()
    body = document(monitor)
    assert body["scope"] == "fleet"
    assert len(body["instances"]) == 1
    other = JobMonitor(store=url)
    try:
        status = other.status("quiet")
        assert status is not None
        assert status.success_count == 1
    finally:
        other.shutdown()


def assert_nothing_global_but(monitor: JobMonitor) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert isinstance(metrics.get_meter_provider(), _ProxyMeterProvider)
    assert _setup.setup_monitor() is monitor


def test_with_the_sdk_disabled_the_instance_has_the_service_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monitor = jobpulse.setup("svc", store=url_of(tmp_path / "jobs.db"))
    assert monitor.flush()
    assert [instance.service for instance in monitor.instances()] == ["svc"]
