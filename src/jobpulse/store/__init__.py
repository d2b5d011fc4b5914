"""Stores: one status view across the processes of a service and across its restarts.

A store is given to `jobpulse.JobMonitor` (or `jobpulse.setup`) as a URL or a `Store`
object. Every monitor on the same store publishes its changes to it from a thread of its
own, and answers `health()`, `status()`, `statuses()`, `history()` and the routes for the
whole fleet. See docs/store.md.

URLs:

- ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``: a SQLite file in WAL
  mode (standard library), for the processes of one host.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from jobpulse._shared import StoreError, redact
from jobpulse.store._base import Instance, Store
from jobpulse.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = ["SCHEMA_VERSION", "Instance", "SQLiteStore", "Store", "open_store"]

_SCHEMES = ("sqlite",)


def open_store(store: str | os.PathLike[str] | Store) -> Store:
    """The `Store` a URL names (or `store` itself if it is one already).

    Raises `jobpulse.StoreError` (naming the URL without its password) for a URL this
    version cannot open: an unknown scheme, a missing path, a folder or file that cannot
    be written, a file that is not a store, and `jobpulse.StoreVersionError` for a store
    written by a newer version.
    """
    if isinstance(store, Store) and not isinstance(store, (str, os.PathLike)):
        return store
    if not isinstance(store, str):
        raise StoreError(
            f"store must be a URL such as 'sqlite:///jobs.db' or a Store, "
            f"not {type(store).__name__}"
        )
    shown = redact(store)
    parts = urlsplit(store.strip())
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise StoreError(
            f"store {shown!r}: unsupported URL scheme {scheme or '(none)'!r}; "
            "expected sqlite:///relative.db or sqlite:////absolute.db"
        )
    if parts.netloc:
        raise StoreError(
            f"store {shown!r}: a SQLite URL has no host; use sqlite:///relative.db "
            "or sqlite:////absolute.db"
        )
    if not store.strip()[len(scheme) :].startswith(":///"):
        raise StoreError(
            f"store {shown!r}: expected sqlite:///relative.db or sqlite:////absolute.db"
        )
    path = unquote(parts.path)[1:]  # sqlite:///a.db -> "a.db", sqlite:////a.db -> "/a.db"
    if not path or path.endswith("/") or parts.query or parts.fragment:
        raise StoreError(f"store {shown!r}: expected a file path, as in sqlite:///jobs.db")
    return SQLiteStore(path, url=shown)
