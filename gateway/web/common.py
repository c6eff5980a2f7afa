"""What every HTTP route of every protocol shares: CORS, the stream key of a path, the peer, and
the one mapping of a session-service ``Refusal`` to an HTTP error."""

from __future__ import annotations

import math
import re

from aiohttp import web

from ..context import Context
from ..hub.sessions import Code, Refusal

NAME = re.compile(r"^[A-Za-z0-9_.~-]{1,128}$")
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
}

CTX: web.AppKey[Context] = web.AppKey("ctx", Context)

#: How long a WebSocket close waits for the peer's reply (aiohttp's default: 10 s). A peer that
#: never reads (a stalled viewer, a publisher that only sends) would hold the gateway's shutdown
#: that long, since aiohttp waits for running handlers.
WS_CLOSE_TIMEOUT = 2.0


def stream_key(request: web.Request) -> str:
    """``app/stream`` of a ``/{app}/{name}...`` route; 400 for names a key cannot have."""
    app, name = request.match_info["app"], request.match_info["name"]
    if not NAME.match(app) or not NAME.match(name):
        raise web.HTTPBadRequest(text=f"invalid stream path {app}/{name}\n", headers=CORS)
    return f"{app}/{name}"


def peer(request: web.Request) -> str:
    addr = request.transport.get_extra_info("peername") if request.transport else None
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def query(request: web.Request) -> dict[str, str]:
    return dict(request.query)


_ERRORS: dict[Code, type[web.HTTPException]] = {
    Code.BAD_REQUEST: web.HTTPBadRequest,
    Code.FORBIDDEN: web.HTTPForbidden,
    Code.NOT_FOUND: web.HTTPNotFound,
    Code.BUSY: web.HTTPConflict,
    Code.UNSUPPORTED: web.HTTPUnprocessableEntity,
    Code.UNAVAILABLE: web.HTTPServiceUnavailable,
}


def refused(e: Refusal, headers: dict[str, str] | None = None) -> web.HTTPException:
    """The HTTP error of a refusal: its status, the reason as text, ``Retry-After`` if any."""
    headers = {**CORS, **(headers or {})}
    if e.retry_after is not None and e.code is Code.UNAVAILABLE:
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
    return _ERRORS[e.code](text=f"{e}\n", headers=headers)


def close_reason(text: str) -> bytes:
    """A WebSocket close frame carries at most 123 bytes of reason (RFC 6455, 5.5)."""
    data = text.encode()
    return data if len(data) <= 123 else data[:120].decode(errors="ignore").encode() + b"..."
