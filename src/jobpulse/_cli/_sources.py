"""Where ``jobpulse status`` and ``jobpulse history`` read the jobs: a jobpulse server's
health routes (``--url``), or a store read directly and read only (``--store``).

Both give the documents the routes serve: the health document (``GET /api/v1/health/jobs``)
and one job's (``GET /api/v1/health/jobs/{name}?limit=N``), as parsed JSON. Whatever keeps a
source from telling the jobs' state (a server that cannot be reached or answers something
else, a store that cannot be opened or read) raises `Unknown` with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jobpulse import HealthReport, JobsSummary, JobStatus, RunRecord, StoreError, __version__
from jobpulse._health import evaluate
from jobpulse._shared import redact, rfc3339

__all__ = [
    "HEALTH_PATH",
    "UNSENDABLE_TOKEN",
    "HttpSource",
    "JobNotFound",
    "Source",
    "StoreSource",
    "Unknown",
    "health_url",
    "url_credentials",
]

if TYPE_CHECKING:
    from jobpulse.store import Instance
    from jobpulse.store._readonly import FleetReader

T = TypeVar("T")

#: The health document's path on a jobpulse server (``jobpulse.starlette.HEALTH_PATH``).
HEALTH_PATH = "/api/v1/health/jobs"
#: The statuses a health document may have.
STATUSES = ("healthy", "degraded", "unhealthy")
#: The largest answer read from a server (the document of 1,000 jobs is about 1 MB).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: Why a token is not sent (the token itself is never shown).
UNSENDABLE_TOKEN = "the token holds characters an HTTP header cannot carry"


class Unknown(Exception):
    """The jobs' state cannot be told; the message says why (no secret in it)."""


class JobNotFound(Exception):
    """The source has no job of that name."""


class Source(Protocol):
    #: Where the jobs are read, for messages (without a password).
    label: str

    def health(self) -> dict[str, Any]: ...

    def job(self, name: str, limit: int) -> dict[str, Any]: ...

    def close(self) -> None: ...


def url_credentials(url: str) -> tuple[str, str] | None:
    """The user name and password of `url`'s user info, percent-decoded (the password ""
    when it has none); None when it has no user info. Read by hand, so that a URL that
    `urllib.parse` refuses still gives up its password to be masked."""
    _, separator, rest = url.strip().partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0] if separator else ""
    userinfo, at, _ = authority.rpartition("@")
    if not at:
        return None
    user, _, password = userinfo.partition(":")
    return urllib.parse.unquote(user), urllib.parse.unquote(password)


