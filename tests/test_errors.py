from __future__ import annotations

import asyncio
import importlib
import json
import linecache
import os
import re
import socket
import sqlite3
import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobpulse import JobMonitor, _errors
from jobpulse._errors import (
    MAX_ERROR_CHARS,
    MAX_STACKTRACE_CHARS,
    classify_exception,
    classify_names,
    describe_exception,
    exception_event_attributes,
    redact,
    safe_error_text,
    truncate,
)
from jobpulse._exceptions import JobTimeoutError
from jobpulse._shared import CATEGORIES
from tests.conftest import InternalErrors


def _foreign(module: str, name: str, base: type[BaseException] = Exception) -> BaseException:
    """An exception whose class claims to live in `module`, as a driver's would."""
    cls: type[BaseException] = type(name, (base,), {"__module__": module})
    return cls("boom")


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (TimeoutError("slow"), "timeout"),
        (JobTimeoutError("j", 1.0), "timeout"),
        (TimeoutError("x"), "timeout"),
        (_foreign("httpx", "ReadTimeout"), "timeout"),
        (ConnectionRefusedError("nope"), "network"),
        (socket.gaierror("x"), "network"),
        (urllib.error.URLError("x"), "network"),
        (_foreign("requests.exceptions", "ConnectionError"), "network"),
        (sqlite3.OperationalError("locked"), "database"),
        (_foreign("sqlalchemy.exc", "OperationalError"), "database"),
        (_foreign("psycopg.errors", "UniqueViolation"), "database"),
        (urllib.error.HTTPError("u", 500, "m", {}, None), "external_api"),  # type: ignore[arg-type]
        (_foreign("httpx", "HTTPStatusError"), "external_api"),
        (KeyError("k"), "panic"),
        (AttributeError("a"), "panic"),
        (ZeroDivisionError(), "panic"),
        (AssertionError(), "panic"),
        (asyncio.CancelledError(), "cancelled"),
        (KeyboardInterrupt(), "interrupted"),
        (SystemExit(1), "interrupted"),
        (ValueError("bad value"), "unknown"),
    ],
)
def test_classify_by_type(exc: BaseException, category: str) -> None:
    assert classify_exception(exc) == category
    assert category in CATEGORIES


@pytest.mark.parametrize(
    ("message", "category"),
    [
        ("request timed out", "timeout"),
        ("context deadline exceeded", "timeout"),
        ("connection reset by peer", "network"),
        ("network is unreachable", "network"),
        ("database is locked", "database"),
        ("bad SQL syntax", "database"),
        ("external API returned 502", "external_api"),
        ("panic: nil map", "panic"),
        ("the capital of France", "unknown"),  # "api" only as a whole word
        ("", "unknown"),
    ],
)
def test_classify_by_message_when_the_type_says_nothing(message: str, category: str) -> None:
    assert classify_exception(RuntimeError(message)) == category


def test_type_wins_over_message() -> None:
    assert classify_exception(KeyError("database timeout")) == "panic"
    assert classify_names(["ValueError"], "database down") == "database"


