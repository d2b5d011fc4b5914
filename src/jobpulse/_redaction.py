"""Credentials out, encodable text in: what jobpulse does to user text before it keeps it.

`redact` is the one redaction used for ``last_error``, span status descriptions, span
``exception`` events (message and stack trace), run metadata and jobpulse's own logs (a
`RedactingFilter` sits on the ``jobpulse`` logger). It replaces with ``***``:

- private keys in PEM form (the body between ``-----BEGIN ... PRIVATE KEY-----`` and the END
  line; everything after BEGIN when the END line is missing);
- tokens known by their shape: AWS access key ids, JWTs, GitHub, GitLab, Slack, Stripe,
  Google, OpenAI, npm, PyPI and SendGrid tokens, Slack and Discord webhook URLs (the prefix
  that names the kind of token is kept);
- URL passwords (``scheme://user:***@host``, also when the password holds a ``/``), and
  tokens that are a URL's whole user info (``https://***@rpc.example.com``, 20 characters
  or more);
- the values of ``key=value``, ``key: value``, ``"key": "value"`` pairs whose key names a
  secret (`is_secret_key`), quoted values whole, ``Authorization: <scheme> <credentials>``
  with any scheme; a pair whose key is not secret is looked into, so that
  ``url: https://host/x?api_key=...`` loses its api_key;
- ``Bearer``/``Basic`` credentials standing alone;
- whatever the patterns added with `add_redaction_pattern` match.

Every built-in pattern can only start where a run of its own characters starts (a
lookbehind) or at a fixed literal, and never scans past what a later start would scan, so
redaction is linear in the length of the text: error texts are user input.

`escape_unsafe_chars` makes text encodable: lone surrogates (what `os.fsdecode` gives for
undecodable bytes) and control characters other than tab, newline and carriage return are
written as Python-style escapes (``\\udcff``, ``\\x00``), so what is stored is valid UTF-8, at
most 4 bytes a character, and still shows what was there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import traceback

from jobpulse._exceptions import InvalidJobError

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "add_redaction_pattern",
    "escape_unsafe_chars",
    "is_secret_key",
    "redact",
]

#: What a secret is replaced with.
REDACTED = "***"

# -- encodable text ---------------------------------------------------------------------

_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_unsafe_chars(text: str) -> str:
    """`text` with lone surrogates and control characters (but tab, newline and carriage
    return) written as backslash escapes; `text` itself, not a copy, when it has none."""
    if _UNSAFE_CHARS.search(text) is None:
        return text
    return _UNSAFE_CHARS.sub(_escape_char, text)


# -- secret key names ---------------------------------------------------------------------

# A key is split into segments on "_", ".", "-", spaces and camelCase ("dbPassword",
# "APIKey", "DB_PASS"); it is secret when a segment is one of these words...
_SECRET_WORDS = frozenset(
    (
        "pass",
        "passwd",
        "password",
        "passwords",
        "passphrase",
        "pwd",
        "secret",
        "secrets",
        "token",
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "creds",
        "privatekey",
        "signature",
        "sig",
        "session",
        "sessionid",
        "jsessionid",
        "phpsessid",
        "cookie",
        "cookies",
        "dsn",
        "bearer",
        "jwt",
    )
)
# ... or ends with one of these (compounds written as one word: "dbpassword", "xsrftoken") ...
_SECRET_SUFFIXES = ("password", "passwd", "token", "secret", "apikey", "sessionid")
# ... or is "key" after one of these ("api_key", "PRIVATE_KEY", "AccountKey") ...
_KEY_QUALIFIERS = frozenset(
    (
        "api",
        "private",
        "access",
        "signing",
        "encryption",
        "master",
        "account",
    )
)
# ... unless a later segment says the value describes the secret rather than holds it.
_DESCRIPTORS = frozenset(
    (
        "count",
        "counts",
        "length",
        "len",
        "size",
        "limit",
        "max",
        "min",
        "type",
        "kind",
        "name",
        "names",
        "file",
        "path",
        "dir",
        "url",
        "uri",
        "endpoint",
        "expiry",
        "expires",
        "expiration",
        "ttl",
        "timeout",
        "seconds",
        "ms",
        "format",
        "version",
        "hint",
        "policy",
        "field",
        "method",
        "mode",
        "scheme",
        "provider",
        "backend",
        "user",
        "username",
        "enabled",
        "required",
    )
)
# Dotted names ending like a file name are paths ("token.py:12"), not keys.
_FILE_EXTENSIONS = frozenset(
    (
        "py",
        "pyc",
        "js",
        "ts",
        "rb",
        "go",
        "java",
        "json",
        "yaml",
        "yml",
        "toml",
        "ini",
        "cfg",
        "conf",
        "txt",
        "log",
        "md",
        "html",
        "csv",
        "sql",
    )
)
# An exception type ahead of its message ("InvalidPasswordError: user not found").
_TYPE_NAME = re.compile(r"[A-Z]\w*(?:Error|Exception|Warning)")
_SEGMENT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_MAX_KEY_CHARS_EXAMINED = 128


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    last_part = key.rpartition(".")[2]
    if _TYPE_NAME.fullmatch(last_part):
        return False
    if "." in key and last_part.lower() in _FILE_EXTENSIONS:
        return False
    segments = [segment.lower() for segment in _SEGMENT.findall(key)]
    secret_at = -1
    for index, segment in enumerate(segments):
        if (
            segment in _SECRET_WORDS
            or segment.endswith(_SECRET_SUFFIXES)
            or (segment == "key" and index > 0 and segments[index - 1] in _KEY_QUALIFIERS)
        ):
            secret_at = index
    if secret_at < 0:
        return False
    return not any(segment in _DESCRIPTORS for segment in segments[secret_at + 1 :])


def is_secret_key(key: str) -> bool:
    """Whether `key` names a secret: ``password``, ``DB_PASS``, ``X-Api-Key``,
    ``clientSecret``, ``session_id``, ``dsn``; not ``passenger``, ``tokenizer``, ``max_tokens``
    or ``token_count``."""
    return _secret_key(key[-_MAX_KEY_CHARS_EXAMINED:])


# -- patterns -------------------------------------------------------------------------------

# Each has a group named "secret": only that part is replaced. Each begins with a literal
# (so that re looks for it with a fast substring search) and then checks, looking behind,
# that the literal starts a run of its characters.
_PEM = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?P<secret>(?:[^-]|-(?!----))*)")
_TOKEN_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        # AWS access key ids: AKIA (long-term), ASIA (temporary), ...
        r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA|SCA)(?<![A-Za-z0-9]....)"
        r"(?P<secret>[A-Z0-9]{16})(?![A-Za-z0-9])",
        # JSON Web Tokens: header.payload.signature, the header a base64url '{"'
        r"(?P<secret>eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\."
        r"[A-Za-z0-9_\-]*)",
        r"gh[pousr]_(?<![A-Za-z0-9_]....)(?P<secret>[A-Za-z0-9]{20,})",
        r"github_pat_(?<![A-Za-z0-9_]github_pat_)(?P<secret>[A-Za-z0-9_]{20,})",
        r"glpat-(?<![A-Za-z0-9_\-]glpat-)(?P<secret>[A-Za-z0-9_\-]{20,})",
        r"x(?:ox[abeoprs]|app)-(?<![A-Za-z0-9\-].....)(?P<secret>[A-Za-z0-9\-]{10,})",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9_/\-]+)",
        r"discord(?:app)?\.com/api/webhooks/(?P<secret>[A-Za-z0-9_/\-]+)",
        r"sk_(?:live|test)_(?<![A-Za-z0-9_]........)(?P<secret>[A-Za-z0-9]{8,})",
        r"rk_(?:live|test)_(?<![A-Za-z0-9_]........)(?P<secret>[A-Za-z0-9]{8,})",
        r"whsec_(?<![A-Za-z0-9_]whsec_)(?P<secret>[A-Za-z0-9+/=]{8,})",
        r"AIza(?<![A-Za-z0-9_\-]AIza)(?P<secret>[A-Za-z0-9_\-]{30,})",
        r"sk-(?<![A-Za-z0-9_\-]sk-)(?:proj-|ant-|svcacct-|admin-)?(?P<secret>[A-Za-z0-9_\-]{20,})",
        r"npm_(?<![A-Za-z0-9_]npm_)(?P<secret>[A-Za-z0-9]{30,})",
        r"pypi-(?<![A-Za-z0-9_\-]pypi-)(?P<secret>AgE[A-Za-z0-9_\-]{30,})",
        r"SG\.(?<![A-Za-z0-9_\-.]SG\.)(?P<secret>[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,})",
    )
)
# scheme://user:password@host (a port followed by a path is not a password). The password
# may hold "/" and ":" but not "://", where another URL would start: so each "://" scans
# only up to the next one. It may hold "@" too, as URL parsers take the last "@" before the
# path: an "@" with another after it (before a space or "/") is the password's.
_URL_PASSWORD = re.compile(
    r"://(?<=[A-Za-z0-9+.\-]://)[^\s:/@]*:(?![0-9]{1,5}(?:[/?#]|$))"
    r"(?P<secret>(?:[^\s@:]|:(?!//)|@(?=[^\s/?#@]*@))+)@"
)
# A token as the whole of a URL's user info: https://<api key>@rpc.example.com/.
_URL_TOKEN = re.compile(r"://(?<=[A-Za-z0-9+.\-]://)(?P<secret>[A-Za-z0-9_.~%\-]{20,})@")
# Pairs are found by their separator; the key before it is read on the reversed text (re
# matches forward only), so that each separator costs the length of its own key.
_SEPARATOR = re.compile(r"(?:=>?|:)(?!=)")
_KEY_BEFORE = re.compile(r"[ \t]*[\"']?\\?(?P<key>[\w.\-]+)")
_SPACES = re.compile(r"[ \t]*")
_VALUE = re.compile(
    r"\"(?:[^\"\\\n]|\\.)*\"?"
    r"|'(?:[^'\\\n]|\\.)*'?"
    r"|\\\"(?:[^\"\\\n]|\\[^\"])*(?:\\\")?"
    r"|[^\s\"'&,;)}\]<>]+"
)
# Only texts holding one of these (in any case) can hold a secret key.
_KEY_HINTS = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "cred",
    "sig",
    "sess",
    "cookie",
    "dsn",
    "bearer",
    "jwt",
)
# The value of an Authorization header: a scheme, then a credential or a list of
# auth-params (Digest, AWS4-HMAC-SHA256), which is redacted to the end of the line.
_AUTH_VALUE = re.compile(
    r"(?P<scheme>[A-Za-z][\w\-]*[ \t]+)(?P<params>[\w\-]+=(?=[\"\w])[^\r\n]*)?"
)
_AUTH_KEYS = frozenset(("authorization", "auth"))
_STANDALONE_SCHEME = re.compile(
    r"(?<![\w\-])(?i:bearer|basic)[ \t]+"
    r"(?![A-Z]?[a-z]+(?![A-Za-z0-9._~+/=\-]))"
    r"(?P<secret>[A-Za-z0-9._~+/\-]+=*)"
)

_user_patterns: tuple[re.Pattern[str], ...] = ()
_user_patterns_lock = threading.Lock()


def _replace_secret(match: re.Match[str]) -> str:
    start, end = match.span("secret")
    if start < 0:
        return match[0]
    offset = match.start()
    whole = match[0]
    return f"{whole[: start - offset]}{REDACTED}{whole[end - offset :]}"


def _quoted(value: str) -> str:
    """`value` (a secret's value as matched) redacted, keeping the quotes around it."""
    quote = value[:2] if value.startswith('\\"') else value[0] if value[0] in "\"'" else ""
    if not quote:
        return REDACTED
    closed = len(value) > len(quote) and value.endswith(quote)
    return f"{quote}{REDACTED}{quote if closed else ''}"


def _redact_pairs(text: str) -> str:
    pieces: list[str] = []
    done = 0
    reversed_text = ""
    for separator in _SEPARATOR.finditer(text):
        at = separator.start()
        if at < done:
            continue  # inside a value already redacted
        if not reversed_text:
            reversed_text = text[::-1]
        before = _KEY_BEFORE.match(reversed_text, len(text) - at)
        if before is None or reversed_text.startswith("//", before.end()):
            continue  # no key, or a URL's user name: _URL_PASSWORD's
        key = before["key"][::-1]
        if not is_secret_key(key):
            continue  # and look into the value: "url: https://host/?api_key=..."
        value_at = _SPACES.match(text, separator.end()).end()  # type: ignore[union-attr]
        if _is_auth_key(key):
            auth = _AUTH_VALUE.match(text, value_at)
            if auth is not None and auth["params"] is not None:
                pieces += (text[done : auth.end("scheme")], REDACTED)
                done = auth.end()
                continue
            if auth is not None:
                value_at = auth.end()
        value = _VALUE.match(text, value_at)
        if value is not None:
            pieces += (text[done:value_at], _quoted(value[0]))
            done = value.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _is_auth_key(key: str) -> bool:
    segments = _SEGMENT.findall(key[-_MAX_KEY_CHARS_EXAMINED:])
    return bool(segments) and segments[-1].lower() in _AUTH_KEYS


def redact(text: str) -> str:
    """`text` with credentials replaced by ``***`` (see the module's docstring); `text`
    itself when it holds none. Linear in ``len(text)`` for the built-in patterns;
    idempotent. Thread-safe.
    """
    text = _PEM.sub(_replace_secret, text)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(_replace_secret, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(_replace_secret, text)
        text = _URL_TOKEN.sub(_replace_secret, text)
    lowered = text.lower()
    if any(hint in lowered for hint in _KEY_HINTS):
        text = _redact_pairs(text)
    if "bearer" in lowered or "basic" in lowered:
        text = _STANDALONE_SCHEME.sub(_replace_secret, text)
    for pattern in _user_patterns:
        text = pattern.sub(_replace_secret if "secret" in pattern.groupindex else REDACTED, text)
    return text


def add_redaction_pattern(pattern: str | re.Pattern[str]) -> None:
    """Redact whatever `pattern` matches from now on, everywhere jobpulse redacts.

    The whole match is replaced by ``***``, or only the group named ``secret`` when the
    pattern has one (``r"customer-key (?P<secret>\\w+)"`` keeps ``customer-key``). Raises
    `InvalidJobError` at once for a pattern that does not compile, is not a text pattern or
    matches the empty text. Keep patterns linear: anchor them on a literal or start them
    where a run of their characters starts. Thread-safe; patterns cannot be removed.
    """
    global _user_patterns
    if isinstance(pattern, str):
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            message = f"redaction pattern {pattern!r} does not compile: {error}"
            raise InvalidJobError(message) from None
    elif isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
        compiled = pattern
    else:
        raise InvalidJobError(
            f"a redaction pattern is a str or a compiled str pattern, not {pattern!r}"
        )
    if compiled.fullmatch("") is not None:
        raise InvalidJobError(f"redaction pattern {compiled.pattern!r} matches the empty text")
    with _user_patterns_lock:
        _user_patterns = (*_user_patterns, compiled)


# -- logging ---------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """A `logging.Filter` that redacts records in place, for any logger or handler.

    It redacts the formatted message (``msg % args``; when that changed, ``msg`` becomes the
    redacted text and ``args`` is cleared), the formatted exception (written to ``exc_text``,
    which formatters use as is; ``exc_info`` is kept for handlers that read the exception
    itself) and ``stack_info``. It never drops a record and never raises: a record whose
    message cannot be formatted passes through as it came, for logging to report. On a
    logger, it sees the records logged on that logger (not those of its children that
    propagate to it): put it on a handler to cover a whole tree.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        with contextlib.suppress(Exception):  # logging must go on, whatever the record
            _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is logging's to report
        message = None
    if message is not None:
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
    exc_info = record.exc_info
    if not record.exc_text and exc_info and exc_info[1] is not None:
        record.exc_text = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _install_on_jobpulse_logger() -> None:
    own_logger = logging.getLogger("jobpulse")
    if not any(type(existing).__name__ == "RedactingFilter" for existing in own_logger.filters):
        own_logger.addFilter(RedactingFilter())


_install_on_jobpulse_logger()
