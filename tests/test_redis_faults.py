"""Faults of a Redis store, with a real ``redis-server`` the test stops, empties and blocks:
jobs run throughout and nothing raises into them, the health route answers from the
process's own view (``"store": "unavailable"``, never a 500), and once Redis is back the
fleet's view is complete again within 5 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from jobpulse import JobMonitor, StoreError
from jobpulse.starlette import HEALTH_PATH, routes
from jobpulse.store import open_store
from jobpulse.store.redis import RedisStore
from tests.conftest import succeed
from tests.redis_server import RedisServer
from tests.test_starlette import client_for

pytestmark = pytest.mark.slow

#: How soon after Redis is back the fleet's view must be whole again (the issue's figure).
BACK_WITHIN_SECONDS = 5.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def monitors(server: RedisServer) -> Iterator[Callable[[], JobMonitor]]:
    made: list[JobMonitor] = []

    def make() -> JobMonitor:
        monitor = JobMonitor(store=server.url, flush_interval=0.2, instance_ttl=2.0)
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.shutdown()


def document(monitor: JobMonitor) -> tuple[int, dict[str, Any]]:
    app = Starlette(routes=routes(monitor, registry=CollectorRegistry()))
    with client_for(app) as client:
        response = client.get(HEALTH_PATH)
    return response.status_code, response.json()


def whole_again(check: Callable[[], bool]) -> float:
    """Seconds until `check()` holds (at most `BACK_WITHIN_SECONDS`, else the test fails)."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < BACK_WITHIN_SECONDS, "the fleet's view is not whole again in time"
        time.sleep(0.05)  # another process's writes: nothing here to wait on
    return time.monotonic() - started


def counted(monitor: JobMonitor, name: str) -> tuple[int, int, int]:
    status = monitor.status(name)
    if status is None:
        return (0, 0, 0)
    return status.success_count, status.failure_count, len(monitor.history(name))


def test_redis_stopped_and_started_again_loses_nothing(
    server: RedisServer, monitors: Callable[[], JobMonitor]
) -> None:
    worker, web = monitors(), monitors()
    succeed(worker, "steady", 5)
    assert worker.flush()
    assert counted(web, "steady") == (5, 0, 5)
    server.stop(keep_data=True)
    succeed(worker, "steady", 50)  # nothing waits for the store, nothing raises
    # At its next read of the store (within a flush interval), the process's own view.
    whole_again(lambda: document(web)[1]["store"] == "unavailable")
    code, body = document(web)
    assert code != 500
    assert body["scope"] == "process"
    assert "Connection" in body["store_error"]
    assert not worker.flush(timeout=0.5)
    server.start()
    whole_again(lambda: counted(web, "steady") == (55, 0, 55))
    code, body = document(web)
    assert (code, body["scope"], body["store"]) == (200, "fleet", "ok")


def test_redis_restarted_empty_is_given_the_live_processes_views_again(
    server: RedisServer, monitors: Callable[[], JobMonitor]
) -> None:
    worker, web = monitors(), monitors()
    succeed(worker, "report", 3)
    with pytest.raises(RuntimeError), worker.run("billing"):
        raise RuntimeError("card refused")
    assert worker.flush()
    assert counted(web, "report") == (3, 0, 3)
    server.stop(keep_data=False)
    server.start()  # empty: every key is gone
    whole_again(
        lambda: (
            counted(web, "report")[:2] == (3, 0)
            and counted(web, "billing")[:2] == (0, 1)
            and len(web.instances()) == 2
        )
    )
    status = web.status("billing")
    assert status is not None
    assert status.last_error == "RuntimeError: card refused"
    assert status.consecutive_failures == 1


def test_a_redis_that_answers_slowly_costs_jobs_nothing_and_the_route_answers(
    server: RedisServer, monitors: Callable[[], JobMonitor]
) -> None:
    worker, web = monitors(), monitors()
    succeed(worker, "steady", 3)
    assert worker.flush()
    asleep = threading.Event()

    def block() -> None:
        client = redis.Redis.from_url(server.url)
        try:
            asleep.set()
            client.execute_command("DEBUG", "SLEEP", "3")  # type: ignore[no-untyped-call]
        finally:
            client.close()

    blocker = threading.Thread(target=block)
    blocker.start()
    try:
        assert asleep.wait(10)
        time.sleep(0.1)  # let DEBUG SLEEP reach the server: it has no reply until it ends
        started = time.monotonic()
        succeed(worker, "steady", 20)  # runs never wait for the store
        ran = time.monotonic() - started
        code, body = document(web)
        answered = time.monotonic() - started
    finally:
        blocker.join()
    assert ran < 1.0, f"20 runs took {ran:.2f} s while Redis slept"
    assert code != 500
    assert answered < 3.0  # a read gives up after its socket timeout (1 s)
    assert (body["scope"], body["store"]) == ("process", "unavailable")
    assert "Timeout" in body["store_error"]
    whole_again(lambda: counted(web, "steady") == (23, 0, 23))


