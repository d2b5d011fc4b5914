from __future__ import annotations

import contextvars
import importlib.util
import inspect
import json
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from packaging.version import Version

from jobpulse import JobMonitor, JobRun, _guard
from jobpulse._guard import add_internal_error_hook, remove_internal_error_hook
from jobpulse.testing import FakeClock

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from prometheus_client import CollectorRegistry

#: Set in CI: a test that needs a server or binary fails instead of skipping without it.
REQUIRE_SERVERS = os.environ.get("JOBPULSE_REQUIRE_SERVERS") == "1"

#: The installed opentelemetry-sdk, e.g. (1, 30, 0).
SDK_VERSION = Version(version("opentelemetry-sdk")).release

#: ``jobpulse[celery]`` needs opentelemetry-sdk 1.44 or later (a forked pool child gets its
#: own ``service.instance.id``), so `make test-lowest` (opentelemetry-sdk 1.30) installs no
#: Celery and skips these modules, each as a whole with this reason; `make test` (the newest
#: SDK) runs them, where a missing Celery is an import error, never a skip.
#: tests/test_versions.py checks that these are the modules that import Celery.
CELERY_MODULES = frozenset(
    {
        "test_celery.py",
        "test_celery_example.py",
        "test_celery_prefork.py",
        "test_celery_store.py",
        "test_celery_threads.py",
    }
)
CELERY_SDK = (1, 44)
_NO_CELERY = (
    f"jobpulse[celery] needs opentelemetry-sdk>=1.44, this run has "
    f"{version('opentelemetry-sdk')}: runs in `make test`"
)

#: For a Celery test in a module of other tests (its Celery runs in another process, or is
#: imported by the test): skipped where `CELERY_MODULES` are, for the same reason.
needs_celery = pytest.mark.skipif(SDK_VERSION < CELERY_SDK, reason=_NO_CELERY)


class _NeedsCelery(pytest.Module):
    def collect(self) -> list[pytest.Item | pytest.Collector]:
        pytest.skip(f"{self.path.name}: {_NO_CELERY}")


def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if module_path.name in CELERY_MODULES and SDK_VERSION < CELERY_SDK:
        return _NeedsCelery.from_parent(parent, path=module_path)
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``JOBPULSE_CONSTRAINTS`` naming a pip constraints file (`make test-lowest`), the
    run stops unless every package it pins is installed at that version: a resolver that
    quietly upgraded one would otherwise test the newest versions twice."""
    constraints = os.environ.get("JOBPULSE_CONSTRAINTS")
    if not constraints:
        return
    wrong = []
    for line in Path(constraints).read_text().splitlines():
        requirement = line.partition("#")[0].strip()
        if not requirement:
            continue
        name, _, pinned = requirement.partition("==")
        try:
            installed = version(name.strip())
        except PackageNotFoundError:
            installed = "not installed"
        if installed != pinned.strip():
            wrong.append(f"{name.strip()} {installed} (pinned {pinned.strip()})")
    if wrong:
        raise pytest.UsageError(f"{constraints} did not take: {', '.join(wrong)}")


@dataclass
class InternalErrors:
    """What jobpulse's guard swallowed during a test; any left unclaimed fails the test."""

    errors: list[tuple[str, BaseException]] = field(default_factory=list)

    def take(self) -> list[tuple[str, BaseException]]:
        taken, self.errors = self.errors, []
        return taken


@pytest.fixture(autouse=True)
def internal_errors() -> Iterator[InternalErrors]:
    # Each place logs its 1st, 2nd, 4th, ... error: every test starts from the first, so
    # that what one test expects to be logged does not depend on the tests before it.
    with _guard._counts_lock:
        _guard._counts.clear()
        _guard._foreign_counts.clear()
    collected = InternalErrors()

    def hook(where: str, exc: BaseException) -> None:
        collected.errors.append((where, exc))

    add_internal_error_hook(hook)
    try:
        yield collected
    finally:
        remove_internal_error_hook(hook)
    if collected.errors:
        where, exc = collected.errors[0]
        raise AssertionError(f"jobpulse swallowed an internal error in {where}") from exc


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``JOBPULSE_STORE`` of the shell that runs the tests reaches neither `setup()` nor
    the processes the tests start: a test that wants a store names one in its tmp_path."""
    monkeypatch.delenv("JOBPULSE_STORE", raising=False)


@dataclass
class Otel:
    """An SDK tracer provider exporting to memory, and a meter provider read from memory."""

    tracer_provider: TracerProvider
    exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def metrics(self) -> dict[str, dict[tuple[tuple[str, object], ...], object]]:
        """Instrument name -> sorted attribute items -> point value (histograms: the point)."""
        data: MetricsData | None = self.reader.get_metrics_data()
        result: dict[str, dict[tuple[tuple[str, object], ...], object]] = {}
        if data is None:
            return result
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    points = result.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        key = tuple(sorted((point.attributes or {}).items()))
                        points[key] = getattr(point, "value", point)
        return result


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Otel(tracer_provider, exporter, meter_provider, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MonitorFactory = Callable[..., JobMonitor]


@pytest.fixture
def make_monitor(otel: Otel, clock: FakeClock) -> Iterator[MonitorFactory]:
    """Monitors on the `otel` providers and the fake clock, shut down after the test."""
    monitors: list[JobMonitor] = []

    def make(**kwargs: object) -> JobMonitor:
        options: dict[str, object] = {
            "tracer_provider": otel.tracer_provider,
            "meter_provider": otel.meter_provider,
            "clock": clock,
        }
        options.update(kwargs)
        monitor = JobMonitor(**options)  # type: ignore[arg-type]
        monitors.append(monitor)
        return monitor

    yield make
    for monitor in monitors:
        monitor.shutdown()


@pytest.fixture
def monitor(make_monitor: MonitorFactory) -> JobMonitor:
    return make_monitor()


@contextmanager
def log_signal(fragment: str) -> Iterator[threading.Event]:
    """An Event set (from whichever thread logs) when the ``jobpulse`` logger emits a message
    containing `fragment`: lets a test wait for the watchdog thread without polling."""
    seen = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                seen.set()

    spy = Spy()
    logging.getLogger("jobpulse").addHandler(spy)
    try:
        yield seen
    finally:
        logging.getLogger("jobpulse").removeHandler(spy)


def prometheus_reader(
    *, disable_target_info: bool = False
) -> tuple[MetricReader, CollectorRegistry]:
    """A Prometheus reader without scope labels on a registry of its own, and that registry.
    The exporter before 0.63b0 (`make test-lowest`) writes to prometheus_client's global
    registry only, and before 0.64b0 adds no scope labels: there it is that global registry,
    which the reader leaves at its provider's shutdown."""
    import prometheus_client
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    accepted = inspect.signature(PrometheusMetricReader).parameters
    options: dict[str, Any] = {"disable_target_info": disable_target_info}
    if "scope_info_enabled" in accepted:
        options["scope_info_enabled"] = False
    if "registry" not in accepted:
        return PrometheusMetricReader(**options), prometheus_client.REGISTRY
    registry = prometheus_client.CollectorRegistry()
    return PrometheusMetricReader(registry=registry, **options), registry


