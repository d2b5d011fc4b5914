"""A span exporter that stops trying while its collector is unreachable."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["BackoffSpanExporter"]

logger = logging.getLogger("jobpulse")


class BackoffSpanExporter(SpanExporter):
    """Wraps an exporter; after a failed export, the batches of the next `first_backoff`
    seconds (doubling with each failure, up to `max_backoff`) are dropped at once.

    Without it, a dead collector costs the application CPU for as long as it is down: the
    batch processor's thread encodes every batch and sends it again and again (holding the
    GIL that the jobs need), its queue stays full, and the SDK logs each dropped span, which
    costs every run tens of microseconds. The spans of a backoff period are lost, as a full
    queue would have lost them; the first export after it is a real attempt.

    Exports come from the batch processor's one thread; the state is guarded all the same.
    """

    def __init__(
        self,
        delegate: SpanExporter,
        *,
        first_backoff: float = 1.0,
        max_backoff: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delegate = delegate
        self._first, self._max = first_backoff, max_backoff
        self._clock = clock
        self._lock = threading.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self.dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._clock() < self._retry_at:
                self.dropped += len(spans)
                return SpanExportResult.FAILURE
        result = self.delegate.export(spans)
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                recovered, self._failures = self._failures, 0
                self._backoff = self._retry_at = 0.0
            else:
                recovered = 0
                self._failures += 1
                failures = self._failures
                self._backoff = min(self._max, self._backoff * 2 or self._first)
                self._retry_at = self._clock() + self._backoff
                backoff = self._backoff
        if recovered:
            logger.info("span export works again after %d failed attempts", recovered)
        elif result is not SpanExportResult.SUCCESS and failures & (failures - 1) == 0:
            logger.warning(
                "span export failed (%d in a row); dropping spans for %.0f s before trying again",
                failures,
                backoff,
            )
        return result

    def shutdown(self) -> None:
        self.delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)
