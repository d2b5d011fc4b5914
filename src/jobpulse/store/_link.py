"""A monitor's link to its store: the publisher that writes, the fleet view that reads, and
what the health document says about both."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from jobpulse._shared import Clock, StatusRegistry, after_fork_in_child, redact
from jobpulse.store._base import Instance, Store
from jobpulse.store._fleet import FleetView
from jobpulse.store._publisher import Publisher

__all__ = ["StoreLink"]

logger = logging.getLogger("jobpulse")

T = TypeVar("T")


class StoreLink:
    """Owns the publisher's thread and the store's connections; `stop` ends both."""

    def __init__(
        self,
        store: Store,
        registry: StatusRegistry,
        clock: Clock,
        *,
        service: str,
        version: str,
        flush_interval: float,
        instance_ttl: float,
        retention: float,
        buffer_runs: int,
        default_stall_after: float,
        max_history: int,
    ) -> None:
        self.store = store
        self.fleet = FleetView(
            store,
            clock,
            refresh_interval=flush_interval,
            instance_ttl=instance_ttl,
            default_stall_after=default_stall_after,
            max_history=max_history,
        )
        registry.enable_changes(buffer_runs)
        self.publisher = Publisher(
            store,
            registry,
            clock,
            service=service,
            version=version,
            flush_interval=flush_interval,
            instance_ttl=instance_ttl,
            retention=retention,
            buffer_runs=buffer_runs,
            on_written=self.fleet.invalidate,
        )
        self._error: str | None = None
        self._error_lock = threading.Lock()
        after_fork_in_child(self._reset_after_fork)

    def read(self, read: Callable[[FleetView], T], fallback: Callable[[], T]) -> T:
        """`read` of the fleet view; if the store cannot be read, `fallback` (the process's
        own view), with the error kept for the document and logged once until it passes."""
        try:
            value = read(self.fleet)
        except Exception as exc:  # noqa: BLE001 - the store's failure: served from the process
            error = _text(exc)
            with self._error_lock:
                first, self._error = self._error is None, error
            if first:
                logger.warning(
                    "store %s cannot be read (%s): serving this process's own view",
                    self.store.url,
                    error,
                )
            return fallback()
        if self._error is not None:
            with self._error_lock:
                self._error = None
            logger.info("store %s can be read again: serving the fleet's view", self.store.url)
        return value

    def view(self) -> Mapping[str, Any]:
        """The health document's ``scope`` and what goes with it."""
        if self._error is not None:
            return {"scope": "process", "store": "unavailable", "store_error": self._error}
        try:
            instances = self.fleet.instances()
        except Exception as exc:  # noqa: BLE001 - as in read()
            return {"scope": "process", "store": "unavailable", "store_error": _text(exc)}
        view: dict[str, Any] = {"scope": "fleet", "store": "ok"}
        written = self.publisher.error
        if written is not None:  # read, but this process's latest changes are not in it
            view.update(store="degraded", store_error=written)
        view["instances"] = [instance.to_dict() for instance in instances]
        return view

    def instances(self) -> list[Instance]:
        return self.read(lambda fleet: fleet.instances(), lambda: [self.publisher.instance])

    def flush(self, timeout: float) -> bool:
        written = self.publisher.flush(timeout)
        self.fleet.invalidate()
        return written

    def stop(self, timeout: float) -> bool:
        return self.publisher.stop(timeout)

    def _reset_after_fork(self) -> None:
        self._error_lock = threading.Lock()
        self.fleet.after_fork()


def _text(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:500]
