from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette

import jobpulse
from jobpulse import _metadata
from jobpulse._metadata import MAX_KEY_CHARS, MAX_KEYS, MAX_METADATA_BYTES, MAX_VALUE_CHARS
from jobpulse.starlette import HEALTH_PATH, routes
from jobpulse.testing import FakeClock
from tests.test_starlette import client_for


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
    assert result["bad"] == "<unprintable BrokenRepr>"
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
            "url": "postgres://u:pw@h/db",
            "nested": {"s": "token=a"},
        }
    )
    assert "k" * MAX_KEY_CHARS in result
    assert len(result["big"]) <= MAX_VALUE_CHARS
    assert result["big"].endswith(f"… [{10_000 - len(result['big']) + 24} more characters]")
    assert result["dsn"] == "***"
    assert result["url"] == "postgres://u:***@h/db"
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


# -- encodable text ---------------------------------------------------------------------


def test_keys_and_strings_at_any_depth_are_made_encodable() -> None:
    name = os.fsdecode(b"report-\xff.csv")  # "report-\udcff.csv", as os.listdir gives it
    result = _metadata.sanitize(
        {name: name, "nested": {name: [name, {"deep": "\x00\x1b"}]}, 3: "\udcff"}
    )
    escaped = "report-\\udcff.csv"
    assert result == {
        escaped: escaped,
        "nested": {escaped: [escaped, {"deep": "\\x00\\x1b"}]},
        "3": "\\udcff",
    }
    _metadata.encode(result).encode()


def test_a_surrogate_in_metadata_leaves_the_endpoint_serving(
    monitor: jobpulse.JobMonitor,
) -> None:
    name = os.fsdecode(b"report-\xff.csv")
    with monitor.run("import_files") as run:
        run.set_metadata(file=name, **{name: 1})
    with client_for(Starlette(routes=routes(monitor, metrics=False))) as client:
        response = client.get(HEALTH_PATH)
    assert response.status_code == 200
    metadata = response.json()["jobs"]["import_files"]["metadata"]
    assert metadata == {"file": "report-\\udcff.csv", "report-\\udcff.csv": 1}


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "cookie",
        "session",
        "private_key",
        "dsn",
        "credentials",
        "DB_PASS",
        "clientSecret",
    ],
)
def test_values_under_secret_keys_are_redacted_at_any_depth(key: str) -> None:
    result = _metadata.sanitize(
        {
            key: "hunter2",
            "config": {key: {"nested": "hunter2"}, "rows": 3, "list": [{key: 12345}]},
        }
    )
    assert result == {key: "***", "config": {key: "***", "rows": 3, "list": [{key: "***"}]}}


def test_values_under_ordinary_keys_are_kept() -> None:
    values = {"passenger": 3, "tokenizer": "bert", "max_tokens": 10, "token_count": 4}
    assert _metadata.sanitize(values) == values


# -- the byte cap ------------------------------------------------------------------------------


def _size(values: dict[str, Any]) -> int:
    return len(_metadata.encode(values).encode())


def test_merge_refuses_what_would_pass_the_byte_cap() -> None:
    into: dict[str, Any] = {}
    value = "v" * 500
    refused = _metadata.merge(into, {f"k{index}": value for index in range(10)})
    assert _size(into) <= MAX_METADATA_BYTES
    assert refused == 10 - len(into)
    assert len(into) == 4  # 4 x 508 bytes fit in 2,048, 5 do not
    # a larger value for an existing key that would not fit is refused, a smaller one taken
    assert _metadata.merge(into, {"k1": "w" * 600}) == 1
    assert into["k1"] == value
    assert _metadata.merge(into, {"k0": "small"}) == 0
    assert into["k0"] == "small"
    assert _metadata.merge(into, {"k4": "now it fits"}) == 0
    assert _size(into) <= MAX_METADATA_BYTES


