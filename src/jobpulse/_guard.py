"""The one guard between jobpulse's own bugs and the host program.

OpenTelemetry calls span processors without any protection: an exception in ``on_end``
would surface inside the user's ``with`` block. So every hook body (processor, watchdog,
metric callbacks, integrations) runs as ``with Guard("where"): ...``, which logs the
exception and swallows it. The job never sees it.

Tests register a hook with `add_internal_error_hook` and fail on anything swallowed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = [
    "Guard",
    "add_internal_error_hook",
    "remove_internal_error_hook",
    "report_internal_error",
]

logger = logging.getLogger("jobpulse")

InternalErrorHook = Callable[[str, BaseException], None]

_hooks: list[InternalErrorHook] = []
_counts: dict[str, int] = {}
_counts_lock = threading.Lock()


def add_internal_error_hook(hook: InternalErrorHook) -> None:
    """Call `hook(where, exc)` for every internal error the guard swallows."""
    _hooks.append(hook)


def remove_internal_error_hook(hook: InternalErrorHook) -> None:
    _hooks.remove(hook)


def report_internal_error(where: str, exc: BaseException) -> None:
    """Log an internal error (the 1st, 2nd, 4th, 8th, ... at each place) and tell the hooks."""
    with _counts_lock:
        count = _counts.get(where, 0) + 1
        _counts[where] = count
    if count & (count - 1) == 0:
        logger.error(
            "jobpulse internal error in %s (occurrence %d); the job is not affected",
            where,
            count,
            exc_info=exc,
        )
    for hook in list(_hooks):
        hook(where, exc)


class Guard:
    """A reusable context manager that swallows and reports any `Exception` raised inside.

    `BaseException`s that are not `Exception`s (KeyboardInterrupt, SystemExit) pass through.
    Create one per call site, at import time, so that entering it allocates nothing.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        report_internal_error(self.where, exc)
        return True