def test_subclass_is_classified_by_its_base() -> None:
    class MyDbError(sqlite3.DatabaseError):
        pass

    assert classify_exception(MyDbError("x")) == "database"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://app:s3cr3t@db:5432/x", "postgres://app:***@db:5432/x"),
        ("redis://:hunter2@cache", "redis://:***@cache"),
        ("login failed password=hunter2 for bob", "login failed password=*** for bob"),
        ("PASSWORD: 'hunter2'", "PASSWORD: '***'"),
        ('{"api_key": "abc123", "n": 1}', '{"api_key": "***", "n": 1}'),
        ("GET /x?access_token=abc.def&page=2", "GET /x?access_token=***&page=2"),
        ("Authorization: Bearer eyJhbGciOi.J9x_y-z", "Authorization: Bearer ***"),
        ("header basic dXNlcjpwYXNz", "header basic ***"),
        ("token=abc client_secret=xyz", "token=*** client_secret=***"),
        ("nothing secret here: 42 rows", "nothing secret here: 42 rows"),
        ("https://example.com/path", "https://example.com/path"),
        ("PasswordError: cannot reach db", "PasswordError: cannot reach db"),
        ("auth.TokenExpiredError: token=abc", "auth.TokenExpiredError: token=***"),
        ("TokenExpired: abc", "TokenExpired: ***"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent


def test_truncate() -> None:
    assert truncate("short") == "short"
    long = "x" * (MAX_ERROR_CHARS + 10)
    cut = truncate(long)
    assert cut.startswith("x" * MAX_ERROR_CHARS)
    assert cut.endswith("[10 more characters]")


def test_safe_error_text_redacts_before_truncating() -> None:
    text = "y" * (MAX_ERROR_CHARS - 5) + " password=supersecretvalue"
    safe = safe_error_text(text)
    assert "supersecret" not in safe
    assert "sup" not in safe[MAX_ERROR_CHARS - 6 :]


def test_describe_exception() -> None:
    assert describe_exception(ValueError("bad token=abc")) == "ValueError: bad token=***"
    assert describe_exception(ValueError()) == "ValueError"

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_exception(Unprintable()) == "Unprintable: <unprintable Unprintable>"
    assert classify_exception(Unprintable()) == "unknown"


def test_exception_event_attributes_redact_message_and_stacktrace() -> None:
    try:
        raise ConnectionError("mysql://root:topsecret@db refused")
    except ConnectionError as exc:
        attributes = exception_event_attributes(exc)
    assert attributes["exception.type"] == "ConnectionError"
    assert attributes["exception.message"] == "mysql://root:***@db refused"
    assert "topsecret" not in attributes["exception.stacktrace"]
    assert "Traceback" in attributes["exception.stacktrace"]
    assert attributes["exception.escaped"] == "True"


def test_qualified_type_name() -> None:
    assert _errors.qualified_type_name(ValueError) == "ValueError"
    assert _errors.qualified_type_name(sqlite3.OperationalError) == "sqlite3.OperationalError"
    odd: type[BaseException] = type("Odd", (Exception,), {"__module__": 42})
    assert _errors.qualified_type_name(odd) == "Odd"


# -- encodable text ---------------------------------------------------------------------


def test_error_texts_are_made_encodable() -> None:
    text = safe_error_text("cannot open \udcff.csv: \x00\x1b[31m bad\ttab\nline")
    assert text == "cannot open \\udcff.csv: \\x00\\x1b[31m bad\ttab\nline"
    text.encode()
    clean = "nothing to do here"
    assert safe_error_text(clean) is clean


def test_a_surrogate_in_an_exception_leaves_the_health_document_encodable(
    monitor: JobMonitor,
) -> None:
    undecodable = os.fsdecode(b"report-\xff.csv")  # as os.listdir gives it
    with pytest.raises(FileNotFoundError), monitor.run("import_files"):
        raise FileNotFoundError(f"no such file: {undecodable}")
    status = monitor.status("import_files")
    assert status is not None
    assert status.last_error == "FileNotFoundError: no such file: report-\\udcff.csv"
    _, document = monitor.health_json()
    assert json.loads(document)["jobs"]["import_files"]["last_error"] == status.last_error
    monitor.health().to_json()


def test_exception_event_attributes_are_encodable() -> None:
    try:
        raise ValueError("bad \udcff name \x00")
    except ValueError as exc:
        attributes = exception_event_attributes(exc)
    assert attributes["exception.message"] == "bad \\udcff name \\x00"
    for value in attributes.values():
        value.encode()


# -- caps on exception events ---------------------------------------------------------------


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - the test's own exception
        return caught


def test_exception_message_is_capped_like_last_error() -> None:
    exc = _raised(ValueError("m" * 10_000_000))
    attributes = exception_event_attributes(exc)
    message = attributes["exception.message"]
    assert message.startswith("m" * MAX_ERROR_CHARS)
    assert message.endswith(f"… [{10_000_000 - MAX_ERROR_CHARS} more characters]")
    stacktrace = attributes["exception.stacktrace"]
    assert len(stacktrace) <= MAX_STACKTRACE_CHARS
    assert f"ValueError: {message}\n" in stacktrace
    assert describe_exception(exc) == (
        f"ValueError: {'m' * (MAX_ERROR_CHARS - 12)}… [{10_000_000 - MAX_ERROR_CHARS + 12}"
        " more characters]"
    )


def test_only_the_kept_part_of_a_huge_message_is_examined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    examined: list[int] = []
    real_redact = _errors.redact

    def spy(text: str) -> str:
        examined.append(len(text))
        return real_redact(text)

    monkeypatch.setattr(_errors, "redact", spy)
    exc = _raised(ValueError("token=" + "m" * 10_000_000))
    exception_event_attributes(exc)
    describe_exception(exc)
    classify_exception(exc)
    assert examined
    assert max(examined) <= MAX_STACKTRACE_CHARS + 4 * MAX_ERROR_CHARS


def _recurse(depth: int) -> None:
    # two alternating frames, so that Python's "repeated" folding does not apply
    if depth == 0:
        raise RuntimeError("innermost password=hunter2")
    _other(depth - 1)


def _other(depth: int) -> None:
    _recurse(depth)


def test_stack_trace_keeps_the_innermost_frames_and_the_exception_line() -> None:
    exc = _capture(lambda: _recurse(400))
    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert len(stacktrace) <= MAX_STACKTRACE_CHARS
    assert stacktrace.startswith("Traceback (most recent call last):\n  [")
    left_out = re.search(r"\[(\d+) frames left out\]", stacktrace)
    assert left_out is not None
    shown = stacktrace.count('  File "')
    assert int(left_out[1]) + shown == 2 * 400 + 1 + 2  # _recurse/_other, lambda, _capture
    assert stacktrace.endswith("RuntimeError: innermost password=***\n")
    assert "hunter2" not in stacktrace
    assert "in _recurse\n" in stacktrace.splitlines(keepends=True)[-2]


def _capture(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test's own exception
        return exc
    raise AssertionError("did not raise")


def test_repeated_frames_are_counted_like_python_does() -> None:
    def forever() -> None:
        forever()

    exc = _capture(forever)
    assert isinstance(exc, RecursionError)
    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert re.search(r"\[Previous line repeated \d+ more times\]", stacktrace)
    assert stacktrace.count("in forever\n") == 3
    assert stacktrace.endswith("RecursionError: maximum recursion depth exceeded\n")

    def down(depth: int) -> None:
        if depth:
            down(depth - 1)
        raise ValueError("bottom")

    stacktrace = exception_event_attributes(_capture(lambda: down(10)))["exception.stacktrace"]
    lines = stacktrace.splitlines()
    assert lines[-3] == "  [Previous line repeated 7 more times]"
    assert [line.rpartition(", ")[2] for line in lines[-6:-1:]] == [
        "in down",
        "in down",
        "in down",
        "  [Previous line repeated 7 more times]",
        "in down",
    ]
    assert lines[-6].partition(", line ")[2] != lines[-2].partition(", line ")[2]


def test_stack_trace_keeps_chained_exceptions() -> None:
    def fail() -> None:
        try:
            try:
                raise KeyError("token=abc")
            except KeyError:
                raise OSError("disk") from None  # suppressed context
        except OSError as exc:
            try:
                raise ValueError("parse") from exc
            except ValueError:
                raise RuntimeError("outer")  # noqa: B904 - chained by context on purpose

    exc = _capture(fail)
    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert "KeyError" not in stacktrace  # suppressed by "from None"
    positions = [stacktrace.index(line) for line in ("OSError: disk", "ValueError: parse")]
    assert positions == sorted(positions)
    assert "The above exception was the direct cause" in stacktrace
    assert "During handling of the above exception" in stacktrace
    assert stacktrace.rstrip().endswith("RuntimeError: outer")


def test_stack_trace_chain_is_bounded_and_survives_cycles() -> None:
    first = _raised(ValueError("first"))
    second = _raised(ValueError("second"))
    first.__context__ = second
    second.__context__ = first  # a cycle
    assert exception_event_attributes(first)["exception.stacktrace"].count("ValueError") == 2

    newest: BaseException = _raised(ValueError("e0"))
    current = newest
    for index in range(1, 30):
        older = _raised(ValueError(f"e{index}"))
        current.__cause__ = older
        current = older
    stacktrace = exception_event_attributes(newest)["exception.stacktrace"]
    assert stacktrace.startswith("[earlier chained exceptions left out]")
    assert stacktrace.count("ValueError: e") == 8
    assert "ValueError: e0\n" in stacktrace
    assert "ValueError: e8\n" not in stacktrace


def test_stack_trace_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "jobpulse_test_module_io.py"
    source.write_text("def explode():\n    raise ValueError('from a file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("jobpulse_test_module_io")
    exc = _capture(module.explode)
    filename = str(source)
    linecache.cache.pop(filename, None)

    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert f'File "{filename}", line 2, in explode\n' in stacktrace
    assert "raise ValueError('from a file')" not in stacktrace
    assert filename not in linecache.cache  # nothing was read

    linecache.getline(filename, 2)  # what a logged traceback does: now the lines are known
    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert "    raise ValueError('from a file')\n" in stacktrace
    linecache.cache.pop(filename, None)
    sys.modules.pop("jobpulse_test_module_io", None)


def test_stack_trace_fits_its_cap_after_escaping() -> None:
    # a file name of control characters: each becomes 4 characters once escaped
    namespace: dict[str, Any] = {}
    source = "def ping(n):\n    pong(n)\ndef pong(n):\n    if n: ping(n - 1)\n    raise OSError()\n"
    exec(compile(source, "\x01" * 400, "exec"), namespace)
    exc = _capture(lambda: namespace["ping"](30))
    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert len(stacktrace) == MAX_STACKTRACE_CHARS
    assert re.match(r"\[\d+ characters left out\]\n", stacktrace)
    assert stacktrace.endswith("\nOSError\n")
    assert "\x01" not in stacktrace


def test_old_exceptions_of_a_chain_that_do_not_fit_are_left_out() -> None:
    def bulky(text: str) -> BaseException:
        exc = ValueError(text * 3000)
        exc.__notes__ = [text * 3000]  # type: ignore[attr-defined]
        return _raised(exc)

    newest = bulky("n")
    current = newest
    for index in range(4):
        older = bulky(f"{index}")
        current.__context__ = older
        current = older
    stacktrace = exception_event_attributes(newest)["exception.stacktrace"]
    assert len(stacktrace) <= MAX_STACKTRACE_CHARS
    assert stacktrace.startswith("[earlier chained exceptions left out]")
    assert stacktrace.count("ValueError: ") < 5


def test_a_failure_building_the_stack_trace_still_records_the_exception(
    monkeypatch: pytest.MonkeyPatch, internal_errors: InternalErrors
) -> None:
    def broken(exc: BaseException) -> object:
        raise RuntimeError("bug in jobpulse")

    monkeypatch.setattr(_errors, "_chain", broken)
    attributes = exception_event_attributes(_raised(ValueError("password=x")))
    assert attributes["exception.stacktrace"] == "ValueError: password=***\n"
    ((where, error),) = internal_errors.take()
    assert where == "stack trace"
    assert str(error) == "bug in jobpulse"


def test_source_lines_outside_the_cached_file_are_left_out() -> None:
    exc = _capture(lambda: _recurse(0))
    filename = __file__
    saved = linecache.cache.get(filename)
    linecache.cache[filename] = (1, None, ["only one line\n"], filename)
    try:
        stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    finally:
        if saved is None:
            linecache.cache.pop(filename, None)
        else:
            linecache.cache[filename] = saved
    assert "only one line" not in stacktrace
    assert f'File "{filename}", line' in stacktrace


def test_stack_trace_notes_are_kept_and_redacted() -> None:
    exc = _raised(ValueError("x"))
    exc.__notes__ = ["while syncing with api_key=abc123"]  # type: ignore[attr-defined]
    stacktrace = exception_event_attributes(exc)["exception.stacktrace"]
    assert stacktrace.endswith("ValueError: x\nwhile syncing with api_key=***\n")


# -- exceptions whose __str__ or __repr__ raise -------------------------------------------


class _Stop(BaseException):
    pass


def _unprintable(raised: BaseException) -> BaseException:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise raised

        def __repr__(self) -> str:
            raise raised

    return _raised(Unprintable())


@pytest.mark.parametrize(
    "raised", [KeyboardInterrupt(), SystemExit(1), _Stop(), RuntimeError("no"), RecursionError()]
)
def test_formatting_survives_a_str_that_raises_anything(raised: BaseException) -> None:
    exc = _unprintable(raised)
    assert describe_exception(exc) == "Unprintable: <unprintable Unprintable>"
    assert classify_exception(exc) == "unknown"
    attributes = exception_event_attributes(exc)
    assert attributes["exception.message"] == "<unprintable Unprintable>"
    assert attributes["exception.stacktrace"].endswith(": <unprintable Unprintable>\n")


def test_a_run_whose_exception_cannot_be_printed_is_recorded(monitor: JobMonitor) -> None:
    exc = _unprintable(KeyboardInterrupt())
    with pytest.raises(type(exc)) as raised, monitor.run("unprintable"):
        raise exc
    assert raised.value is exc
    status = monitor.status("unprintable")
    assert status is not None
    assert status.failure_count == 1
    assert status.last_error == "Unprintable: <unprintable Unprintable>"
