"""Job functions for tests/test_apscheduler.py that a process pool's child imports by
reference (``tests.aps_jobs:...``), so they live at module level in an importable module."""

from __future__ import annotations

import time

__all__ = ["fail", "work"]


class ReportError(Exception):
    """A job's own exception, raised in the child and pickled back to the parent."""


def work(seconds: float) -> str:
    """Sleep `seconds`, then return a value."""
    time.sleep(seconds)
    return "done"


def fail(message: str) -> None:
    """Raise `ReportError(message)`."""
    raise ReportError(message)