class AsleepAtTheNextWrite:
    """Redis falls asleep (``DEBUG SLEEP``, longer than the store's 1 s socket timeout)
    just before `store` sends its next write's script: the script waits in Redis, its reply
    is lost to the store, and Redis runs it when it wakes, unless it is killed first."""

    def __init__(self, store: RedisStore, url: str, seconds: float) -> None:
        self._store, self._url, self._seconds = store, url, seconds
        self._persist = store._persist
        store._persist = self  # type: ignore[assignment]
        self._sleeper: threading.Thread | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._store._persist = self._persist  # once
        self._sleeper = threading.Thread(target=self._sleep)
        self._sleeper.start()
        probe = redis.Redis.from_url(self._url, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:  # until a PING goes unanswered: asleep
                try:
                    probe.ping()
                except redis.TimeoutError:
                    break
        finally:
            probe.close()
        return self._persist(*args, **kwargs)

    def _sleep(self) -> None:
        client = redis.Redis.from_url(self._url)
        try:
            client.execute_command("DEBUG", "SLEEP", str(self._seconds))  # type: ignore[no-untyped-call]
        except redis.ConnectionError:
            pass  # killed in its sleep
        finally:
            client.close()

    def join(self) -> None:
        if self._sleeper is not None:
            self._sleeper.join()


def lost_reply_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any("UnsureWrite" in record.getMessage() for record in caplog.records)


def test_a_write_whose_reply_was_lost_but_that_redis_ran_is_counted_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{server.url}?prefix=lost:"
    store = open_store(url)
    assert isinstance(store, RedisStore)
    worker = JobMonitor(store=store, flush_interval=0.2, instance_ttl=2.0)
    web = JobMonitor(store=url, flush_interval=0.2, instance_ttl=2.0)
    try:
        succeed(worker, "steady", 5)
        assert worker.flush()
        assert counted(web, "steady") == (5, 0, 5)
        asleep = AsleepAtTheNextWrite(store, server.url, 1.5)
        succeed(worker, "steady", 7)
        assert worker.flush(timeout=10)  # settled once Redis woke: taken, or refused
        asleep.join()
        assert lost_reply_logged(caplog)
        assert counted(web, "steady") == (12, 0, 12)
        succeed(worker, "steady")  # and nothing comes late: the next write counts one
        assert worker.flush()
        whole_again(lambda: counted(web, "steady") == (13, 0, 13))
    finally:
        worker.shutdown()
        web.shutdown()


def test_a_write_whose_reply_was_lost_as_redis_crashed_is_written_again_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{server.url}?prefix=lost:"
    store = open_store(url)
    assert isinstance(store, RedisStore)
    worker = JobMonitor(store=store, flush_interval=0.2, instance_ttl=2.0)
    web = JobMonitor(store=url, flush_interval=0.2, instance_ttl=2.0)
    try:
        succeed(worker, "steady", 5)
        assert worker.flush()
        assert counted(web, "steady") == (5, 0, 5)
        client = redis.Redis.from_url(server.url)
        try:
            client.save()  # what Redis will come back with
        finally:
            client.close()
        asleep = AsleepAtTheNextWrite(store, server.url, 5)
        succeed(worker, "steady", 7)
        assert not worker.flush(timeout=1.2)  # the reply is lost after 1 s: still asleep
        server.crash()  # the write never ran
        asleep.join()
        server.start()
        whole_again(lambda: counted(web, "steady") == (12, 0, 12))
        assert lost_reply_logged(caplog)
        succeed(worker, "steady")  # and nothing comes late: the next write counts one
        assert worker.flush()
        whole_again(lambda: counted(web, "steady") == (13, 0, 13))
    finally:
        worker.shutdown()
        web.shutdown()


def test_a_wrong_password_is_refused_at_construction_naming_the_url_without_it(
    server: RedisServer,
) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("requirepass", "right")
        url = server.url.replace("redis://", "redis://:wrong-secret@")
        with pytest.raises(StoreError, match=r"store redis://:\*\*\*@127\.0\.0\.1") as raised:
            JobMonitor(store=url)
        assert "wrong-secret" not in str(raised.value)
        good = JobMonitor(store=server.url.replace("redis://", "redis://:right@"))
        try:
            succeed(good, "ok")
            assert good.flush()
        finally:
            good.shutdown()
    finally:
        client.execute_command("AUTH", "right")  # type: ignore[no-untyped-call]
        client.config_set("requirepass", "")
        client.close()


def test_an_unreachable_redis_at_start_is_no_error_and_is_used_once_it_answers(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    url = server.url
    server.stop(keep_data=False)
    monitor = JobMonitor(store=url, flush_interval=0.2, instance_ttl=2.0)
    try:
        succeed(monitor, "early")
        code, body = document(monitor)
        assert (code, body["store"]) == (200, "unavailable")
        server.start()
        whole_again(lambda: monitor.flush(timeout=0.5) and counted(monitor, "early")[0] == 1)
    finally:
        monitor.shutdown()
        server.kill()


def test_a_prefix_keeps_two_services_on_one_redis_apart(redis_url: str) -> None:
    shop = JobMonitor(store=redis_url, service_name="shop")
    billing = JobMonitor(store=redis_url, service_name="billing")
    shared = JobMonitor(store=f"{redis_url}?prefix=jobpulse::shop:")
    try:
        succeed(shop, "cart_cleanup")
        succeed(billing, "invoices")
        for monitor in (shop, billing, shared):
            assert monitor.flush()
        assert set(shop.statuses()) == {"cart_cleanup"}
        assert set(billing.statuses()) == {"invoices"}
        assert set(shared.statuses()) == {"cart_cleanup"}  # the shop's keys, by ?prefix=
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            keys = client.keys("jobpulse::*")
        finally:
            client.close()
        assert {str(key).split(":")[2] for key in keys} == {"shop", "billing"}
    finally:
        for monitor in (shop, billing, shared):
            monitor.shutdown()


def test_a_bad_redis_url_is_refused_clearly() -> None:
    with pytest.raises(StoreError, match=r"empty \?prefix="):
        JobMonitor(store="redis://127.0.0.1:1/0?prefix=")
    with pytest.raises(StoreError, match=r"store redis://:\*\*\*@host:notaport/0: Port"):
        JobMonitor(store="redis://:hunter2@host:notaport/0")
    with pytest.raises(StoreError, match=r"store redis://:\*\*\*@host:notaport/0") as raised:
        JobMonitor(store="redis://:p@ss@host:notaport/0")  # the password is "p@ss"
    assert "ss@" not in str(raised.value)
    with pytest.raises(StoreError, match="Invalid IPv6 URL"):
        JobMonitor(store="redis://:pw@[::1:6379/0")
    with pytest.raises(StoreError, match="decode_responses is not supported"):
        JobMonitor(store="redis://127.0.0.1:1/0?decode_responses=true")


def test_a_store_that_lost_its_meta_but_kept_the_rest_starts_again_from_the_live_views(
    server: RedisServer, monitors: Callable[[], JobMonitor]
) -> None:
    # As `maxmemory allkeys-lru` may evict it on a shared Redis: a store that has rows but
    # no id is emptied and re-seeded, never added to (a seq starting again at 1 would also
    # clash with the history's entries, and every write would fail halfway through).
    worker, web = monitors(), monitors()
    succeed(worker, "report", 3)
    assert worker.flush()
    assert counted(web, "report") == (3, 0, 3)
    client = redis.Redis.from_url(server.url)
    try:
        (meta,) = client.keys("*:meta")
        client.delete(meta)
    finally:
        client.close()
    succeed(worker, "report", 2)
    whole_again(lambda: counted(web, "report")[:2] == (5, 0))
    assert worker.flush()
    assert counted(worker, "report")[:2] == (5, 0)


def test_redis_back_from_an_older_snapshot_is_one_view_for_old_and_new_readers(
    server: RedisServer, monitors: Callable[[], JobMonitor]
) -> None:
    # A restart from its last RDB save (or AOF everysec's last second): the writes after it
    # are gone for every process alike; a reader that had read them reads everything again.
    worker, web = monitors(), monitors()
    succeed(worker, "kept", 2)
    assert worker.flush()
    client = redis.Redis.from_url(server.url)
    try:
        client.save()
        succeed(worker, "gone")
        assert worker.flush()
        whole_again(lambda: counted(web, "gone") == (1, 0, 1))
        client.execute_command("DEBUG", "RELOAD", "NOSAVE")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    succeed(worker, "kept")
    assert worker.flush()
    whole_again(lambda: web.status("gone") is None and counted(web, "kept") == (3, 0, 3))
    fresh = monitors()
    assert (fresh.status("gone"), counted(fresh, "kept")) == (None, (3, 0, 3))


def test_a_closed_store_keeps_no_connection_for_a_later_read(redis_url: str) -> None:
    monitor = JobMonitor(store=f"{redis_url}?prefix=closed:")
    client = redis.Redis.from_url(redis_url)
    try:
        succeed(monitor, "job")
        assert monitor.flush()
        monitor.shutdown()
        before = len(client.client_list())
        assert counted(monitor, "job") == (1, 0, 1)  # read after the shutdown: still served
        assert len(client.client_list()) == before
    finally:
        client.close()
