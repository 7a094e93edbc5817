"""What the server checks before it reads a request body: who may call, from where, how much.

Two ASGI middlewares, used by the single server (:mod:`~persona_axis.serve.app`) and by the
Ray Serve front (:mod:`~persona_axis.serve.replicas`) alike, so neither reads a body it will
refuse:

- :class:`Guard`: the ``Host`` and ``Origin`` allow-lists, then the keys. ``/v1/admin/...``
  needs the admin key (admin routes are off without one); every other ``/v1/`` route needs the
  API key when one is set; ``/``, the static files, ``/health`` and ``/metrics`` stay open.
  A request with an ``Origin`` header (a browser's cross-origin fetch or form) must come from
  the server's own origin or one of ``allowed_origins``, so a page elsewhere cannot drive a
  keyless server on localhost; ``allowed_hosts`` (None: any) refuses other ``Host`` names,
  which stops DNS-rebinding pages that reach a local server under their own name.
- :class:`BodyLimit`: 413 for bodies over ``limit`` bytes, declared or streamed, and 408 for
  a body not complete within ``timeout_s`` (a client dripping bytes cannot hold a connection).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from persona_axis.errors import PersonaAxisError
from persona_axis.serve.protocol import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ADMIN_PREFIX = "/v1/admin"


def error_response(error: ApiError) -> JSONResponse:
    """The JSON answer of an :class:`ApiError` (with ``Retry-After`` / ``WWW-Authenticate``)."""
    headers = {"Retry-After": "1"} if error.status == 429 else None
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def host_name(value: str) -> str:
    """``Host`` header value without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


@dataclass(frozen=True)
class Access:
    """Who may call: ``api_key`` (None: open ``/v1/`` routes), ``admin_key`` (None: admin
    routes off), ``allowed_hosts`` (``Host`` names; None: any), ``allowed_origins`` (besides
    the server's own, e.g. ``https://chat.example.org``)."""

    api_key: str | None = None
    admin_key: str | None = None
    allowed_hosts: frozenset[str] | None = None
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        api_key: str | None = None,
        admin_key: str | None = None,
        allowed_hosts: Iterable[str] | None = None,
        allowed_origins: Iterable[str] = (),
    ) -> Access:
        """Checked settings; an empty key is refused (it would let an empty token in)."""
        for flag, key in (("api_key", api_key), ("admin_key", admin_key)):
            if key is not None and not key.strip():
                raise PersonaAxisError(
                    f"The {flag} is empty; give a non-empty key, or none to turn it off."
                )
        hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        return cls(api_key, admin_key, hosts, origins)

    def refusal(self, scope: Scope) -> ApiError | None:
        """Why the request of ``scope`` is refused, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            return ApiError(
                403,
                "This server does not answer for that Host name; use one of the names it was "
                "started with (--allowed-host).",
                kind="permission_error",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin.rstrip("/").lower() not in self.allowed_origins | {own}:
                return ApiError(
                    403,
                    "Requests from web pages of other origins are refused; serve the page from "
                    "this server or start it with --allowed-origin ORIGIN.",
                    kind="permission_error",
                    code="origin_not_allowed",
                )
        path: str = scope.get("path", "")
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            if self.admin_key is None:
                return ApiError(
                    403,
                    "Admin routes are off; start the server with --admin-key (or "
                    "PERSONA_AXIS_ADMIN_KEY) and --bundle-root DIR to load bundles at run time.",
                    kind="permission_error",
                    code="admin_disabled",
                )
            return _key_refusal(headers, self.admin_key, "the admin key (--admin-key)")
        if path.startswith("/v1/") and self.api_key is not None:
            return _key_refusal(headers, self.api_key, "the API key (--api-key)")
        return None


def _key_refusal(headers: dict[str, str], key: str, which: str) -> ApiError | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
        return None
    return ApiError(
        401,
        f"Missing or wrong key; send 'Authorization: Bearer <key>' with {which} the server "
        "was started with.",
        code="invalid_api_key",
    )


class Guard:
    """ASGI middleware: answer :meth:`Access.refusal` before the app reads anything."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self.access.refusal(scope) if scope["type"] == "http" else None
        if refused is not None:
            await error_response(refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)


MAX_BODY_BYTES = 1_000_000
"""Default largest request body."""
BODY_TIMEOUT_S = 30.0
"""Seconds a client has to send its whole request body."""


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, declared or streamed; 408 for a
    body still incomplete after ``timeout_s`` seconds."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = ApiError(
            413,
            f"The request body is larger than {self.limit} bytes; send a shorter conversation.",
            code="body_too_large",
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(too_big)(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                slow = ApiError(
                    408,
                    f"The request body did not arrive within {self.timeout_s:g} s; send it "
                    "at once.",
                    code="body_timeout",
                )
                await error_response(slow)(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            size += len(message.get("body", b""))
            if size > self.limit:
                await error_response(too_big)(scope, receive, send)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
