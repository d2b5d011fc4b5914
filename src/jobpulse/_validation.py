"""Checks on what users pass in: job names, durations, thresholds. Each error names its rule."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from jobpulse._exceptions import InvalidJobError

__all__ = [
    "MAX_NAME_CHARS",
    "to_seconds",
    "validate_name",
    "validate_positive_int",
    "validate_token",
]

MAX_NAME_CHARS = 200
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")


def validate_name(name: object, what: str = "job name") -> str:
    """Return `name` if it is a usable job (or pending-kind) name, else raise `InvalidJobError`.

    Rules: a str; not empty; at most 200 characters; no control or other unprintable
    characters (spaces are fine).
    """
    if not isinstance(name, str):
        raise InvalidJobError(f"{what} must be a str, not {type(name).__name__}")
    if not name or name.isspace():
        raise InvalidJobError(f"{what} must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidJobError(
            f"{what} must be at most {MAX_NAME_CHARS} characters, got {len(name)}: {name[:40]!r}..."
        )
    if not name.isprintable():
        index, char = next((i, c) for i, c in enumerate(name) if not c.isprintable())
        raise InvalidJobError(
            f"{what} must not contain control or unprintable characters: {char!r} at index {index}"
            f" in {name!r}"
        )
    return name


def to_seconds(value: object, param: str) -> float:
    """A positive, finite number of seconds from an int, float or `timedelta`."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidJobError(
            f"{param} must be seconds (int or float) or a timedelta, not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidJobError(f"{param} must be a positive, finite duration, got {value!r}")
    return seconds


def validate_positive_int(value: object, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidJobError(f"{param} must be an int, not {type(value).__name__}")
    if value < 1:
        raise InvalidJobError(f"{param} must be at least 1, got {value}")
    return value


def validate_token(value: object, what: str) -> str:
    """Return `value` if it is a short snake_case token (a reason or category, which become
    metric label values): 1 to 32 characters of ``a-z``, ``0-9`` and ``_``, starting with a
    letter. Else raise `InvalidJobError`."""
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise InvalidJobError(
            f"{what} must be a snake_case token of at most 32 characters (a-z, 0-9, _, "
            f"starting with a letter), got {value!r}"
        )
    return value
