"""Checks on what users pass in: job names, durations, thresholds. Each error names its rule.

Durations (timeouts, stall thresholds, grace, intervals) are seconds (int or float), a
`timedelta`, or a duration string in Go's ``time.ParseDuration`` syntax with one extension:
``"90s"``, ``"1h30m"``, ``"500ms"``, ``"1.5h"``, and ``d`` for days of 24 hours (``"1d12h"``),
which Go lacks. Every one is at most `MAX_DURATION_SECONDS` (366 days): past that, times
computed from it (a next run, a deadline) could leave what `datetime` represents, and no
real job needs more.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TypeGuard

from jobpulse._exceptions import InvalidJobError
from jobpulse._shared import MAX_NAME_CHARS

__all__ = [
    "DURATION_UNITS",
    "MAX_DURATION_NS",
    "MAX_DURATION_SECONDS",
    "Duration",
    "duration_ns",
    "is_token",
    "to_seconds",
    "validate_name",
    "validate_positive_int",
    "validate_token",
]

#: The longest duration any setting takes: 366 days, so a leap year fits.
MAX_DURATION_SECONDS = 366 * 24 * 3600
MAX_DURATION_NS = MAX_DURATION_SECONDS * 1_000_000_000
#: What a duration setting takes: seconds, a timedelta or a duration string ("90s").
Duration = float | timedelta | str

_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NS = 1_000_000_000
_UNIT_NS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": _NS}
_UNIT_NS |= {"m": 60 * _NS, "h": 3600 * _NS, "d": 86400 * _NS}
_UNIT = "(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d)"
_PART = re.compile(rf"([0-9]*)(?:\.([0-9]*))?{_UNIT}")
# Go's time.ParseDuration syntax: an optional sign, then "0" or one or more <number><unit>.
_DURATION = re.compile(rf"[-+]?(?:0|(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+){_UNIT})+)")
# Longer texts are refused before any digit is converted (int() refuses over 4,300 digits).
_MAX_DURATION_CHARS = 64
DURATION_UNITS = "ns, us, ms, s, m, h, d"


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


def duration_ns(text: str) -> int | None:
    """Nanoseconds of a duration string (see the module docstring), negative for a leading
    ``-``; None if `text` is not one. Whitespace around it is ignored."""
    text = text.strip()
    if len(text) > _MAX_DURATION_CHARS or not _DURATION.fullmatch(text):
        return None
    ns: int = sum(
        int(whole or "0") * _UNIT_NS[unit]
        + int(fraction or "0") * _UNIT_NS[unit] // 10 ** len(fraction)
        for whole, fraction, unit in _PART.findall(text)
    )
    return -ns if text.startswith("-") else ns


def to_seconds(value: object, param: str) -> float:
    """Seconds from an int, float, `timedelta` or duration string (``"90s"``, ``"1h30m"``,
    ``"1d"``): positive, finite and at most `MAX_DURATION_SECONDS`, else `InvalidJobError`
    naming `param`."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        ns = duration_ns(value)
        if ns is None:
            raise InvalidJobError(
                f"{param} must be a duration such as '90s', '15m', '1h30m' or '1d' (units:"
                f" {DURATION_UNITS}), got {value!r}" + _unit_hint(value)
            )
        seconds = ns / _NS
    else:
        raise InvalidJobError(
            f"{param} must be seconds (int or float), a timedelta or a duration string such as"
            f" '90s', not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidJobError(f"{param} must be a positive, finite duration, got {value!r}")
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidJobError(
            f"{param} must be at most 366 days ({MAX_DURATION_SECONDS} s), got {value!r}"
        )
    return seconds


def _unit_hint(text: str) -> str:
    stripped = text.strip()
    if stripped.isascii() and stripped.replace(".", "", 1).isdigit():
        return f": a number needs a unit, e.g. '{stripped}s' (or pass the number itself)"
    return ""


def validate_positive_int(value: object, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidJobError(f"{param} must be an int, not {type(value).__name__}")
    if value < 1:
        raise InvalidJobError(f"{param} must be at least 1, got {value}")
    return value


def is_token(value: object) -> TypeGuard[str]:
    """Whether `value` is a token as `validate_token` wants it."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def validate_token(value: object, what: str) -> str:
    """Return `value` if it is a short snake_case token (a reason or category, which become
    metric label values): 1 to 32 characters of ``a-z``, ``0-9`` and ``_``, starting with a
    letter. Else raise `InvalidJobError`."""
    if not is_token(value):
        raise InvalidJobError(
            f"{what} must be a snake_case token of at most 32 characters (a-z, 0-9, _, "
            f"starting with a letter), got {value!r}"
        )
    return value
