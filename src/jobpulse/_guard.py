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
    "report_foreign_error",
    "report_internal_error",
    "swallow",
]

logger = logging.getLogger("jobpulse")

InternalErrorHook = Callable[[str, BaseException], None]

_hooks: list[InternalErrorHook] = []
_counts: dict[str, int] = {}
_foreign_counts: dict[str, int] = {}
_counts_lock = threading.Lock()


def add_internal_error_hook(hook: InternalErrorHook) -> None:
    """Call `hook(where, exc)` for every internal error the guard swallows."""
    _hooks.append(hook)


def remove_internal_error_hook(hook: InternalErrorHook) -> None:
    _hooks.remove(hook)


def _occurrence(counts: dict[str, int], where: str) -> int:
    with _counts_lock:
        count = counts[where] = counts.get(where, 0) + 1
    return count


def report_internal_error(where: str, exc: BaseException) -> None:
    """Log an internal error (the 1st, 2nd, 4th, 8th, ... at each place) and tell the hooks.

    Never raises: logging that fails (a job near the recursion limit) is given up."""
    count = _occurrence(_counts, where)
    try:
        if count & (count - 1) == 0:
            logger.error(
                "jobpulse internal error in %s (occurrence %d); the job is not affected",
                where,
                count,
                exc_info=exc,
            )
    except Exception:  # noqa: BLE001 - nowhere left to report it
        pass
    for hook in list(_hooks):
        hook(where, exc)


def report_foreign_error(where: str, exc: BaseException, consequence: str) -> None:
    """Log an exception that the application's own code (one of its span processors or
    samplers) raised into a run's start or end: at the 1st, 2nd, 4th, 8th, ... occurrence,
    with its traceback the first time. `consequence` says what became of the run. Not an
    internal error of jobpulse's: the hooks are not told. Never raises."""
    count = _occurrence(_foreign_counts, where)
    try:
        if count & (count - 1) == 0:
            logger.warning(
                "%s raised %s (occurrence %d); the job is not affected: %s",
                where,
                type(exc).__name__,
                count,
                consequence,
                exc_info=exc if count == 1 else None,
            )
    except Exception:  # noqa: BLE001 - nowhere left to report it
        pass


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
        swallow(self.where, exc)
        return True


def swallow(where: str, exc: Exception) -> None:
    """What `Guard` does with an exception: for a hot path's own ``try``/``except
    Exception``, which costs less than entering a context manager. Never raises."""
    try:  # noqa: SIM105 - one context manager fewer at the recursion limit
        report_internal_error(where, exc)
    except RecursionError:  # at the recursion limit even the call can fail
        pass
