"""Run metadata: made JSON-safe, redacted and size-capped before anything stores it.

A run's metadata travels on its span as one attribute, ``job.metadata``, holding a JSON
object; the status view merges it into the job's metadata when the run ends. Both obey the
same caps: at most `MAX_KEYS` keys of at most `MAX_KEY_CHARS` characters, each value at
most `MAX_VALUE_CHARS` characters, and at most `MAX_METADATA_BYTES` bytes in all as compact
UTF-8 JSON. Keys and strings (at any depth) are redacted and made encodable like error
texts; a value under a key that names a secret (``password``, ``token``, ``api_key``,
``dsn``, ...; see `jobpulse._redaction.is_secret_key`), at any depth, becomes ``***``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from jobpulse._redaction import REDACTED, escape_unsafe_chars, is_secret_key, redact

__all__ = [
    "MAX_KEYS",
    "MAX_KEY_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_VALUE_CHARS",
    "decode",
    "encode",
    "merge",
    "sanitize",
]

MAX_KEYS = 64
MAX_KEY_CHARS = 100
MAX_VALUE_CHARS = 512
#: A job's (and a run's) metadata as compact UTF-8 JSON. With ``last_error`` (1,024
#: characters, at most 4 bytes each) and the name (200), a job's member of the health
#: document stays under 10 KB.
MAX_METADATA_BYTES = 2048
_MAX_DEPTH = 4
# A job.metadata attribute longer than this (set by something other than jobpulse) is not
# parsed: json.loads would cost its length on the job's thread.
_MAX_ENCODED_CHARS = 16 * MAX_METADATA_BYTES

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_MISSING = object()


def _unprintable(value: object) -> str:
    return f"<unprintable {type(value).__name__}>"


# "… [N more characters]" takes at most this many characters.
_NOTE_CHARS = 30


def _text(text: str, room: int | None = None) -> str:
    """`text` redacted and made encodable, cut to `MAX_VALUE_CHARS` characters (the note of
    what was cut included, so that a text cut once is not cut again when metadata is
    sanitized anew) and, given `room`, to `room` bytes of JSON."""
    examined = 4 * MAX_VALUE_CHARS
    head = escape_unsafe_chars(redact(text[:examined]))
    more = max(len(text) - examined, 0)
    if len(head) <= MAX_VALUE_CHARS and not more and (room is None or _bytes(head) <= room):
        return head

    def cut(kept: int) -> str:
        return f"{head[:kept]}… [{len(head) - kept + more} more characters]"

    kept = min(len(head), MAX_VALUE_CHARS - _NOTE_CHARS)
    if room is None:
        return cut(kept)
    size = _bytes(cut(kept))
    if size > room:
        # From the text's own bytes per character, then down until it fits: dropping a
        # character drops 1 to 4 bytes, so a quarter of the excess never drops too many.
        kept = min(kept, room * kept // size)
        while (size := _bytes(cut(kept))) > room and kept:
            kept = max(kept - (size - room + 3) // 4, 0)
    return cut(kept)


def _repr(value: object) -> str:
    try:
        text = repr(value)
    except BaseException:  # noqa: BLE001 - a broken __repr__ must not lose the other keys
        return _unprintable(value)
    return _text(text)


def _key(key: object) -> str:
    if isinstance(key, str):
        text = key
    else:
        try:
            text = str(key)
        except BaseException:  # noqa: BLE001 - as for values
            text = _unprintable(key)
    return escape_unsafe_chars(redact(text[: 4 * MAX_KEY_CHARS]))[:MAX_KEY_CHARS]


def _json_safe(value: object, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, (list, tuple)):
            return [_json_safe(item, depth + 1) for item in value]
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            return {
                _key(key): REDACTED if is_secret_key(key) else _json_safe(item, depth + 1)
                for key, item in value.items()
            }
    return _repr(value)


def _bytes(value: object) -> int:
    return len(_ENCODER.encode(value).encode())


def _entry_bytes(key: str, value: object) -> int:
    """What ``"key":value`` adds to the JSON object, without its comma."""
    return _bytes(key) + 1 + _bytes(value)


def _fit(key: str, value: Any) -> Any:
    """`value` (a top-level value, as it came) JSON-safe and capped: strings to
    `MAX_VALUE_CHARS` characters, other values to as many of JSON (else they become that
    JSON, cut), and all short enough that ``{"key":value}`` fits in `MAX_METADATA_BYTES`."""
    room = MAX_METADATA_BYTES - 2 - _bytes(key) - 1
    if isinstance(value, str):
        return _text(value, room)
    safe = _safe(value)
    if isinstance(safe, str):
        return safe if _bytes(safe) <= room else _text(safe, room)
    text = _ENCODER.encode(safe)
    if len(text) <= MAX_VALUE_CHARS and len(text.encode()) <= room:
        return safe
    return _text(text, room)


def _safe(value: object) -> Any:
    try:
        return _json_safe(value, 0)
    except BaseException:  # noqa: BLE001 - a broken __iter__, items() or __eq__
        return _unprintable(value)


def sanitize(values: Mapping[Any, object]) -> dict[str, Any]:
    """JSON-safe copy of `values`: unserializable values become their repr, credentials are
    redacted (values under secret keys become ``***``), text is made encodable, keys are cut
    to `MAX_KEY_CHARS` characters and values to `MAX_VALUE_CHARS` (strings; other values
    longer than that in JSON become their JSON text, cut), and further when one key and
    value alone would exceed `MAX_METADATA_BYTES`. Idempotent. Never raises for the user's
    objects."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        name = _key(key)
        result[name] = REDACTED if is_secret_key(name) else _fit(name, value)
    return result


def merge(into: dict[str, Any], values: Mapping[str, Any]) -> int:
    """Merge sanitized `values` into `into`, keeping `into` within `MAX_KEYS` keys and
    `MAX_METADATA_BYTES` bytes of compact JSON: a new key, or a new value for a key `into`
    has, that would pass either cap is refused (the old value stays). Returns how many
    were refused."""
    refused = 0
    size = _bytes(into)
    for key, value in values.items():
        entry = _entry_bytes(key, value)
        old = into.get(key, _MISSING)
        if old is not _MISSING:
            new_size = size - _entry_bytes(key, old) + entry
        elif len(into) >= MAX_KEYS:
            refused += 1
            continue
        else:
            new_size = size + entry + (1 if into else 0)
        if new_size > MAX_METADATA_BYTES:
            refused += 1
            continue
        into[key] = value
        size = new_size
    return refused


def encode(values: Mapping[str, Any]) -> str:
    return _ENCODER.encode(values)


def decode(text: object) -> dict[str, Any] | None:
    """The metadata carried by a span attribute, sanitized; None if it is not a JSON object
    (or is longer than any jobpulse writes, many times over)."""
    if not isinstance(text, str) or len(text) > _MAX_ENCODED_CHARS:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return sanitize(value) if isinstance(value, dict) else None
