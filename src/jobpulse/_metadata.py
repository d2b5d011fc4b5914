"""Run metadata: made JSON-safe, redacted and size-capped before anything stores it.

A run's metadata travels on its span as one attribute, ``job.metadata``, holding a JSON
object; the status view merges it into the job's metadata when the run ends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from jobpulse._errors import safe_error_text, truncate

__all__ = [
    "MAX_KEYS",
    "MAX_KEY_CHARS",
    "MAX_VALUE_CHARS",
    "decode",
    "encode",
    "merge",
    "sanitize",
]

MAX_KEYS = 64
MAX_KEY_CHARS = 100
MAX_VALUE_CHARS = 512
_MAX_DEPTH = 4


def _repr(value: object) -> str:
    try:
        return safe_error_text(repr(value), MAX_VALUE_CHARS)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the other keys
        return f"<unrepresentable {type(value).__name__}>"


def _json_safe(value: object, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return safe_error_text(value, MAX_VALUE_CHARS)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, (list, tuple)):
            return [_json_safe(item, depth + 1) for item in value]
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            return {key: _json_safe(item, depth + 1) for key, item in value.items()}
    return _repr(value)


def _capped(value: Any) -> Any:
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= MAX_VALUE_CHARS:
        return value
    return truncate(text, MAX_VALUE_CHARS)


def sanitize(values: Mapping[Any, object]) -> dict[str, Any]:
    """JSON-safe copy of `values`: unserializable values become their repr, credentials are
    redacted, keys are cut to 100 characters and values whose JSON exceeds 512 to a string."""
    return {
        str(key)[:MAX_KEY_CHARS]: _capped(_json_safe(value, 0)) for key, value in values.items()
    }


def merge(into: dict[str, Any], values: Mapping[str, Any]) -> int:
    """Merge sanitized `values` into `into`, keeping at most 64 keys; returns keys refused."""
    refused = 0
    for key, value in values.items():
        if key in into or len(into) < MAX_KEYS:
            into[key] = value
        else:
            refused += 1
    return refused


def encode(values: Mapping[str, Any]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def decode(text: object) -> dict[str, Any] | None:
    """The metadata carried by a span attribute, sanitized; None if it is not a JSON object."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return sanitize(value) if isinstance(value, dict) else None
