"""The ``h5`` protocol over HTTP: jsmpeg egress (MPEG-TS over WebSocket) and TS ingest (POST / WS).

Egress: ``ws://HOST/{app}/{stream}.jsmpeg`` (also plain ``GET`` for TS-reading tools), MPEG-1
video + MP2 audio from the planner's ``h5`` variant. Ingest: ``POST`` or WebSocket on
``/{app}/{stream}.ts`` carrying MPEG-TS as the FFmpeg CLI sends it.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import StreamReader, WSCloseCode, WSMsgType, web

from ..hub.stream import HubError, Stream
from ..ingest.mpegts import TsIngest
from ..media import StreamInfo
from ..outputs.jsmpeg import JsmpegOutput
from ..protocols.mpegts import TsError
from .http import CORS, CTX, _key, _peer, close_reason, play

log = logging.getLogger(__name__)

READ_CHUNK = 64 << 10
COALESCE = 0.020  # s small WebSocket messages of a TS publisher may wait to be demuxed together
COALESCE_BYTES = 16 << 10  # ... unless there are this many bytes already


async def jsmpeg(request: web.Request) -> web.StreamResponse:
    """jsmpeg over WebSocket (or the same TS over chunked HTTP for TS-reading tools)."""
    return await play(request, "h5", "jsmpeg", JsmpegOutput, "video/mp2t")


def _publish(request: web.Request) -> tuple[Stream, TsIngest]:
    key = _key(request)
    try:
        stream = request.app[CTX].hub.publish(key, StreamInfo("h5"), f"ts {_peer(request)}")
    except HubError as e:
        raise web.HTTPConflict(text=f"{e}\n", headers=CORS) from None
    return stream, TsIngest(stream)


def _idle(request: web.Request, stream: Stream, timeout: float | None) -> str:
    """Log and return why an idle publisher is being disconnected."""
    reason = f"no data from the publisher for {timeout or 0:.0f} s"
    log.warning("ts %s: %s: %s; disconnecting", _peer(request), stream.key, reason)
    return reason


async def _gather(content: StreamReader, first: bytes) -> bytes:
    """More of a body that arrives in small pieces, up to ``COALESCE_BYTES`` or ``COALESCE`` s:
    one trip to the demuxing thread per tiny read costs a core's percents (see the WebSocket)."""
    parts, size = [first], len(first)
    loop = asyncio.get_running_loop()
    end = loop.time() + COALESCE
    while size < COALESCE_BYTES and (left := end - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):  # (a cancelled read leaves the data buffered)
                more = await content.read(COALESCE_BYTES - size)
        except TimeoutError:
            break
        if not more:  # the end: the caller's next read sees it too
            break
        parts.append(more)
        size += len(more)
    return b"".join(parts)


async def ts_ingest(request: web.Request) -> web.StreamResponse:
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    # PUT too: what `curl -T - URL` sends (a live pipe, chunked) and FFmpeg's `-method PUT`
    if not websocket and request.method not in ("POST", "PUT"):
        raise web.HTTPMethodNotAllowed(request.method, ["POST", "PUT"], headers=CORS)
    stream, ingest = _publish(request)
    hub = request.app[CTX].hub
    # a publisher that sends nothing for this long is disconnected: a hung encoder must not
    # hold the stream key for ever (None: no limit)
    timeout = request.app[CTX].config.publish_timeout or None
    reason = "publisher finished"
    ws: web.WebSocketResponse | None = None
    try:
        if websocket:
            ws = web.WebSocketResponse(compress=False, max_msg_size=4 << 20)
            await ws.prepare(request)
            loop = asyncio.get_running_loop()
            # small messages (a client may send each TS packet alone) are gathered for up to
            # COALESCE s: one trip to the demuxing thread per message cost ~11% of a core for a
            # 2 Mbit/s publisher sending 188-byte messages, ~1% gathered
            pending = bytearray()
            flush_at = 0.0
            while True:
                # (aiohttp reads a timeout of 0 as none at all)
                wait = max(0.001, flush_at - loop.time()) if pending else timeout
                try:
                    msg = await ws.receive(timeout=wait)
                except asyncio.TimeoutError:
                    if pending:
                        await ingest.feed(bytes(pending))
                        pending.clear()
                        continue
                    reason = _idle(request, stream, timeout)
                    await ws.close(code=1001, message=close_reason(reason))
                    break
                if msg.type == WSMsgType.BINARY:
                    if not pending:
                        flush_at = loop.time() + COALESCE
                    pending += msg.data
                    if len(pending) >= COALESCE_BYTES or loop.time() >= flush_at:
                        await ingest.feed(bytes(pending))
                        pending.clear()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                                  WSMsgType.ERROR):
                    break
            if pending:  # < COALESCE_BYTES: demuxed here, where the close cannot cut it off
                ingest.feed_now(bytes(pending))
            return ws
        while True:
            try:
                async with asyncio.timeout(timeout):
                    chunk = await request.content.read(READ_CHUNK)
            except TimeoutError:
                reason = _idle(request, stream, timeout)
                raise web.HTTPRequestTimeout(text=f"{reason}\n", headers=CORS) from None
            if not chunk:
                break
            if len(chunk) < COALESCE_BYTES:
                chunk = await _gather(request.content, chunk)
            await ingest.feed(chunk)
        return web.Response(status=200, text=f"received {ingest.bytes_in} bytes\n", headers=CORS)
    except TsError as e:
        reason = f"bad MPEG-TS: {e}"
        log.warning("ts %s: %s: %s", _peer(request), stream.key, reason)
        if ws is not None:  # past the handshake an HTTP error would garble the WebSocket
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=close_reason(reason))
            return ws
        raise web.HTTPBadRequest(text=f"{reason}\n", headers=CORS) from None
    except (ConnectionError, asyncio.CancelledError):
        reason = "publisher disconnected"
        raise
    finally:
        ingest.finish()
        hub.unpublish(stream, reason)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/{app}/{name}.jsmpeg", jsmpeg)
    for method in ("GET", "POST", "PUT"):  # GET: the WebSocket handshake; OPTIONS: CORS (http.py)
        app.router.add_route(method, "/{app}/{name}.ts", ts_ingest)
