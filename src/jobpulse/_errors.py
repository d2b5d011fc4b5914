"""What went wrong in a job, told safely: error categories, redaction and truncation.

The health document is served without authentication, so every error text that reaches it
passes through `safe_error_text`: credentials are replaced by ``***`` first (see
`jobpulse._redaction`), characters that cannot be encoded are escaped, then the text is cut
to `MAX_ERROR_CHARS`. Stack traces go to the span only, redacted the same way.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence

from jobpulse._redaction import escape_unsafe_chars, redact

__all__ = [
    "CATEGORIES",
    "MAX_ERROR_CHARS",
    "classify_exception",
    "classify_names",
    "describe_exception",
    "exception_event_attributes",
    "qualified_type_name",
    "redact",
    "safe_error_text",
    "truncate",
]

TIMEOUT = "timeout"
NETWORK = "network"
DATABASE = "database"
EXTERNAL_API = "external_api"
PANIC = "panic"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
UNKNOWN = "unknown"

#: Every category `classify_exception` can return.
CATEGORIES = (TIMEOUT, NETWORK, DATABASE, EXTERNAL_API, PANIC, CANCELLED, INTERRUPTED, UNKNOWN)

MAX_ERROR_CHARS = 1024

# By type first. Each rule matches the qualified name ("module.QualName") of any class in the
# exception's MRO; modules are matched by prefix so that no driver needs to be imported.
_TYPE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        CANCELLED,
        re.compile(r"^(asyncio\.exceptions\.|concurrent\.futures\._base\.)?CancelledError$"),
    ),
    (INTERRUPTED, re.compile(r"^(KeyboardInterrupt|SystemExit|GeneratorExit)$")),
    (TIMEOUT, re.compile(r"(^|\.)[A-Za-z]*Time[oO]ut[A-Za-z]*$")),
    (
        DATABASE,
        re.compile(
            r"^(sqlite3|sqlalchemy|psycopg|psycopg2|asyncpg|pymysql|MySQLdb|mysql|aiomysql|"
            r"aiosqlite|pymongo|motor|redis|cx_Oracle|oracledb|pyodbc|django\.db|peewee|"
            r"tortoise|cassandra|elasticsearch|clickhouse_driver)(\.|$)"
        ),
    ),
    (
        EXTERNAL_API,
        re.compile(
            r"^(urllib\.error\.HTTPError|requests\.exceptions\.HTTPError|httpx\.HTTPStatusError|"
            r"aiohttp\.client_exceptions\.ClientResponseError|botocore\.exceptions\.ClientError|"
            r"grpc\.RpcError)$"
        ),
    ),
    (
        NETWORK,
        re.compile(
            r"^(ConnectionError|ConnectionRefusedError|ConnectionResetError|ConnectionAbortedError|"
            r"BrokenPipeError|socket\.gaierror|socket\.herror|ssl\.SSLError|urllib\.error\.URLError|"
            r"http\.client\.HTTPException)$|^(requests|httpx|httpcore|urllib3|aiohttp|grpc|"
            r"websockets)\."
        ),
    ),
    (
        PANIC,
        re.compile(
            r"^(AssertionError|AttributeError|TypeError|NameError|UnboundLocalError|LookupError|"
            r"ArithmeticError|RecursionError|NotImplementedError|MemoryError|SystemError|"
            r"ReferenceError)$"
        ),
    ),
)

# Message second, with the spec's keywords (as whole words, so that "capital" is not "api").
_MESSAGE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (TIMEOUT, re.compile(r"\b(timed? ?out|deadline)", re.IGNORECASE)),
    (NETWORK, re.compile(r"\b(connection|network|unreachable|refused|dns)\b", re.IGNORECASE)),
    (DATABASE, re.compile(r"\b(database|sql|db)\b", re.IGNORECASE)),
    (EXTERNAL_API, re.compile(r"\b(external|api|http|status code)\b", re.IGNORECASE)),
    (PANIC, re.compile(r"\bpanic", re.IGNORECASE)),
)


def qualified_type_name(exc_type: type[BaseException]) -> str:
    """``module.QualName``, or the bare name for builtins (as OpenTelemetry writes it)."""
    module = exc_type.__module__
    if not module or module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def classify_names(type_names: Sequence[str], message: str) -> str:
    """The category for an error known by its type names (most derived first) and message."""
    for category, pattern in _TYPE_RULES:
        if any(pattern.search(name) for name in type_names):
            return category
    for category, pattern in _MESSAGE_RULES:
        if pattern.search(message):
            return category
    return UNKNOWN


def classify_exception(exc: BaseException) -> str:
    """One of `CATEGORIES`: by the exception's type first, by its message second."""
    names = [
        qualified_type_name(cls) for cls in type(exc).__mro__ if issubclass(cls, BaseException)
    ]
    return classify_names(names, _message_of(exc))


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to at most `limit` characters plus a note of how many were dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def safe_error_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Redacted, made encodable (`escape_unsafe_chars`), then cut to `limit` characters: fit
    for the unauthenticated health document.

    Only the first ``4 * limit`` characters are examined, so huge texts cost little.
    """
    head = escape_unsafe_chars(redact(text[: limit * 4]))
    if len(head) <= limit and len(text) <= limit * 4:
        return head
    kept = head[:limit]
    return f"{kept}… [{len(text) - len(kept)} more characters]"


def _message_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the job's own error
        return f"<unprintable {type(exc).__name__}>"


def describe_exception(exc: BaseException) -> str:
    """``TypeName: message``, redacted and truncated."""
    message = _message_of(exc)
    name = type(exc).__name__
    return safe_error_text(f"{name}: {message}" if message else name)


def exception_event_attributes(exc: BaseException) -> dict[str, str]:
    """The attributes of an OpenTelemetry ``exception`` span event, with credentials redacted."""
    stacktrace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "exception.type": qualified_type_name(type(exc)),
        "exception.message": escape_unsafe_chars(redact(_message_of(exc))),
        "exception.stacktrace": escape_unsafe_chars(redact(stacktrace)),
        "exception.escaped": "True",
    }
