"""The README's quick start (examples/quickstart_app.py): what the README shows is the file,
and the app, served by a real uvicorn, stays healthy while its scheduler runs the job."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.demo_process import HEALTH_PATH, READY_TIMEOUT_SECONDS, ROOT, AppProcess, poll
from tests.test_docs import blocks_in

APP = ROOT / "examples" / "quickstart_app.py"
JOB = "btc_transaction_indexing"
EVERY_SECONDS = 2
GRACE_SECONDS = 1.0  # 10% of the period, at least 1 s
#: uvicorn's line once it listens, on stderr (port 0 is shown as the port it bound).
READY = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def code_of(path: Path) -> str:
    """The file's code, without its module docstring."""
    text = path.read_text()
    return text[text.index('"""', 3) + 3 :].lstrip("\n")


def test_the_readme_quick_start_is_the_example_file() -> None:
    readme = ROOT / "README.md"
    quick_start = readme.read_text().split("## Quick start", 1)[1]
    first_block = blocks_in(quick_start)[0]
    assert first_block == code_of(APP)


def start(directory: Path) -> AppProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["EVERY_SECONDS"] = str(EVERY_SECONDS)
    command = [sys.executable, "-m", "uvicorn", "examples.quickstart_app:app"]
    app = AppProcess.launch(
        [*command, "--host", "127.0.0.1", "--port", "0"], directory, "quickstart", env
    )

    def url() -> str | None:
        _, err = app.output()
        if app.process.poll() is not None:
            pytest.fail(f"the quick start exited with {app.process.returncode}:\n{err}")
        match = READY.search(err)
        return match[1] if match else None

    try:
        app.base_url = poll(url, READY_TIMEOUT_SECONDS, "uvicorn's ready line")
    except BaseException:
        app.kill()
        raise
    return app


@pytest.mark.slow
def test_the_quick_start_stays_healthy(tmp_path: Path) -> None:
    app = start(tmp_path)
    watched_seconds = 2 * EVERY_SECONDS + GRACE_SECONDS + 1
    answers: list[tuple[int, dict[str, Any]]] = []
    try:
        with httpx.Client(base_url=app.base_url, timeout=5) as client:
            started = time.monotonic()

            def watched_long_enough() -> bool | None:
                response = client.get(HEALTH_PATH)
                job = response.json()["jobs"][JOB]
                answers.append((response.status_code, job))
                assert response.status_code == 200, job
                assert job["status"] != "missed", job
                assert job["missed_count"] == 0, job
                long_enough = time.monotonic() - started > watched_seconds
                return True if long_enough and job["success_count"] >= 2 else None

            poll(watched_long_enough, 30, "two runs and two periods plus grace")
            assert client.get("/openapi.json").json()["paths"][HEALTH_PATH]
    finally:
        app.process.send_signal(signal.SIGINT)
        try:
            code = app.process.wait(timeout=15)
        finally:
            app.kill()
    _, err = app.output()
    assert code == 0, err
    assert "Traceback" not in err
    assert "Application shutdown complete." in err
    last = answers[-1][1]
    assert last["success_count"] >= 2
    assert last["failure_count"] == 0
    assert last["schedule"] == f"@every {EVERY_SECONDS}s"
    assert last["critical"] is True
    assert {code for code, _ in answers} == {200}
