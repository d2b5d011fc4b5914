"""The icy-backend demo (examples/icy_backend) run as `make demo` runs it, for the tests that
need it: a real process serving real HTTP on 127.0.0.1.

::

    demo = start_demo(tmp_path, {"INDEX_INTERVAL": "1", "PORT": "0"})
    ...  # demo.base_url is "http://127.0.0.1:PORT"
    demo.kill()

The demo's output goes to files in the directory given, so that a full pipe never blocks it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

__all__ = [
    "DEMO_COMMAND",
    "HEALTH_PATH",
    "POLL_SECONDS",
    "READY",
    "READY_TIMEOUT_SECONDS",
    "ROOT",
    "AppProcess",
    "Demo",
    "poll",
    "start_demo",
    "store_url",
]

ROOT = Path(__file__).resolve().parent.parent
#: `make demo` runs ``$(PY) -m examples.icy_backend`` (tests/test_demo.py checks it) from the
#: repository root.
DEMO_COMMAND = (sys.executable, "-m", "examples.icy_backend")
HEALTH_PATH = "/api/v1/health/jobs"
POLL_SECONDS = 0.15
READY_TIMEOUT_SECONDS = 30.0
#: The banner line the demo prints once it listens: ``  health:   http://HOST:PORT/api/...``.
READY = re.compile(r"health:\s+(http://\S+?)" + re.escape(HEALTH_PATH) + r"\s")

T = TypeVar("T")
P = TypeVar("P", bound="AppProcess")


@dataclass
class AppProcess:
    """A server started by a test; its output goes to files, so a full pipe never blocks it."""

    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    base_url: str = ""

    @classmethod
    def launch(
        cls: type[P],
        command: Sequence[str],
        directory: Path,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> P:
        """Start `command` in the repository root; its stdout and stderr go to
        ``directory/NAME.out`` and ``.err``. Does not wait: see `wait_ready`."""
        stdout_path = directory / f"{name}.out"
        stderr_path = directory / f"{name}.err"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        return cls(process, stdout_path, stderr_path)

    def wait_ready(self, ready: re.Pattern[str], what: str) -> None:
        """Set `base_url` from the first match of `ready` (its group 1) in the output, once
        the process prints it (at most 30 s). Fails the test, killing the process first, if it
        exits or stays silent."""

        def url() -> str | None:
            out, err = self.output()
            if self.process.poll() is not None:
                pytest.fail(f"{what} exited with {self.process.returncode}:\n{err}")
            match = ready.search(out)
            return match[1] if match else None

        started = False
        try:
            self.base_url = poll(url, READY_TIMEOUT_SECONDS, f"{what}'s ready line")
            started = True
        finally:
            if not started:
                self.kill()

    @property
    def address(self) -> str:
        """``host:port``, as a Prometheus scrape target names it."""
        return self.base_url.removeprefix("http://")

    def output(self) -> tuple[str, str]:
        return (
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )

    def kill(self) -> None:
        """SIGKILL the process if it is still running, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Demo(AppProcess):
    """A running demo process."""

    def stop(self, signum: signal.Signals) -> tuple[int, float]:
        """Send `signum`; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout=15)
        return code, time.monotonic() - started


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `check` every POLL_SECONDS until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def store_url(directory: Path, name: str = "demo") -> str:
    """The URL of the SQLite store `start_demo` gives a demo called `name` by default."""
    return f"sqlite:///{directory / name}.db"


def start_demo(directory: Path, settings: Mapping[str, str], name: str = "demo") -> Demo:
    """Start the demo with the environment of this process less its ``OTEL_*`` variables,
    plus `settings`; its stdout and stderr go to ``directory/NAME.out`` and ``.err``, and
    its store is ``directory/NAME.db`` unless `settings` name one (``JOBPULSE_STORE``), so
    that no test writes into the repository's ``.jobpulse/``.

    Blocks until the demo prints its ready line (at most 30 s) and fails the test if it
    exits or stays silent, killing it first. The caller kills (or stops) the returned demo.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["JOBPULSE_STORE"] = store_url(directory, name)
    env.update(settings)
    demo = Demo.launch(DEMO_COMMAND, directory, name, env)
    demo.wait_ready(READY, "the demo")
    return demo