def health_url(url: str) -> str:
    """The health document's URL from a server's base URL (``http://host:8000``, or with a
    prefix its routes are mounted under) or from the document's own URL, without its user
    info (see `url_credentials`). Raises `Unknown` for a URL that is not http(s)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host, _ = parts.hostname, parts.port
    except ValueError:  # an invalid port or IPv6 host: its text may hold the password
        host = None
        parts = urllib.parse.urlsplit("")
    if parts.scheme not in ("http", "https") or not host:
        raise Unknown(f"--url must be an http:// or https:// URL, got {redact(url)!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(HEALTH_PATH):
        path += HEALTH_PATH
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=path, fragment=""))


def _header_safe(text: str) -> bool:
    """Whether `text` can be a header's value as http.client sends it (Latin-1, no control
    character)."""
    return all(" " <= char <= "~" or "\xa0" <= char <= "\xff" for char in text)


class HttpSource:
    """A jobpulse server's health routes, with a Bearer token if given, else the URL's user
    info as HTTP Basic (jobpulse's routes take the token as the Basic password); the user
    info is never part of the URL requested or shown. Each answer, whole, comes within
    `timeout` seconds or is given up. Redirects are followed, without the credentials."""

    def __init__(self, url: str, *, token: str | None, timeout: float) -> None:
        self.url = health_url(url)
        self.label = redact(self.url)
        self._timeout = timeout
        self._authorization: str | None = None
        self._credentials = "the token"
        if token:
            if not _header_safe(token):
                raise Unknown(UNSENDABLE_TOKEN)
            self._authorization = f"Bearer {token}"
        else:
            credentials = url_credentials(url)
            if credentials is not None:
                self._credentials = "the URL's user and password"
                pair = ":".join(credentials).encode("utf-8")
                self._authorization = f"Basic {base64.b64encode(pair).decode('ascii')}"

    def health(self) -> dict[str, Any]:
        status, document = self._get(self.url)
        if not (200 <= status < 300 or status == 503):  # 503: an unhealthy document
            raise self._refused(self.url, status, document)
        return _checked_health(document, self.label)

    def job(self, name: str, limit: int) -> dict[str, Any]:
        quoted = urllib.parse.quote(name, safe="")
        parts = urllib.parse.urlsplit(self.url)
        url = urllib.parse.urlunsplit(
            parts._replace(path=f"{parts.path}/{quoted}", query=f"limit={limit}")
        )
        status, document = self._get(url)
        if status == 404 and isinstance(document, dict) and document.get("job_name") == name:
            raise JobNotFound(name)
        if not (200 <= status < 300 or status == 503):
            raise self._refused(url, status, document)
        if (
            not isinstance(document, dict)
            or document.get("status") not in STATUSES
            or not isinstance(document.get("job"), dict)
            or not isinstance(document.get("history"), list)
        ):
            raise Unknown(f"{redact(url)} did not answer a job's document")
        return document

    def _refused(self, url: str, status: int, document: object) -> Unknown:
        shown = redact(url)
        if status == 401:
            if self._authorization:
                return Unknown(f"{shown} refused {self._credentials} (401 unauthorized)")
            return Unknown(
                f"{shown} answered 401 unauthorized: give its token with --token or JOBPULSE_TOKEN"
            )
        if status == 403:
            return Unknown(f"{shown} answered 403 forbidden")
        if status == 404:
            return Unknown(f"{shown} answered 404: no jobpulse health route there")
        error = document.get("error") if isinstance(document, dict) else None
        detail = f" ({redact(str(error))[:200]})" if isinstance(error, str) else ""
        return Unknown(f"{shown} answered HTTP {status}{detail}")

    def _get(self, url: str) -> tuple[int, object]:
        """The status of a GET of `url` and its body parsed as JSON (None if it is not),
        the whole answer within the timeout (`_Deadline`)."""
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", "User-Agent": f"jobpulse/{__version__}"}
        )
        if self._authorization:
            # Not sent again to where a redirect leads.
            request.add_unredirected_header("Authorization", self._authorization)
        shown = redact(url)
        late = Unknown(f"no answer from {shown} within {self._timeout:g}s")
        with _Deadline(self._timeout) as deadline:
            opener = urllib.request.build_opener(
                _WatchedHTTPHandler(deadline), _WatchedHTTPSHandler(deadline)
            )
            try:
                try:
                    with opener.open(request, timeout=self._timeout) as response:
                        status, body = response.status, response.read(MAX_ANSWER_BYTES + 1)
                except urllib.error.HTTPError as exc:  # 4xx, 5xx: 503 is an unhealthy answer
                    with exc:
                        status, body = exc.code, exc.read(MAX_ANSWER_BYTES + 1)
            except urllib.error.URLError as exc:
                if deadline.passed:
                    raise late from None
                raise Unknown(f"cannot reach {shown}: {_reason(exc.reason)}") from None
            except TimeoutError:
                raise late from None
            except ValueError as exc:  # a host IDNA cannot encode, a control character
                raise Unknown(f"cannot request {shown}: {_reason(exc)}") from None
            except (OSError, http.client.HTTPException) as exc:
                if deadline.passed:
                    raise late from None
                raise Unknown(f"cannot read the answer of {shown}: {_reason(exc)}") from None
            if deadline.passed:  # a body without a length, cut where the deadline came
                raise late
        if len(body) > MAX_ANSWER_BYTES:
            raise Unknown(f"the answer of {shown} is larger than {MAX_ANSWER_BYTES} bytes")
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def close(self) -> None:
        pass


class _Deadline:
    """Shuts down the sockets of one request once `seconds` have passed, so that a server
    that answers a byte at a time cannot hold the command past its ``--timeout`` (a
    socket's own timeout bounds each read, not the answer). Its thread is a named daemon
    woken by an Event; leaving the ``with`` block stops it."""

    def __init__(self, seconds: float) -> None:
        self.passed = False
        self._seconds = seconds
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="jobpulse-cli-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.passed:
                _shut(sock)

    def _run(self) -> None:
        if self._done.wait(self._seconds):
            return
        with self._lock:
            self.passed = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **options: Any) -> http.client.HTTPConnection:
            watched = _WatchedHTTPConnection(host, **options)
            watched.deadline = self._deadline
            return watched

        return self.do_open(connection, req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **options: Any) -> http.client.HTTPConnection:
            watched = _WatchedHTTPSConnection(host, **options)
            watched.deadline = self._deadline
            return watched

        return self.do_open(connection, req)


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return redact(reason.strerror)
    return redact(str(reason) or type(reason).__name__)


def _checked_health(document: object, label: str) -> dict[str, Any]:
    if (
        not isinstance(document, dict)
        or document.get("status") not in STATUSES
        or not isinstance(document.get("jobs"), dict)
        or not all(isinstance(job, dict) for job in document["jobs"].values())
    ):
        raise Unknown(f"{label} did not answer a jobpulse health document")
    return document


class StoreSource:
    """A store read directly and read only (`jobpulse.store._readonly.FleetReader`): the
    documents the routes of a process on that store would serve for the fleet. A Redis
    store's keys are found by `namespace` and `service`, as its writers name them (or the
    URL's ``?prefix=``)."""

    def __init__(self, url: str, *, namespace: str, service: str) -> None:
        self.label = redact(url)
        self._url = url
        self._namespace = namespace
        self._service = service
        self._reader: FleetReader | None = None

    def _open(self) -> FleetReader:
        if self._reader is None:
            from jobpulse.store._readonly import FleetReader

            try:
                self._reader = FleetReader(
                    self._url, namespace=self._namespace, service=self._service
                )
            except StoreError as exc:
                raise Unknown(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - the store's failure (redis-py, sqlite3)
                raise self._unreadable(exc) from None
        return self._reader

    def _unreadable(self, exc: Exception) -> Unknown:
        return Unknown(
            f"store {self.label} cannot be read: {redact(f'{type(exc).__name__}: {exc}')}"
        )

    def _read(self, work: Callable[[FleetReader], T]) -> T:
        reader = self._open()
        try:
            return work(reader)
        except Exception as exc:  # noqa: BLE001 - the store's failure (redis-py, sqlite3)
            raise self._unreadable(exc) from None

    def health(self) -> dict[str, Any]:
        started = time.perf_counter()

        def read(reader: FleetReader) -> tuple[dict[str, JobStatus], list[Instance]]:
            return reader.statuses(), reader.instances()

        statuses, instances = self._read(read)
        now = datetime.now(timezone.utc)
        report = HealthReport(
            status=evaluate(statuses),
            timestamp=now,
            jobs=statuses,
            summary=JobsSummary.of(statuses, now),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            view={
                "scope": "fleet",
                "store": "ok",
                "instances": [instance.to_dict() for instance in instances],
            },
        )
        return report.to_dict()

    def job(self, name: str, limit: int) -> dict[str, Any]:
        def read(reader: FleetReader) -> tuple[JobStatus | None, list[RunRecord]]:
            status = reader.status(name)
            return status, [] if status is None else reader.history(name, limit)

        status, history = self._read(read)
        if status is None:
            raise JobNotFound(name)
        return {
            "status": evaluate({name: status}).value,
            "timestamp": rfc3339(datetime.now(timezone.utc)),
            "job": status.to_dict(),
            "history": [record.to_dict() for record in history],
        }

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
