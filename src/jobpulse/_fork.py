"""Resetting per-process state in a child after ``fork()``."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

__all__ = ["after_fork_in_child"]


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound `method` in every child forked from now on, while its object lives.

    Locks may be held by threads the child does not have, and threads do not survive a
    fork: the method makes fresh ones. Holds the object only weakly.
    """
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    ref = weakref.WeakMethod(method)

    def after_in_child() -> None:  # pragma: no cover - runs in the child only
        bound = ref()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=after_in_child)
