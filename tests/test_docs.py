"""Every Python code block in README.md and docs/ runs as written."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CELERY_SDK, SDK_VERSION, needs_celery

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks_in(text: str) -> list[str]:
    """The code of each ```python block of a Markdown `text`, in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def blocks_of(document: Path) -> list[str]:
    """The code of each ```python block of the Markdown file `document`, in order."""
    return blocks_in(document.read_text())


def _blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        for index, code in enumerate(blocks_of(document)):
            blocks.append((f"{document.relative_to(ROOT)}#{index + 1}", code))
    return blocks


def _block_params() -> list[Any]:
    """The blocks as parameters; one that uses Celery needs jobpulse[celery] (`needs_celery`)."""
    uses_celery = re.compile(r"^\s*(from|import) (celery|jobpulse\.integrations\.celery)\b", re.M)
    return [
        pytest.param(
            where, code, id=where, marks=[needs_celery] if uses_celery.search(code) else []
        )
        for where, code in _blocks()
    ]


def test_documents_have_code() -> None:
    assert len(_blocks()) >= 5


@pytest.mark.usefixtures("otel_globals")  # blocks may call jobpulse.setup()
@pytest.mark.parametrize(("where", "code"), _block_params())
def test_code_block_runs(
    where: str,
    code: str,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "REDIS_URL" in code:  # a block on a Redis store: the session's server, a prefix of its own
        server = request.getfixturevalue("redis_url")
        monkeypatch.setenv("REDIS_URL", f"{server}?prefix=docs:{uuid.uuid4().hex}:")
    namespace: dict[str, object] = {"__name__": f"docs_{where}"}
    exec(compile(code, where, "exec"), namespace)
    monitor = namespace.get("monitor")
    shutdown = getattr(monitor, "shutdown", None)
    if callable(shutdown):
        shutdown()


def _row(document: str, field: str) -> str:
    """The line of the field table in docs/`document` that describes `field`."""
    text = (ROOT / "docs" / document).read_text()
    (line,) = [line for line in text.splitlines() if line.startswith(f"| `{field}` |")]
    return line


def test_the_last_error_row_says_what_the_code_does() -> None:
    from jobpulse import JobMonitor
    from jobpulse._errors import MAX_ERROR_CHARS

    monitor = JobMonitor()
    with pytest.raises(RuntimeError), monitor.run("job"):
        raise RuntimeError("x" * 5000)
    failed = monitor.status("job")
    with monitor.run("job"):
        pass
    succeeded = monitor.status("job")
    monitor.shutdown()
    assert failed is not None
    assert succeeded is not None
    row = _row("api.md", "last_error")
    kept = ("RuntimeError: " + "x" * 5000)[:MAX_ERROR_CHARS]
    assert (failed.last_error or "").startswith(kept + "… [")
    assert (failed.last_error or "").endswith(" more characters]")
    assert f"past {MAX_ERROR_CHARS:,} characters cut there" in row
    assert succeeded.last_error is None
    assert "`null` again after a success" in row


def test_every_error_category_is_documented() -> None:
    from jobpulse._shared import CATEGORIES, LOST

    categories = [*CATEGORIES, LOST]
    if SDK_VERSION >= CELERY_SDK:  # else no Celery here: checked in `make test`
        from jobpulse.integrations import celery

        categories += [
            celery.RETRY,
            celery.TIME_LIMIT,
            celery.WORKER_LOST,
            celery.REVOKED,
            celery.REJECTED,
        ]
    row = _row("api.md", "last_error_category")
    concepts = (ROOT / "docs" / "concepts.md").read_text().split("## Errors", 1)[1]
    for category in categories:
        assert f"`{category}`" in row, category
        assert f"`{category}`" in concepts, category


def test_the_readme_says_where_exemplars_appear() -> None:
    (row,) = [line for line in README.read_text().splitlines() if line.startswith("| Metrics |")]
    assert "over OTLP" in row
    assert "the app's own `/metrics` has none" in row
