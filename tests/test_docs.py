"""Every Python code block in README.md and docs/ runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        for index, match in enumerate(_BLOCK.finditer(document.read_text())):
            blocks.append((f"{document.relative_to(ROOT)}#{index + 1}", match.group(1)))
    return blocks


def test_documents_have_code() -> None:
    assert len(_blocks()) >= 5


@pytest.mark.usefixtures("otel_globals")  # blocks may call jobpulse.setup()
@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[where for where, _ in _blocks()])
def test_code_block_runs(where: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{where}"}
    exec(compile(code, where, "exec"), namespace)
    monitor = namespace.get("monitor")
    shutdown = getattr(monitor, "shutdown", None)
    if callable(shutdown):
        shutdown()
