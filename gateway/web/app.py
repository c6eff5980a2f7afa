"""HTTP server (aiohttp): HTTP-FLV and WS-FLV playback, stream list API; later WHIP/WHEP, jsmpeg.

A viewer's body is written straight to its transport with bytes framed once per batch for all
viewers (HTTP chunks / WebSocket frames, see ``hub.fanout``); aiohttp only does the handshake
and the end of the response.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable

from aiohttp import WSMsgType, web

from ..context import Context
from ..hub.fanout import Limits, Viewer, http_chunk, ws_binary
from ..hub.stream import HubError, NoMediaYet, Stream
from ..hub.output import Output
from ..protocols.rtmp.flv_output import FlvOutput
from ..static import asset_candidates, find_asset
from ..transcode.variant import Variant, VariantRefused, media_for, transcode_load

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_.~-]{1,128}$")
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
}

CTX: web.AppKey[Context] = web.AppKey("ctx", Context)


def _key(request: web.Request) -> str:
    app, name = request.match_info["app"], request.match_info["name"]
    if not NAME.match(app) or not NAME.match(name):
        raise web.HTTPBadRequest(text=f"invalid stream path {app}/{name}\n", headers=CORS)
    return f"{app}/{name}"


def _stream(request: web.Request) -> Stream:
    key = _key(request)
    try:
        return request.app[CTX].hub.get(key)
    except HubError as e:
        raise web.HTTPNotFound(text=f"{e}\n", headers=CORS) from None


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else "?"


#: How long a WebSocket close waits for the peer's reply (aiohttp's default: 10 s). A peer that
#: never reads (a stalled viewer, a publisher that only sends) would hold the gateway's shutdown
#: that long, since aiohttp waits for running handlers.
WS_CLOSE_TIMEOUT = 2.0


def close_reason(text: str) -> bytes:
    """A WebSocket close frame carries at most 123 bytes of reason (RFC 6455, 5.5)."""
    data = text.encode()
    return data if len(data) <= 123 else data[:120].decode(errors="ignore").encode() + b"..."


async def play(request: web.Request, target: str, sink_key: str,
               make_output: Callable[[Stream, object, Limits], Output],
               content_type: str) -> web.StreamResponse:
    """One HTTP (chunked) or WebSocket viewer of the output ``sink_key`` for ``target``.

    aiohttp does the handshake; the body is the shared, already framed batches written to the
    transport by the fan-out. The handler just waits for the end.
    """
    stream = _stream(request)
    headers = {**CORS, "Content-Type": content_type, "Cache-Control": "no-cache"}
    if request.method == "HEAD":  # a probe (player, health check) must not start a transcode
        head = web.StreamResponse(headers=headers)
        head.enable_chunked_encoding()
        return head
    ctx = request.app[CTX]
    if not stream.settled():  # just published: plan once its tracks are known
        log.info("%s: %s: waiting for the publisher's tracks (so far: %s)", _peer(request),
                 stream.key, ", ".join(stream.tracks) or "none")
        try:
            await stream.wait_settled()
        except NoMediaYet as e:
            raise web.HTTPServiceUnavailable(text=f"{e}\n",
                                             headers={**CORS, "Retry-After": "1"}) from None
        except HubError as e:
            raise web.HTTPNotFound(text=f"{e}\n", headers=CORS) from None
    try:
        media, plan = media_for(ctx.matrix, stream, target)
    except VariantRefused as e:
        log.warning("%s: %s", _peer(request), e)
        raise web.HTTPServiceUnavailable(text=f"{e}\n", headers={
            **CORS, "Retry-After": str(math.ceil(e.retry_after))}) from None
    transport = request.transport
    assert transport is not None
    resp: web.StreamResponse
    if request.headers.get("Upgrade", "").lower() == "websocket":
        resp = web.WebSocketResponse(compress=False, max_msg_size=1 << 16, timeout=WS_CLOSE_TIMEOUT)
        await resp.prepare(request)
    else:
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        resp.force_close()
        await resp.prepare(request)
        await resp.write(b"")  # puts the status line and headers on the wire before raw body bytes
    ws = resp if isinstance(resp, web.WebSocketResponse) else None
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_end(reason: str) -> None:
        if not done.done():
            done.set_result(reason)
        if ws is not None and not ws.closed:
            asyncio.ensure_future(ws.close(message=close_reason(reason)))

    label = f"{'ws' if ws is not None else 'http'}-{sink_key} {_peer(request)}"
    viewer = Viewer(transport, label, on_end)
    output = media.sink(sink_key, lambda s: make_output(s, sink_key, ctx.config.limits))
    if ws is not None:
        fanout = output.add_viewer("ws", ws_binary, viewer)
    else:
        fanout = output.add_viewer("http", http_chunk, viewer)
    log.info("%s: playing %s (%s)", label, stream.key, plan)
    reason = "left"
    try:
        if ws is not None:
            async for msg in ws:  # only control traffic is expected; this notices the close
                if msg.type == WSMsgType.ERROR:
                    break
        else:
            reason = await done
    finally:
        output.remove_viewer(fanout, viewer)
    if ws is None and not transport.is_closing():
        if reason.startswith(("write buffer", "behind")):
            transport.abort()  # a stalled viewer gets no orderly end it would never read
        else:
            await resp.write_eof()
    return resp


async def flv(request: web.Request) -> web.StreamResponse:
    """HTTP-FLV, or WS-FLV on a WebSocket upgrade of the same path."""
    return await play(request, "rtmp", "flv", FlvOutput, "video/x-flv")


def _outputs(stream: Stream) -> dict[str, object]:
    """Viewers per output format, and each transcoding variant with its own outputs and stats."""
    out: dict[str, object] = {}
    for key, sink in stream.sinks.items():
        if isinstance(sink, Variant):
            out[f"variant {sink.plan}"] = {"stats": sink.stats(), "outputs": _outputs(sink)}
        else:
            out[str(key)] = sum(len(f.viewers) for f in getattr(sink, "fanouts", {}).values())
    return out


async def streams(request: web.Request) -> web.Response:
    """Live streams with their tracks and viewer counts, for operators."""
    out = []
    for key, s in request.app[CTX].hub.streams.items():
        out.append({
            "key": key,
            "protocol": s.info.protocol,
            "publisher": s.publisher,
            "tracks": {k: {n: v for n, v in t.params().items() if v not in (0, "", 0.0)}
                       for k, t in s.tracks.items()},
            "frames_in": s.frames_in,
            "bytes_in": s.bytes_in,
            # the publisher's clock went back this often (see hub/timeline.py)
            "timestamp_jumps": s.timeline.jumps,
            "outputs": _outputs(s),
        })
    return web.json_response({"streams": out, "transcode": transcode_load()}, headers=CORS)


async def static_asset(request: web.Request) -> web.StreamResponse:
    """Browser players installed from npm (never vendored), see ``gateway/static``."""
    name = request.match_info["file"]
    path = find_asset(name)
    if path is None:
        tried = ", ".join(str(p) for p in asset_candidates(name)) or "unknown asset"
        raise web.HTTPNotFound(text=f"{name} is not installed (run `npm ci`); looked in: {tried}\n",
                               headers=CORS)
    return web.FileResponse(path, headers={**CORS, "Content-Type": "application/javascript"})


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=CORS)


def make_app(ctx: Context) -> web.Application:
    app = web.Application()
    app[CTX] = ctx
    app.router.add_get("/api/streams", streams)
    app.router.add_get("/{app}/{name}.flv", flv)
    app.router.add_get("/_static/{file}", static_asset)
    # these modules import this one (CORS, helpers), so they are imported here, not at the top
    from ..protocols.h5.routes import add_routes as add_h5_routes
    from ..protocols.webrtc.routes import add_routes as add_webrtc_routes

    add_h5_routes(app)
    add_webrtc_routes(app)
    app.router.add_route("OPTIONS", "/{tail:.*}", options)
    return app
