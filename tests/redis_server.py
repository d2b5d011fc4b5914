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

from tests.prometheus_server import free_port, require_binary, stop_process

__all__ = ["flush", "running_redis"]

READY_TIMEOUT_SECONDS = 20.0


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@contextmanager
def running_redis(directory: Path) -> Iterator[str]:
    """Run ``redis-server`` until the block exits; yield its URL (database 0).

    Blocks until the server answers PING (at most 20 s); skips or fails when the binary is
    missing; retries on another port if the one chosen was taken meanwhile.
    """
    binary = require_binary("redis-server")
    log_path = directory / "redis.log"
    for _attempt in range(3):
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(directory),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while process.poll() is None and time.monotonic() < deadline:
                if _ping(url):
                    yield url
                    return
                time.sleep(0.05)
            if process.poll() is None:
                pytest.fail(f"redis-server did not answer within {READY_TIMEOUT_SECONDS:g} s")
            if "Address already in use" not in log_path.read_text(errors="replace"):
                pytest.fail(
                    f"redis-server exited at start ({process.returncode}); its log:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
        finally:
            stop_process(process)
    pytest.fail("redis-server found its port taken three times")


def flush(url: str) -> None:
    """Empty every database of the server at `url` (queues, results, beat state)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
