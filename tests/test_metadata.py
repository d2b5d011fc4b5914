from __future__ import annotations

import json
import math

from jobpulse import _metadata
from jobpulse._metadata import MAX_KEY_CHARS, MAX_KEYS, MAX_VALUE_CHARS


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_sanitize_keeps_json_values() -> None:
    values = {"rows": 3, "ok": True, "none": None, "ratio": 0.5, "tags": ["a", 1], "d": {"k": "v"}}
    assert _metadata.sanitize(values) == {**values, "tags": ["a", 1]}


def test_sanitize_unserializable_becomes_repr() -> None:
    result = _metadata.sanitize(
        {"obj": Opaque(), "nan": math.nan, "inf": -math.inf, "set": {1}, "bad": BrokenRepr()}
    )
    assert result["obj"] == "<Opaque>"
    assert result["nan"] == "nan"
    assert result["inf"] == "-inf"
    assert result["set"] == "{1}"
    assert result["bad"] == "<unrepresentable BrokenRepr>"
    json.dumps(result, allow_nan=False)


def test_sanitize_non_str_keys_and_deep_nesting() -> None:
    result = _metadata.sanitize({1: {2: "x"}, "deep": [[[[["bottom"]]]]]})
    assert result["1"] == "{2: 'x'}"
    assert result["deep"] == [[[["['bottom']"]]]]


def test_sanitize_caps_sizes_and_redacts() -> None:
    result = _metadata.sanitize(
        {
            "k" * 500: 1,
            "big": "v" * 10_000,
            "dsn": "postgres://u:pw@h/db",
            "nested": {"s": "token=a"},
        }
    )
    assert "k" * MAX_KEY_CHARS in result
    assert len(result["big"]) < MAX_VALUE_CHARS + 40
    assert result["big"].endswith("more characters]")
    assert result["dsn"] == "postgres://u:***@h/db"
    assert result["nested"] == {"s": "token=***"}


def test_merge_caps_key_count_but_updates_existing_keys() -> None:
    into: dict[str, object] = {f"k{i}": i for i in range(MAX_KEYS)}
    refused = _metadata.merge(into, {"k0": "new", "extra": 1, "more": 2})
    assert refused == 2
    assert into["k0"] == "new"
    assert len(into) == MAX_KEYS


def test_encode_decode_round_trip() -> None:
    assert _metadata.decode(_metadata.encode({"a": [1, "é"]})) == {"a": [1, "é"]}
    assert _metadata.decode("not json") is None
    assert _metadata.decode("[1, 2]") is None
    assert _metadata.decode(3) is None