def _reset_otel_globals() -> None:
    # What opentelemetry-test-utils' reset helpers do: forget the global providers so that
    # the next set_*_provider call takes effect. Test-only.
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.util._once import Once

    from jobpulse import _setup

    _setup._built_globals.clear()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    # The proxy that get_meter_provider() hands out before one is set keeps the provider
    # set last, and gives meters of it: a fresh proxy forgets it.
    metrics_internal._PROXY_METER_PROVIDER = metrics_internal._ProxyMeterProvider()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert isinstance(metrics.get_meter_provider(), metrics_internal._ProxyMeterProvider)


@pytest.fixture
def otel_globals() -> Iterator[None]:
    """No global OpenTelemetry providers before the test, and none left after it; a monitor
    that `jobpulse.setup()` returned during the test is shut down."""
    from jobpulse import _setup

    _reset_otel_globals()
    try:
        yield
    finally:
        if _setup._active is not None:
            _setup._active.shutdown()
            _setup._active = None
        _reset_otel_globals()


def in_child(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run `work` in a forked child and return the report it made there."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)  # type: ignore[no-any-return]


@contextmanager
def in_own_context(run: JobRun) -> Iterator[JobRun]:
    """Run `run` in a context of its own, as a run on another thread or task would be (a
    run opened inside a run of the same job in the same context is that run)."""
    context = contextvars.Context()
    context.run(run.__enter__)
    try:
        yield run
    finally:
        context.run(run.__exit__, None, None, None)


#: Makes monitors on one store (see `fleet`), with JobMonitor's options.
MakeMonitor = Callable[..., JobMonitor]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def store_url(store_path: Path) -> str:
    return f"sqlite:///{store_path}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the whole session (tests/redis_server.py): ``redis://127.0.0.1:
    <port>/0``. The Celery test app's broker is set to it (where Celery is installed: the
    run on the lowest opentelemetry-sdk has none, see `CELERY_MODULES`)."""
    from tests import redis_server

    with redis_server.running_redis(tmp_path_factory.mktemp("redis")) as url:
        if importlib.util.find_spec("celery") is not None:
            from tests import celery_app

            celery_app.app.conf.broker_url = url
        yield url


#: Runs a test that uses `fleet` on the SQLite backend only (it uses the file itself).
sqlite_only = pytest.mark.parametrize("store_backend", ["sqlite"])


@pytest.fixture(params=["sqlite", "redis"])
def store_backend(request: pytest.FixtureRequest) -> str:
    """The backend `fleet` runs a test on: each in turn."""
    return str(request.param)


@pytest.fixture
def fleet_url(store_backend: str, store_url: str, request: pytest.FixtureRequest) -> str:
    """A store of the test's own on `store_backend`: a SQLite file in its folder, or keys
    under a prefix of its own in the session's Redis."""
    if store_backend == "sqlite":
        return store_url
    server = request.getfixturevalue("redis_url")
    return f"{server}?prefix=test:{uuid.uuid4().hex}:"


@pytest.fixture
def fleet(fleet_url: str, clock: FakeClock) -> Iterator[MakeMonitor]:
    """Monitors on one store and one fake clock, as processes of one service would be."""
    made: list[JobMonitor] = []

    def make(**options: object) -> JobMonitor:
        monitor = JobMonitor(store=fleet_url, clock=clock, **options)  # type: ignore[arg-type]
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.shutdown()


def pass_time(clock: FakeClock, seconds: int, *writing: JobMonitor) -> None:
    """`seconds` go by on `clock`, one at a time, while the `writing` monitors write to their
    store each second, as their publishers do in real time (an instance judges the others'
    heartbeats only while it has been writing itself)."""
    for _ in range(seconds):
        clock.advance(1)
        for monitor in writing:
            assert monitor.flush()


def succeed(monitor: JobMonitor, name: str, times: int = 1) -> None:
    for _ in range(times):
        with monitor.run(name):
            pass


def default_interrupts() -> None:
    """For `subprocess.Popen(preexec_fn=...)`: SIGINT, SIGQUIT and SIGHUP back to their
    defaults in the child. A shell starts a background job with the first two ignored (and
    ``nohup`` ignores SIGHUP), and every process it starts inherits that; a test that sends
    them expects the dispositions a terminal would give."""
    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
