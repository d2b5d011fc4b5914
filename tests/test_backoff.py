"""BackoffSpanExporter: a dead collector costs one refused attempt per backoff period."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from jobpulse._backoff import BackoffSpanExporter


class Collector(SpanExporter):
    def __init__(self) -> None:
        self.up = False
        self.attempts = 0
        self.flushed = self.closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.attempts += 1
        return SpanExportResult.SUCCESS if self.up else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flushed = True
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


BATCH: list[ReadableSpan] = [ReadableSpan(name="run")] * 3


def test_failures_open_a_doubling_backoff_capped_at_its_maximum(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector, clock = Collector(), Clock()
    exporter = BackoffSpanExporter(collector, first_backoff=1.0, max_backoff=4.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="jobpulse"):
        backoffs = []
        for _ in range(5):
            assert exporter.export(BATCH) is SpanExportResult.FAILURE
            attempts = collector.attempts
            started = clock.now
            while collector.attempts == attempts:  # dropped without an attempt until due
                clock.now += 0.25
                exporter.export(BATCH)
            backoffs.append(clock.now - started)
        assert backoffs == [1.0, 2.0, 4.0, 4.0, 4.0]
        assert exporter.dropped > 0
        assert caplog.text.count("span export failed") == 3  # 1st, 2nd, 4th in a row

        collector.up = True
        clock.now += 5
        assert exporter.export(BATCH) is SpanExportResult.SUCCESS
        assert "span export works again after" in caplog.text
        assert exporter.export(BATCH) is SpanExportResult.SUCCESS  # no backoff left
        collector.up = False
        attempts = collector.attempts
        exporter.export(BATCH)
        clock.now += 1.0
        exporter.export(BATCH)
        assert collector.attempts == attempts + 2  # backoff starts again at its first value


def test_shutdown_and_flush_reach_the_exporter() -> None:
    collector = Collector()
    exporter = BackoffSpanExporter(collector)
    assert exporter.force_flush(10) is True
    exporter.shutdown()
    assert collector.flushed
    assert collector.closed
