"""What went wrong in a job, told safely: error categories, redaction and truncation.

The health document is served without authentication, so every error text that reaches it
passes through `safe_error_text`: credentials are replaced by ``***`` first (see
`jobpulse._redaction`), characters that cannot be encoded are escaped, then the text is cut
to `MAX_ERROR_CHARS`. Stack traces go to the span only, treated the same way and cut to
`MAX_STACKTRACE_CHARS`.

Every function here that formats a user's exception survives a ``__str__`` or ``__repr__``
that raises (anything, even `KeyboardInterrupt`): it writes ``<unprintable TypeName>``
instead, and never raises. None of them reads a file: a stack trace shows a frame's source
line only when `linecache` already holds it.
"""

from __future__ import annotations

import linecache
import re
from collections.abc import Sequence
from types import TracebackType

from jobpulse._guard import report_internal_error
from jobpulse._redaction import escape_unsafe_chars, redact
from jobpulse._shared import (
    CANCELLED,
    DATABASE,
    EXTERNAL_API,
    INTERRUPTED,
    NETWORK,
    PANIC,
    TIMEOUT,
    UNKNOWN,
)

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_STACKTRACE_CHARS",
    "classify_exception",
    "classify_names",
    "describe_exception",
    "exception_event_attributes",
    "format_stacktrace",
    "qualified_type_name",
    "redact",
    "safe_error_text",
    "truncate",
]

#: The longest error text kept (``last_error``, status descriptions, ``exception.message``).
MAX_ERROR_CHARS = 1024
#: The longest stack trace kept (``exception.stacktrace``): the innermost frames win.
MAX_STACKTRACE_CHARS = 8192
# How far a stack trace follows __cause__ and __context__.
_MAX_CHAINED_EXCEPTIONS = 8
# A frame's file name, function name and source line are each cut to this.
_MAX_FRAME_PART_CHARS = 300
_MAX_TYPE_NAME_CHARS = 200
# Like Python's tracebacks: the same frame more than this many times in a row is counted.
_REPEATS_SHOWN = 3

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
    module = getattr(exc_type, "__module__", None)  # a class attribute: anything at all
    name = exc_type.__qualname__
    if not isinstance(module, str) or not module or module == "builtins":
        return name
    return f"{module}.{name}"


def classify_names(type_names: Sequence[str], message: str) -> str:
    """The category for an error known by its type names (most derived first) and message
    (of which the first ``4 * MAX_ERROR_CHARS`` characters are read)."""
    message = message[: 4 * MAX_ERROR_CHARS]
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
    """Redacted, made encodable (`escape_unsafe_chars`), then cut to `limit` characters with
    a note of how many more there were: fit for the unauthenticated health document.

    Only the first ``4 * limit`` characters are examined, so huge texts cost little.
    """
    examined = limit * 4
    return _safe_head(text[:examined], max(len(text) - examined, 0), limit)


def _safe_head(head: str, unexamined: int, limit: int) -> str:
    """`safe_error_text` of a text whose first characters are `head` and that has
    `unexamined` more after them."""
    head = escape_unsafe_chars(redact(head))
    if len(head) <= limit and not unexamined:
        return head
    kept = head[:limit]
    return f"{kept}… [{len(head) - len(kept) + unexamined} more characters]"


def _message_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not hide the job's own error
        return f"<unprintable {_type_name(exc)}>"


def _type_name(exc: BaseException) -> str:
    name = getattr(type(exc), "__name__", None)
    return name[:_MAX_TYPE_NAME_CHARS] if isinstance(name, str) else "?"


def describe_exception(exc: BaseException) -> str:
    """``TypeName: message``, redacted and truncated (`safe_error_text`). Never raises."""
    message = _message_of(exc)
    name = _type_name(exc)
    if not message:
        return safe_error_text(name)
    head = message[: 4 * MAX_ERROR_CHARS]  # a 10 MB message is not copied
    return _safe_head(f"{name}: {head}", len(message) - len(head), MAX_ERROR_CHARS)


def exception_event_attributes(exc: BaseException) -> dict[str, str]:
    """The attributes of an OpenTelemetry ``exception`` span event: type, message (as
    `safe_error_text` makes it) and a stack trace of at most `MAX_STACKTRACE_CHARS`
    characters (`format_stacktrace`). Never raises; reads no file."""
    type_name = escape_unsafe_chars(qualified_type_name(type(exc))[:_MAX_TYPE_NAME_CHARS])
    try:
        stacktrace = format_stacktrace(exc)
    except Exception as error:  # noqa: BLE001 - the run is still recorded, without it
        report_internal_error("stack trace", error)
        stacktrace = _exception_line(exc)
    return {
        "exception.type": type_name,
        "exception.message": safe_error_text(_message_of(exc)),
        "exception.stacktrace": stacktrace,
        "exception.escaped": "True",
    }


# -- stack traces -------------------------------------------------------------------------

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_HEADER = "Traceback (most recent call last):\n"

# A frame as (file name, line number, function name); an int stands for that many more
# repeats of the frame before it.
_Frame = tuple[str, int | None, str]
# Room kept for a note of what was left out.
_NOTE_ROOM = 48
_MAX_NOTES = 8