def test_a_single_value_larger_than_the_cap_is_cut_to_fit() -> None:
    key = "\U0001f600" * MAX_KEY_CHARS
    result = _metadata.sanitize({key: "\U0001f600" * 5_000, "list": ["\U0001f600" * 400] * 4})
    for name, value in result.items():
        assert isinstance(value, str)
        assert len(value) <= MAX_VALUE_CHARS
        assert value.endswith("more characters]")
        assert _size({name: value}) <= MAX_METADATA_BYTES
    assert _size({key: result[key]}) > MAX_METADATA_BYTES - 8  # cut no shorter than needed
    into: dict[str, Any] = {}
    assert _metadata.merge(into, {key: result[key]}) == 0


def test_sanitize_is_idempotent() -> None:
    values = {
        "big": "x" * 5_000,
        "wide": "\U0001f600" * 600,
        "list": list(range(500)),
        "obj": Opaque(),
        "password": "p",
        "k" * 300: 1,
    }
    once = _metadata.sanitize(values)
    assert _metadata.sanitize(once) == once
    assert _metadata.decode(_metadata.encode(once)) == once


def test_run_metadata_on_the_span_obeys_the_byte_cap(
    monitor: jobpulse.JobMonitor, otel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "jobpulse"), monitor.run("wide") as run:
        for index in range(20):
            run.set_metadata(**{f"k{index}": "v" * 500})
    (span,) = otel.spans()
    on_span = json.loads(span.attributes["job.metadata"])
    assert len(_metadata.encode(on_span).encode()) <= MAX_METADATA_BYTES
    status = monitor.status("wide")
    assert status is not None
    assert status.metadata == on_span
    assert "dropped" in caplog.text


def test_decode_refuses_attributes_far_longer_than_jobpulse_writes() -> None:
    assert _metadata.decode(json.dumps({"k": "v" * 100_000})) is None


@pytest.mark.slow
def test_a_thousand_jobs_with_maximal_metadata_stay_under_10_mb(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every cap pushed with 4-byte characters: names, keys, values, nesting, last_error."""
    wide = "\U0001f600"
    provider = TracerProvider(shutdown_on_exit=False)
    monitor = jobpulse.JobMonitor(tracer_provider=provider, clock=FakeClock(), max_jobs=1000)
    values: dict[str, object] = {
        f"{index:02d}" + wide * MAX_KEY_CHARS: wide * (MAX_VALUE_CHARS + 1)
        for index in range(MAX_KEYS)
    }
    values["nested"] = {wide * MAX_KEY_CHARS: [wide * MAX_VALUE_CHARS] * 4}
    message = wide * 100_000

    def fail(name: str) -> None:
        with monitor.run(name) as run:
            run.set_metadata(values)
            raise RuntimeError(message)

    try:
        with caplog.at_level(logging.ERROR, "jobpulse"):
            for index in range(1000):
                with pytest.raises(RuntimeError):
                    fail(f"{index:04d}" + wide * 196)
        _, document = monitor.health_json()
    finally:
        monitor.shutdown()
        provider.shutdown()
    assert len(document) < 10_000_000
    jobs = json.loads(document)["jobs"]
    assert len(jobs) == 1000
    for job in jobs.values():
        assert len(_metadata.encode(job["metadata"]).encode()) <= MAX_METADATA_BYTES
        assert job["last_error"].endswith("more characters]")


class _Unprintable:
    def __str__(self) -> str:
        raise KeyboardInterrupt

    def __repr__(self) -> str:
        raise SystemExit(1)


class _BrokenMapping(dict[str, int]):
    def items(self) -> Any:
        raise KeyboardInterrupt


def test_user_objects_that_raise_anything_are_unprintable() -> None:
    result = _metadata.sanitize(
        {_Unprintable(): 1, "value": _Unprintable(), "mapping": _BrokenMapping(a=1)}
    )
    assert result == {
        "<unprintable _Unprintable>": 1,
        "value": "<unprintable _Unprintable>",
        "mapping": "<unprintable _BrokenMapping>",
    }


def test_a_nested_value_too_long_becomes_its_json_cut() -> None:
    result = _metadata.sanitize({"nested": {"text": "x" * 5_000, "password": "p"}})
    text = result["nested"]
    assert isinstance(text, str)
    assert len(text) <= MAX_VALUE_CHARS
    assert text.startswith('{"text":"xxx')
    assert text.endswith(" more characters]")
    assert _metadata.sanitize(result) == result
