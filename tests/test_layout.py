"""The layout rule of ../shared/STYLE.md 14: integrations and the store import from the core
only the public API (`jobpulse`) and `jobpulse._shared`, besides their own package, and
never a private name of another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jobpulse

PACKAGE = Path(jobpulse.__file__).parent
#: The packages held to the rule; one that does not exist yet is checked once it does.
RULED = ("integrations", "store")
ALLOWED = ("jobpulse", "jobpulse._shared")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def violations(source: str, module: str, own: str, *, is_package: bool = False) -> list[str]:
    """What `source` (the text of `module`, in the package `own`) imports against the rule."""
    found = []
    for node in ast.walk(ast.parse(source)):
        imported: list[tuple[str, str | None]]
        if isinstance(node, ast.Import):
            imported = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            imported = [(base, alias.name) for alias in node.names]
        else:
            continue
        for source_module, name in imported:
            if source_module != "jobpulse" and not source_module.startswith("jobpulse."):
                continue
            inside = source_module == own or source_module.startswith(own + ".")
            where = f"{module}:{node.lineno}"
            if not inside and source_module not in ALLOWED:
                found.append(f"{where} imports from {source_module}")
            elif name is not None and name.startswith("_") and not inside:
                found.append(f"{where} imports the private name {name} from {source_module}")
    return found


def _ruled_files() -> list[tuple[Path, str]]:
    return [
        (path, f"jobpulse.{package}")
        for package in RULED
        for path in sorted((PACKAGE / package).rglob("*.py"))
    ]


def test_integrations_and_the_store_import_only_the_public_api_and_shared() -> None:
    files = _ruled_files()
    assert any(own == "jobpulse.integrations" for _, own in files)
    found = [
        problem
        for path, own in files
        for problem in violations(
            path.read_text(), _module_name(path), own, is_package=path.name == "__init__.py"
        )
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "from jobpulse._registry import StatusRegistry",
        "from jobpulse import _errors",
        "import jobpulse._monitor",
        "from jobpulse._shared import _private",
        "def f():\n    from jobpulse._guard import Guard",
        "from .. import _setup",
        "from ..store import Store",
    ],
)
def test_the_rule_catches(source: str) -> None:
    assert violations(source, "jobpulse.integrations.celery", "jobpulse.integrations") != []


@pytest.mark.parametrize(
    "source",
    [
        "from jobpulse import JobMonitor",
        "from jobpulse._shared import JOB_NAME, Guard",
        "from jobpulse.integrations._common import MonitorChoice",
        "from . import _common",
        "from ._common import require_version",
        "import celery",
        "from opentelemetry import trace",
    ],
)
def test_the_rule_allows(source: str) -> None:
    assert violations(source, "jobpulse.integrations.celery", "jobpulse.integrations") == []