def format_stacktrace(exc: BaseException, limit: int = MAX_STACKTRACE_CHARS) -> str:
    """`exc`'s stack trace as Python prints it, chained exceptions included (``__cause__``,
    and ``__context__`` unless suppressed; at most 8), redacted and made encodable, in at most
    `limit` characters.

    What does not fit is left out from the outside in, with a note of how much: the newest
    exception's line and its innermost frames are kept first, then older exceptions of the
    chain. Messages are cut as `safe_error_text` cuts them. A frame shows its source line
    only when `linecache` already holds its file: nothing is read from disk.
    """
    chain, links, more = _chain(exc)
    blocks: list[str] = []
    budget = limit - _NOTE_ROOM
    for index, current in enumerate(chain):
        link = links[index - 1] if index else ""
        block = _block(current, budget - len(link))
        if block is None:
            more = True
            break
        blocks.append(block + link)
        budget -= len(block) + len(link)
    if more:
        blocks.append("[earlier chained exceptions left out]\n")
    text = escape_unsafe_chars(redact("".join(reversed(blocks))))
    if len(text) > limit:  # escapes made it longer
        note = f"[{len(text) - limit} characters left out]\n"
        text = note + text[len(text) - limit + len(note) :]
    return text


def _chain(exc: BaseException) -> tuple[list[BaseException], list[str], bool]:
    """`exc` and the exceptions it chains to, newest first; the text linking each to the one
    before it in the list; whether the chain goes on past `_MAX_CHAINED_EXCEPTIONS`."""
    chain = [exc]
    links: list[str] = []
    seen = {id(exc)}
    current = exc
    while True:
        cause = current.__cause__
        if cause is not None:
            current, link = cause, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            return chain, links, False
        if id(current) in seen:
            return chain, links, False
        if len(chain) == _MAX_CHAINED_EXCEPTIONS:
            return chain, links, True
        seen.add(id(current))
        chain.append(current)
        links.append(link)


def _exception_line(exc: BaseException) -> str:
    """``module.Type: message`` and the exception's notes (`BaseException.add_note`)."""
    name = qualified_type_name(type(exc))[:_MAX_TYPE_NAME_CHARS]
    message = _message_of(exc)
    line = f"{name}: {safe_error_text(message)}\n" if message else f"{name}\n"
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)) and notes:
        shown = [note for note in notes[:_MAX_NOTES] if isinstance(note, str)]
        line += safe_error_text("\n".join(shown)) + "\n"
    return line


def _block(exc: BaseException, budget: int) -> str | None:
    """The lines of one exception (header, frames, exception line) in `budget` characters,
    innermost frames first; None when not even the exception line fits."""
    line = _exception_line(exc)
    frames = _frames(exc.__traceback__)
    if not frames:
        return line if len(line) <= budget else None
    budget -= len(_HEADER) + len(line)
    if budget < 0:
        return None
    kept: list[str] = []
    left_out = 0
    for position in range(len(frames) - 1, -1, -1):
        entry = frames[position]
        text = _repeat_text(entry) if isinstance(entry, int) else _frame_text(entry)
        if len(text) + (_NOTE_ROOM if position else 0) > budget:
            left_out = sum(item if isinstance(item, int) else 1 for item in frames[: position + 1])
            break
        kept.append(text)
        budget -= len(text)
    note = _left_out_text(left_out) if left_out else ""
    return _HEADER + note + "".join(reversed(kept)) + line


def _frames(tb: TracebackType | None) -> list[_Frame | int]:
    frames: list[_Frame | int] = []
    previous: _Frame | None = None
    repeats = 0
    while tb is not None:
        code = tb.tb_frame.f_code
        frame: _Frame = (code.co_filename, tb.tb_lineno, code.co_name)
        if frame == previous:
            repeats += 1
        else:
            if repeats > _REPEATS_SHOWN - 1:
                frames.append(repeats - (_REPEATS_SHOWN - 1))
            repeats = 0
            previous = frame
        if repeats < _REPEATS_SHOWN:
            frames.append(frame)
        tb = tb.tb_next
    if repeats > _REPEATS_SHOWN - 1:
        frames.append(repeats - (_REPEATS_SHOWN - 1))
    return frames


def _frame_text(frame: _Frame) -> str:
    filename, lineno, name = frame
    text = (
        f'  File "{filename[:_MAX_FRAME_PART_CHARS]}", line {lineno}, '
        f"in {name[:_MAX_FRAME_PART_CHARS]}\n"
    )
    source = _cached_source_line(filename, lineno)
    return f"{text}    {source}\n" if source else text


def _cached_source_line(filename: str, lineno: int | None) -> str | None:
    """The source line if `linecache` holds the file already; None rather than read it."""
    entry = linecache.cache.get(filename)
    if entry is None or len(entry) != 4 or lineno is None:  # (get_lines,): a lazy entry
        return None
    lines = entry[2]
    if not 1 <= lineno <= len(lines):
        return None
    source = lines[lineno - 1].strip()
    return source if len(source) <= _MAX_FRAME_PART_CHARS else None


def _repeat_text(count: int) -> str:
    return f"  [Previous line repeated {count} more time{'s' if count > 1 else ''}]\n"


def _left_out_text(count: int) -> str:
    return f"  [{count} frame{'s' if count > 1 else ''} left out]\n"
