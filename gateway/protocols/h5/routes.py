"""The ``h5`` protocol over HTTP: jsmpeg egress (MPEG-TS over WebSocket) and TS ingest (POST / WS).

Egress: ``ws://HOST/{app}/{stream}.jsmpeg`` (also plain ``GET`` for TS-reading tools), MPEG-1
video + MP2 audio from the planner's ``h5`` variant. Ingest: ``POST`` or WebSocket on
``/{app}/{stream}.ts`` carrying MPEG-TS as the FFmpeg CLI sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from aiohttp import StreamReader, WSCloseCode, WSMsgType, web

from ...hub.sessions import Publisher, Refusal
from ...web.common import (
    CORS,
    CTX,
    WS_CLOSE_TIMEOUT,
    close_reason,
    peer,
    query,
    refused,
    stream_key,
)
from ...web.viewer import play
from ...wire.mpegts import TsError
from .ingest import TsIngest
from .jsmpeg import JsmpegOutput

log = logging.getLogger(__name__)

READ_CHUNK = 64 << 10
COALESCE = 0.020  # s small pieces of a TS publisher may wait to be demuxed together (``_pump``)
COALESCE_BYTES = 16 << 10  # ... unless there are this many bytes already


async def jsmpeg(request: web.Request) -> web.StreamResponse:
    """jsmpeg over WebSocket (or the same TS over chunked HTTP for TS-reading tools)."""
    return await play(request, "h5", "jsmpeg", JsmpegOutput, "video/mp2t")


class Reader(Protocol):
    """A publisher's TS as pieces: a WebSocket's messages, or reads of a POST/PUT body."""

    async def read(self, timeout: float | None) -> bytes:
        """The next piece, ``b""`` at the end; ``TimeoutError`` when none comes within
        ``timeout`` s (None: no limit)."""

    def rest(self) -> bytes:
        """What the transport still holds of a publish its publisher ended properly, once its
        session is being torn down (``b""`` if none)."""

    @property
    def complete(self) -> bool:
        """The publisher ended its publish properly (last chunk, close frame), even if its
        connection is gone since."""


async def _pump(reader: Reader, ingest: TsIngest, publisher: Publisher) -> None:
    """Feed what the publisher sends until it ends (the session service's idle timeout ends the
    stream, and with it this pump: ``_pump_until_ended``).

    Small pieces are gathered up to ``COALESCE_BYTES`` or ``COALESCE`` s: a client may send each
    188-byte packet alone, and one trip to the demuxing thread per piece cost a 2 Mbit/s
    publisher 10-11% of a core over a WebSocket, 6.6% over a chunked POST (~4% gathered).
    What has been read is demuxed whatever ends the pump (the session cancelled when the
    publisher closes its connection right after its last chunk, as the FFmpeg CLI does).
    """
    loop = asyncio.get_running_loop()
    while True:
        first = await reader.read(None)
        if not first:
            return
        publisher.touch()
        parts, size, ended = [first], len(first), False
        end = loop.time() + COALESCE
        try:
            while size < COALESCE_BYTES and (left := end - loop.time()) > 0:
                try:
                    more = await reader.read(left)
                except TimeoutError:
                    break
                if not more:
                    ended = True
                    break
                parts.append(more)
                size += len(more)
        except BaseException:
            with contextlib.suppress(TsError):  # (the reason the pump ends stays the first one)
                ingest.feed_now(b"".join(parts))  # no await: it cannot be cancelled half-way
            raise
        data = b"".join(parts)
        if ended:  # demuxed here, where the closing session cannot be cancelled before finish()
            ingest.feed_now(data)
            return
        await ingest.feed(data)


class _Ended(Exception):
    """The stream ended under its publisher (the gateway shutting down): the reason."""


async def _pump_until_ended(reader: Reader, ingest: TsIngest, publisher: Publisher) -> None:
    """``_pump`` until the publisher ends, or its stream does (``_Ended``: the gateway shutting
    down, the publisher idle or kicked)."""
    stream = ingest.stream
    pump = asyncio.ensure_future(_pump(reader, ingest, publisher))
    ended = asyncio.ensure_future(stream.finished.wait())
    try:
        await asyncio.wait((pump, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        if not pump.done():  # the stream ended, or this session was cancelled (client gone)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump  # no read or demux of this session outlives it
            if reader.complete and not stream.ended:
                with contextlib.suppress(TsError):
                    ingest.feed_now(reader.rest())  # the publisher's last piece, still unread
        elif not pump.cancelled():
            pump.exception()  # seen here, or raised below: never "exception was never retrieved"
    if pump.cancelled():
        raise _Ended(stream.end_reason)
    pump.result()


class _WsReader:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.complete = False

    async def read(self, timeout: float | None) -> bytes:
        while True:
            # (timeout > 0 from _pump: aiohttp reads 0 as none)
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == WSMsgType.BINARY:
                return msg.data
            if msg.type == WSMsgType.TEXT:  # ignoring it would hold the key with no media
                raise TsError("a text message: send the MPEG-TS as binary WebSocket messages "
                              "(an ArrayBuffer or Blob, not a string)")
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.complete = msg.type == WSMsgType.CLOSE
                return b""

    def rest(self) -> bytes:
        return b""  # aiohttp hands out the messages it has before the close


class _BodyReader:
    """A chunked (or sized) POST/PUT body.

    The FFmpeg CLI sends its last chunk and closes its connection without reading the reply.
    aiohttp then cancels the session and makes every read of the body raise "Connection lost",
    even though the body is complete and part of it is still buffered (for a publisher faster
    than real time ~0.5 MB: the last 1.8 s of a 2.2 Mbit/s stream were lost). ``rest`` takes
    that part, so no complete publish loses its end.
    """

    def __init__(self, content: StreamReader) -> None:
        self.content = content
        self._rest_taken = False

    @property
    def complete(self) -> bool:
        return self.content.is_eof()

    async def read(self, timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(timeout):  # (a cancelled read leaves the data buffered)
                return await self.content.read(READ_CHUNK)
        except ConnectionResetError:
            if self.complete:
                return self.rest()
            raise

    def rest(self) -> bytes:
        content = self.content
        if self._rest_taken or not self.complete:
            return b""
        self._rest_taken = True
        # aiohttp has no public way to read a body past the exception it set at the close
        exc = content.exception()
        content._exception = None
        try:
            return content.read_nowait(-1)
        except RuntimeError:  # a read still waiting: nothing can be taken past it
            return b""
        finally:
            content._exception = exc


async def ts_ingest(request: web.Request) -> web.StreamResponse:
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    # PUT too: what `curl -T - URL` sends (a live pipe, chunked) and FFmpeg's `-method PUT`
    if not websocket and request.method not in ("POST", "PUT"):
        raise web.HTTPMethodNotAllowed(request.method, ["POST", "PUT"], headers=CORS)
    key = stream_key(request)
    sessions = request.app[CTX].sessions
    who = peer(request)
    try:
        publisher = await sessions.publish(key, "h5", who, query(request))
    except Refusal as e:
        raise refused(e) from None
    assert publisher.stream is not None
    stream = publisher.stream
    ingest = TsIngest(stream)
    publisher.counters = lambda: {"bytes_in": ingest.bytes_in, "frames_in": stream.frames_in}
    reason = "publisher finished"
    ws: web.WebSocketResponse | None = None
    reader: Reader | None = None
    try:
        if websocket:
            ws = web.WebSocketResponse(compress=False, max_msg_size=4 << 20,
                                       timeout=WS_CLOSE_TIMEOUT)
            await ws.prepare(request)
            try:
                reader = _WsReader(ws)
                await _pump_until_ended(reader, ingest, publisher)
            except _Ended as e:  # (idle: the session service logged it)
                reason = str(e)
                await ws.close(code=1001, message=close_reason(reason))
            return ws
        reader = _BodyReader(request.content)
        try:
            await _pump_until_ended(reader, ingest, publisher)
        except _Ended as e:
            reason = str(e)
            error = web.HTTPRequestTimeout if publisher.timed_out else web.HTTPServiceUnavailable
            raise error(text=f"{reason}\n", headers=CORS) from None
        return web.Response(status=200, text=f"received {ingest.bytes_in} bytes\n", headers=CORS)
    except TsError as e:
        reason = f"bad MPEG-TS: {e}"
        log.warning("ts %s: %s: %s", who, key, reason)
        if ws is not None:  # past the handshake an HTTP error would garble the WebSocket
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=close_reason(reason))
            return ws
        raise web.HTTPBadRequest(text=f"{reason}\n", headers=CORS) from None
    except (ConnectionError, asyncio.CancelledError):
        # the FFmpeg CLI closes right after its last chunk, a WebSocket client right after the
        # close handshake: that publish finished
        complete = reader is not None and reader.complete
        reason = "publisher finished" if complete else "publisher disconnected"
        raise
    finally:
        ingest.finish()
        sessions.unpublish(publisher, reason)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/{app}/{name}.jsmpeg", jsmpeg)
    for method in ("GET", "POST", "PUT"):  # GET: the WebSocket handshake; OPTIONS: CORS (http.py)
        app.router.add_route(method, "/{app}/{name}.ts", ts_ingest)
