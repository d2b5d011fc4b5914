"""A real uvicorn server on 127.0.0.1 for the tests that talk HTTP over a socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serving(app: Any, name: str = "uvicorn-test") -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1, on a thread of its own (named
    `name`); yields its base URL, and stops it (the thread joined) on the way out."""
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

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()
