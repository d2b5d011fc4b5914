"""A job called near the recursion limit gets its own exceptions: monitoring that runs out of
stack (the span, the registry, logging a failure) gives up quietly instead."""

from __future__ import annotations

import linecache
import logging
import sys
from collections.abc import Callable
from types import TracebackType

import pytest

from jobpulse import JobMonitor
from tests.conftest import InternalErrors


def _at_depth(depth: int, call: Callable[[], object]) -> object:
    if depth <= 0:
        return call()
    return _at_depth(depth - 1, call)


def _innermost(tb: TracebackType | None) -> str:
    """Where the RecursionError was raised: a function of this module, or the decorator's
    wrapper at its call of the job (the job itself did not fit: as if undecorated)."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    assert last is not None
    frame = last.tb_frame
    where = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}"
    if where == "jobpulse._monitor.run_sync":
        # Calling the job, or entering the wrapper at all (a tracer such as coverage's runs
        # at frame entry).
        line = linecache.getline(frame.f_code.co_filename, last.tb_lineno).strip()
        assert line in ("return func(*args, **kwargs)", "@functools.wraps(func)"), line
        return "the call of the job"
    return where


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame.f_back is not None:
        depth, frame = depth + 1, frame.f_back
    return depth + 1


def _recurse(n: int) -> int:
    return _recurse(n + 1)


def test_the_caller_gets_the_jobs_own_errors_at_every_depth_near_the_limit(
    monitor: JobMonitor, caplog: pytest.LogCaptureFixture, internal_errors: InternalErrors
) -> None:
    error = ValueError("declined")

    @monitor.job("deep")
    def deep() -> int:
        return _recurse(0)

    @monitor.job("declines")
    def declines() -> None:
        raise error

    innermost: set[str] = set()
    with caplog.at_level(logging.INFO):  # the failure is logged, which takes stack too
        for margin in range(2, 60):
            depth = sys.getrecursionlimit() - _stack_depth() - margin
            before = monitor.status("deep").failure_count  # type: ignore[union-attr]
            with pytest.raises(RecursionError) as recursion:
                _at_depth(depth, deep)
            innermost.add(_innermost(recursion.value.__traceback__))
            if margin >= 45:  # room enough to record the failure: it is recorded
                assert monitor.status("deep").failure_count == before + 1  # type: ignore[union-attr]
            with pytest.raises((ValueError, RecursionError)) as caught:
                _at_depth(depth, declines)
            if isinstance(caught.value, RecursionError):  # no room to call the job at all
                innermost.add(_innermost(caught.value.__traceback__))
            else:
                assert caught.value is error
    own = {f"{__name__}.{name}" for name in ("_recurse", "_at_depth", "deep", "declines")}
    assert innermost <= {*own, "the call of the job"}, innermost
    assert f"{__name__}._recurse" in innermost
    internal_errors.take()  # monitoring that ran out of stack reports it, where it could
