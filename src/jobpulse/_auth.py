"""Who may see the per-job detail, the status page and error texts: ``routes(monitor,
auth=...)``.

Needs Starlette: imported only by the HTTP modules. `auth` is either a token or a callable:

- a token (``str``): the request must carry it as ``Authorization: Bearer <token>``, or as
  the password of HTTP Basic authentication (any user name), which is what a browser sends
  after its own login prompt. It is compared in constant time: both sides are hashed first,
  so neither its length nor its first differing byte shows in the time taken.
- a callable taking the Starlette ``Request`` and returning a bool (or an awaitable of one):
  True lets the request through. It runs on the event loop; one that raises is reported to
  the guard's hooks and answers a bare 500, never a trace.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from jobpulse._exceptions import InvalidJobError
from jobpulse._guard import report_internal_error
from jobpulse._model import dump_json

__all__ = ["Access", "Auth"]

#: What ``routes(auth=...)`` takes.
Auth = str | Callable[[Request], bool | Awaitable[bool]] | None

_REALM = 'realm="jobpulse"'


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class Access:
    """Decides whether a request may see what `auth` protects; no `auth` lets all through."""

    def __init__(self, auth: Auth) -> None:
        self._token: bytes | None = None
        self._check: Callable[[Request], bool | Awaitable[bool]] | None = None
        if isinstance(auth, str):
            if not auth or auth != auth.strip():
                raise InvalidJobError(
                    "auth: the token must be a non-empty string without surrounding spaces"
                )
            self._token = _digest(auth.encode())
        elif callable(auth):
            self._check = auth
        elif auth is not None:
            raise InvalidJobError(
                f"auth must be a token (str), a callable taking the request, or None; "
                f"got {type(auth).__name__}"
            )

    @property
    def protected(self) -> bool:
        return self._token is not None or self._check is not None

    async def allows(self, request: Request) -> bool:
        """Whether `request` may see protected things. Raises what a callable raises."""
        if self._check is not None:
            verdict = self._check(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            return verdict is True
        if self._token is None:
            return True
        given = _credential(request.headers.get("authorization", ""))
        # Always one compare, of digests of the same length, whatever was sent.
        return hmac.compare_digest(_digest(given or b"\0missing"), self._token) and bool(given)

    async def refuse(self, request: Request) -> Response | None:
        """None if `request` may see what is protected; else the answer to send: 401
        ``{"error": "unauthorized"}`` (with the challenge of a token), or a bare 500 if a
        callable raised (reported to the guard's hooks)."""
        try:
            if await self.allows(request):
                return None
        except Exception as exc:  # noqa: BLE001 - the callable's bug: reported, never shown
            report_internal_error("auth callable", exc)
            return _json({"error": "internal error"}, 500, {})
        return _json({"error": "unauthorized"}, 401, self.challenge())

    def challenge(self) -> dict[str, str]:
        """The ``WWW-Authenticate`` header of a 401: a browser shows its login prompt for
        the Basic challenge. None for a callable: its owner decides how one logs in."""
        if self._token is None:
            return {}
        return {"WWW-Authenticate": f"Bearer {_REALM}, Basic {_REALM}"}


def _credential(header: str) -> bytes | None:
    """The token in an ``Authorization`` header: a Bearer token, or a Basic password."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.encode("latin-1")  # the header's own bytes (Starlette decodes them so)
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        return password if colon and password else None
    return None


def _json(content: object, status_code: int, headers: dict[str, str]) -> Response:
    return Response(
        dump_json(content),
        status_code=status_code,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **headers},
    )
