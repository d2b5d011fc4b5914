"""The run on the lowest versions (`make test-lowest`) stays true to what pyproject.toml
declares: its pins are the declared floors, it installs every extra but celery, and the test
modules it skips for want of Celery are exactly those that import Celery."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import CELERY_MODULES, CELERY_SDK

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints" / "lowest.txt"


def _declared() -> list[tuple[Requirement, str | None]]:
    """jobpulse's requirements, each with the extra that asks for it (None: the core)."""
    declared = []
    for line in requires("jobpulse") or []:
        requirement = Requirement(line)
        extra = re.search(r"extra == \"(\w+)\"", str(requirement.marker or ""))
        declared.append((requirement, extra.group(1) if extra else None))
    return declared


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        requirement = line.partition("#")[0].strip()
        if requirement:
            name, _, pinned = requirement.partition("==")
            pins[name] = Version(pinned)
    return pins


def _floor(requirement: Requirement) -> Version:
    (floor,) = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return floor


def test_each_opentelemetry_floor_outside_celery_is_pinned_at_that_version() -> None:
    pins = _pins()
    declared = [
        (requirement, extra)
        for requirement, extra in _declared()
        if requirement.name.startswith("opentelemetry-") and extra not in ("all", "celery")
    ]
    assert {requirement.name for requirement, _ in declared} <= set(pins)
    for requirement, extra in declared:
        assert pins[requirement.name] == _floor(requirement), (requirement, extra)


def test_the_celery_extra_needs_the_sdk_the_lowest_run_skips_celery_below() -> None:
    [sdk] = [
        requirement
        for requirement, extra in _declared()
        if extra == "celery" and requirement.name == "opentelemetry-sdk"
    ]
    assert _floor(sdk).release[:2] == CELERY_SDK
    assert _pins()["opentelemetry-sdk"].release[:2] < CELERY_SDK


def test_the_lowest_run_installs_every_extra_but_celery() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (extras,) = re.findall(r"^LOWEST_EXTRAS := (\S+)$", makefile, re.MULTILINE)
    (everything,) = re.findall(r"jobpulse\[([\w,]+)\]", (ROOT / "pyproject.toml").read_text())
    assert set(extras.split(",")) == set(everything.split(",")) - {"celery"} | {"dev"}


def test_the_modules_skipped_without_celery_are_those_that_import_it() -> None:
    imports_celery = re.compile(
        r"^(from|import) (celery|kombu|billiard)\b"
        r"|^from jobpulse\.integrations(\.celery| import celery)\b"
        r"|^from tests(\.celery_| import .*\bcelery_)",
        re.MULTILINE,
    )
    importing = {
        module.name
        for module in (ROOT / "tests").glob("test_*.py")
        if imports_celery.search(module.read_text())
    }
    assert importing == CELERY_MODULES
