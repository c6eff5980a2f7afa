"""One HTTP (chunked) or WebSocket viewer of a byte output (HTTP-FLV, WS-FLV, jsmpeg).

aiohttp does the handshake; the body is the output's shared batches, framed once for all viewers
(``web.framing``) and written straight to the transport by the fan-out. The handler only waits
for the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import WSMsgType, web

from ..hub.fanout import Limits, Viewer
from ..hub.output import Output
from ..hub.sessions import Refusal
from ..hub.stream import Stream
from .common import (
    CORS,
    CTX,
    WS_CLOSE_TIMEOUT,
    close_reason,
    peer,
    query,
    refused,
    stream_key,
)
from .framing import http_chunk, ws_binary

log = logging.getLogger(__name__)


async def play(request: web.Request, target: str, sink_key: str,
               make_output: Callable[[Stream, object, Limits], Output],
               content_type: str) -> web.StreamResponse:
    """Play ``target``'s output ``sink_key`` over chunked HTTP, or WebSocket on an upgrade."""
    key = stream_key(request)
    ctx = request.app[CTX]
    sessions = ctx.sessions
    who = peer(request)
    headers = {**CORS, "Content-Type": content_type, "Cache-Control": "no-cache"}
    try:
        if request.method == "HEAD":  # a probe (player, health check) must not start a transcode
            await sessions.source(key, target, who, query(request))
            head = web.StreamResponse(headers=headers)
            head.enable_chunked_encoding()
            return head
        limits = ctx.config.limits
        player = await sessions.play(key, target, who, query(request),
                                     lambda s: make_output(s, sink_key, limits), sink_key=sink_key)
    except Refusal as e:
        raise refused(e) from None
    output = player.sink
    assert output is not None
    transport = request.transport
    resp: web.StreamResponse
    try:
        if transport is None:
            raise ConnectionResetError("client gone")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            resp = web.WebSocketResponse(compress=False, max_msg_size=1 << 16,
                                         timeout=WS_CLOSE_TIMEOUT)
            await resp.prepare(request)
        else:
            resp = web.StreamResponse(headers=headers)
            resp.enable_chunked_encoding()
            resp.force_close()
            await resp.prepare(request)
            await resp.write(b"")  # puts the status line and headers on the wire before raw bytes
    except BaseException:
        sessions.stop(player)
        if not output.fanouts:  # nobody else came meanwhile: the output goes (and its variant)
            output.stream.drop_sink(sink_key)
        raise
    ws = resp if isinstance(resp, web.WebSocketResponse) else None
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_end(reason: str) -> None:
        if not done.done():
            done.set_result(reason)
        if ws is not None and not ws.closed:
            asyncio.ensure_future(ws.close(message=close_reason(reason)))

    label = f"{'ws' if ws is not None else 'http'}-{sink_key} {who}"
    viewer = Viewer(transport, label, on_end)
    if ws is not None:
        fanout = output.add_viewer("ws", ws_binary, viewer)
    else:
        fanout = output.add_viewer("http", http_chunk, viewer)
    player.counters = lambda: viewer.stats(fanout)
    player.kick = lambda reason: output.remove_viewer(fanout, viewer, reason)
    log.info("%s: playing %s (%s)", label, key, player.plan)
    reason = "left"
    try:
        if ws is not None:
            async for msg in ws:  # only control traffic is expected; this notices the close
                if msg.type == WSMsgType.ERROR:
                    break
        else:
            reason = await done
    finally:
        sessions.stop(player)
        output.remove_viewer(fanout, viewer)
    if ws is None and not transport.is_closing():
        if reason.startswith(("write buffer", "behind")):
            transport.abort()  # a stalled viewer gets no orderly end it would never read
        else:
            await resp.write_eof()
    return resp
