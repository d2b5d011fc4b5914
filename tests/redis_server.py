"""A real Redis server for tests: Debian's ``redis-server`` on 127.0.0.1 at a free port.

::

    def test_something(redis_url: str) -> None: ...   # redis://127.0.0.1:<port>/0

The `redis_url` fixture (tests/conftest.py) starts a server with `running_redis` once per
test session (``--save '' --appendonly no``: nothing is written to disk) and stops it at
the end; a test that stops and starts its own uses `running_redis`. Without the binary the
tests that use it skip, or fail in CI (``JOBPULSE_REQUIRE_SERVERS=1``), as
`require_binary` decides.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.prometheus_server import (
    STOP_TIMEOUT_SECONDS,
    free_port,
    require_binary,
    stop_process,
)

__all__ = ["RedisServer", "flush", "running_redis"]

READY_TIMEOUT_SECONDS = 20.0


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 that a test may stop and start again on the same
    port, with its data (saved at a stop) or without, and block (``DEBUG SLEEP``)."""

    def __init__(self, directory: Path) -> None:
        self._binary = require_binary("redis-server")
        self._directory = directory
        self._log = directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""

    def start(self) -> str:
        """Start it (on its port if it had one, else a free one); its URL once it answers
        PING (at most 20 s)."""
        for _attempt in range(1 if self.port else 3):
            port = self.port or free_port()
            url = f"redis://127.0.0.1:{port}/0"
            with self._log.open("ab") as log:
                self._process = subprocess.Popen(
                    [
                        *(self._binary, "--port", str(port), "--bind", "127.0.0.1"),
                        *("--save", "", "--appendonly", "no", "--dir", str(self._directory)),
                        *("--enable-debug-command", "yes"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while self._process.poll() is None and time.monotonic() < deadline:
                if _ping(url):
                    self.port, self.url = port, url
                    return url
                time.sleep(0.05)
            if self._process.poll() is None:
                stop_process(self._process)
                pytest.fail(f"redis-server did not answer within {READY_TIMEOUT_SECONDS:g} s")
            if "Address already in use" not in self._log.read_text(errors="replace"):
                pytest.fail(
                    f"redis-server exited at start ({self._process.returncode}); its log:\n"
                    + self._log.read_text(errors="replace")[-4000:]
                )
        pytest.fail("redis-server found its port taken")

    def stop(self, *, keep_data: bool = True) -> None:
        """Stop it, saving its data for the next start, or dropping it."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        client = redis.Redis.from_url(self.url)
        try:
            client.shutdown(save=keep_data, nosave=not keep_data)
        except redis.ConnectionError:
            pass  # it closes the connection as it stops
        finally:
            client.close()
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        finally:
            stop_process(process)
        if not keep_data:
            (self._directory / "dump.rdb").unlink(missing_ok=True)

    def kill(self) -> None:
        if self._process is not None:
            stop_process(self._process)

    def crash(self) -> None:
        """``kill -9`` it: what it had not saved is gone (a `start` loads its last save)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


@contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """Run ``redis-server`` until the block exits; yield its URL (database 0).

    Blocks until the server answers PING (at most 20 s); skips or fails when the binary is
    missing; retries on another port if the one chosen was taken meanwhile.
    """
    server = RedisServer(directory)
    try:
        yield server.start()
    finally:
        server.kill()


def flush(url: str) -> None:
    """Empty every database of the server at `url` (queues, results, beat state)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
