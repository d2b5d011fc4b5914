from __future__ import annotations

import asyncio
import socket
import sqlite3
import urllib.error

import pytest

from jobpulse import _errors
from jobpulse._errors import (
    CATEGORIES,
    MAX_ERROR_CHARS,
    classify_exception,
    classify_names,
    describe_exception,
    exception_event_attributes,
    redact,
    safe_error_text,
    truncate,
)
from jobpulse._exceptions import JobTimeoutError


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
