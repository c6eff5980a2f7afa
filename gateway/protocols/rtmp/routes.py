"""HTTP routes of the ``rtmp`` protocol's egress: HTTP-FLV, and WS-FLV on an upgrade of the same
path (``/{app}/{stream}.flv``)."""

from __future__ import annotations

from aiohttp import web

from ...web.viewer import play
from .flv_output import FlvOutput


async def flv(request: web.Request) -> web.StreamResponse:
    """HTTP-FLV, or WS-FLV on a WebSocket upgrade of the same path."""
    return await play(request, "rtmp", "flv", FlvOutput, "video/x-flv")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/{app}/{name}.flv", flv)
