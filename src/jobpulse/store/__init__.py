"""Stores: one status view across the processes of a service and across its restarts.

A store is given to `jobpulse.JobMonitor` (or `jobpulse.setup`) as a URL or a `Store`
object. Every monitor on the same store publishes its changes to it from a thread of its
own, and answers `health()`, `status()`, `statuses()`, `history()` and the routes for the
whole fleet. See docs/store.md.

URLs:

- ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db``: a SQLite file in WAL
  mode (standard library), for the processes of one host.
- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS): a Redis, for
  the processes of several hosts (redis-py: ``pip install jobpulse[redis]``); one Redis,
  not Redis Cluster. ``?prefix=`` sets the keys' prefix.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from jobpulse._shared import StoreError, redact
from jobpulse.store._base import Instance, Store
from jobpulse.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = ["SCHEMA_VERSION", "Instance", "SQLiteStore", "Store", "open_store"]

_SCHEMES = ("sqlite", "redis", "rediss")


def open_store(
    store: str | os.PathLike[str] | Store,
    *,
    namespace: str = "",
    service: str = "unknown_service",
    read_only: bool = False,
) -> Store:
    """The `Store` a URL names (or `store` itself if it is one already). A Redis store's
    keys are under ``jobpulse:<namespace>:<service>:`` unless the URL's ``?prefix=`` says
    otherwise.

    With `read_only`, a store to read and never write (what ``jobpulse status`` reads): a
    SQLite file is opened in SQLite's read-only mode, must exist and is never created or
    migrated (`StoreError` otherwise), and its writes raise `StoreError`; opening and reading
    a Redis store write nothing anyway.

    Raises `jobpulse.StoreError` (naming the URL without its password) for a URL this
    version cannot open: an unknown scheme, a missing path, a folder or file that cannot
    be written, a file that is not a store, a Redis that answers with an error, redis-py
    missing; and `jobpulse.StoreVersionError` for a store written by a newer version.
    """
    if isinstance(store, Store) and not isinstance(store, (str, os.PathLike)):
        return store
    if not isinstance(store, str):
        raise StoreError(
            f"store must be a URL such as 'sqlite:///jobs.db' or a Store, "
            f"not {type(store).__name__}"
        )
    shown = redact(store)
    try:
        parts = urlsplit(store.strip())
    except ValueError as exc:  # an invalid IPv6 host, say
        raise StoreError(f"store {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise StoreError(
            f"store {shown!r}: unsupported URL scheme {scheme or '(none)'!r}; expected "
            "sqlite:///relative.db, sqlite:////absolute.db or redis://host:port/db"
        )
    if scheme != "sqlite":
        return _redis_store(store.strip(), shown, namespace, service)
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
    if read_only:
        from jobpulse.store._readonly import ReadOnlySQLiteStore

        return ReadOnlySQLiteStore(path, url=shown)
    return SQLiteStore(path, url=shown)


def _redis_store(url: str, shown: str, namespace: str, service: str) -> Store:
    try:
        from jobpulse.store.redis import RedisStore, default_prefix
    except ImportError:
        raise StoreError(
            f"store {shown!r}: the Redis store needs redis-py: pip install jobpulse[redis]"
        ) from None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "prefix"]
    if prefixes and not prefixes[-1]:
        raise StoreError(f"store {shown!r}: an empty ?prefix= (leave it out for the default)")
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return RedisStore(
        urlunsplit(parts._replace(query=rest)),
        prefix=prefixes[-1] if prefixes else default_prefix(namespace, service),
        shown_url=shown,
    )
