"""RTMP server sessions (``rtmp`` and ``miniprogram``): asyncio transport around the sans-I/O core.

One ``RtmpSession`` per TCP connection. Publishing feeds the hub through ``FlvIngest``; playing
attaches the connection's transport to the stream's shared ``RtmpOutput`` fan-out, so the bytes a
player receives were chunked once for all players.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from ...context import Context
from ...hub.fanout import Fanout, Viewer, identity
from ...hub.stream import HubError, Stream
from .ingest import FlvIngest, IngestError
from ...media import StreamInfo
from .rtmp_output import CHUNK_SIZE, PLAY_STREAM_ID, RtmpOutput
from ...wire.rtmp import connection as rc
from ...wire.rtmp.messages import RtmpError
from ...transcode.variant import media_for

log = logging.getLogger(__name__)

MSG_AUDIO, MSG_VIDEO = 8, 9


def classify(app: str, query: dict[str, str], miniprogram_apps: list[str]) -> str:
    """The matrix protocol of an RTMP session: ``miniprogram`` by app name or ``?client=``."""
    if query.get("client") == "miniprogram" or app in miniprogram_apps:
        return "miniprogram"
    return "rtmp"


def stream_key(app: str, name: str) -> str:
    return f"{app}/{name}"


class RtmpSession(asyncio.Protocol):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hub = ctx.hub
        self.limits = ctx.config.limits
        self.miniprogram_apps = ctx.config.miniprogram_apps
        self.max_message_size = ctx.config.max_message_size
        self.publish_timeout = ctx.config.publish_timeout
        self.last_rx = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self.conn: rc.ServerConnection | None = None
        self.peer = "?"
        self.app = ""
        self.query: dict[str, str] = {}
        self.stream: Stream | None = None  # published
        self.ingest: FlvIngest | None = None
        self.publish_id = 0
        self.play: tuple[RtmpOutput, Fanout, Viewer] | None = None
        self._settling: asyncio.Task[None] | None = None  # a play waiting for the tracks
        self.closed = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.conn = rc.ServerConnection(chunk_size_out=CHUNK_SIZE,
                                        max_message_size=self.max_message_size)
        if self.publish_timeout > 0:
            asyncio.get_running_loop().call_later(self.publish_timeout, self._check_started)

    def _check_started(self) -> None:
        """A connection that neither publishes nor plays within ``publish_timeout`` s (a port
        scan, a stalled handshake, a client that never asks) is closed: idle sockets are not
        free, and nothing else would ever end them."""
        if not self.closed and self.stream is None and self.play is None:
            log.info("rtmp %s: no publish or play within %.0f s; closing", self.peer,
                     self.publish_timeout)
            self._close(abort=True)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.conn is None:
            return
        self.last_rx = time.monotonic()
        try:
            for event in self.conn.receive_data(data):
                self._handle(event)
        except (RtmpError, IngestError) as e:
            log.warning("rtmp %s: %s; closing connection", self.peer, e)
            told = isinstance(e, IngestError) and bool(self.publish_id)
            if told:  # the publisher's client shows it (FFmpeg: "Server error: ...")
                self.conn.send_status(self.publish_id, "error", "NetStream.Publish.Failed", str(e))
            self._flush()
            self._close(abort=not told)  # a reset would discard the status unread
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_publish("publisher disconnected")
        self._stop_play("connection closed")

    # -- events --------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.conn is not None and self.transport is not None:
            out = self.conn.data_to_send()
            if out:
                self.transport.write(out)

    def _handle(self, ev: object) -> None:
        if isinstance(ev, rc.MediaReceived):
            if self.ingest is not None and ev.stream_id == self.publish_id:
                if ev.type_id == MSG_VIDEO:
                    self.ingest.video(ev.timestamp, ev.payload)
                elif ev.type_id == MSG_AUDIO:
                    self.ingest.audio(ev.timestamp, ev.payload)
        elif isinstance(ev, rc.DataReceived):
            if self.ingest is not None:
                self.ingest.metadata(ev.values)
        elif isinstance(ev, rc.Connected):
            self.app = ev.app
            self.query = dict(ev.query)
            log.info("rtmp %s: connect app=%s", self.peer, ev.app)
        elif isinstance(ev, rc.PublishRequested):
            self._publish(ev)
        elif isinstance(ev, rc.PlayRequested):
            self._play(ev)
        elif isinstance(ev, rc.PublishStopped):
            if ev.stream_id == self.publish_id:
                self._stop_publish("publisher stopped")
        elif isinstance(ev, rc.PlayStopped):
            self._stop_play("player stopped")

    def _publish(self, ev: rc.PublishRequested) -> None:
        assert self.conn is not None
        key = stream_key(self.app, ev.name)
        if not ev.name or self.stream is not None:
            self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName",
                                     "empty stream name" if not ev.name else "already publishing")
            return
        protocol = classify(self.app, {**self.query, **ev.query}, self.miniprogram_apps)
        try:
            self.stream = self.hub.publish(key, StreamInfo(protocol), f"rtmp {self.peer}")
        except HubError as e:
            log.warning("rtmp %s: publish %s refused: %s", self.peer, key, e)
            self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName", str(e))
            return
        self.publish_id = ev.stream_id
        self.ingest = FlvIngest(self.stream)
        self.conn.accept_publish(ev.stream_id)
        if self.publish_timeout > 0:
            self._watch_publisher(self.stream)

    def _watch_publisher(self, stream: Stream) -> None:
        """A publisher that sends nothing for ``publish_timeout`` s is disconnected: a hung
        encoder (its TCP connection still open) must not hold the stream key for ever."""
        if self.closed or self.stream is not stream:
            return
        idle = time.monotonic() - self.last_rx
        if idle >= self.publish_timeout:
            log.warning("rtmp %s: no data from the publisher of %s for %.0f s; disconnecting",
                        self.peer, stream.key, idle)
            self._stop_publish(f"no data from the publisher for {idle:.0f} s")
            self._close(abort=True)
            return
        asyncio.get_running_loop().call_later(
            max(0.1, min(1.0, self.publish_timeout - idle)), self._watch_publisher, stream)

    def _play(self, ev: rc.PlayRequested) -> None:
        assert self.conn is not None and self.transport is not None
        key = stream_key(self.app, ev.name)
        self._stop_play("replaced by a new play")
        try:
            stream = self.hub.get(key)
        except HubError as e:
            log.info("rtmp %s: play %s: %s", self.peer, key, e)
            self.conn.reject_play(ev.stream_id, "NetStream.Play.StreamNotFound", str(e))
            return
        if not stream.settled():  # just published: plan once its tracks are known
            log.info("rtmp %s: play %s: waiting for the publisher's tracks (so far: %s)",
                     self.peer, key, ", ".join(stream.tracks) or "none")
            self._settling = asyncio.get_running_loop().create_task(self._play_settled(ev, stream))
            return
        self._start_play(ev, stream)

    async def _play_settled(self, ev: rc.PlayRequested, stream: Stream) -> None:
        try:
            await stream.wait_settled()
        except HubError as e:
            why: HubError | None = e
        else:
            why = None
        self._settling = None
        if self.closed or self.conn is None or self.transport is None:
            return
        if why is not None:
            log.info("rtmp %s: play %s: %s", self.peer, stream.key, why)
            self.conn.reject_play(ev.stream_id, "NetStream.Play.Failed", str(why))
        else:
            self._start_play(ev, stream)
        self._flush()

    def _start_play(self, ev: rc.PlayRequested, stream: Stream) -> None:
        assert self.conn is not None and self.transport is not None
        key = stream.key
        protocol = classify(self.app, {**self.query, **ev.query}, self.miniprogram_apps)
        try:
            media, _ = media_for(self.ctx.matrix, stream, protocol)
        except ValueError as e:
            log.warning("rtmp %s: play %s: %s", self.peer, key, e)
            self.conn.reject_play(ev.stream_id, "NetStream.Play.Failed", str(e))
            return
        self.conn.accept_play(ev.stream_id)
        self._flush()  # status messages must precede the media
        output = media.sink("rtmp", lambda s: RtmpOutput(s, "rtmp", self.limits))
        viewer = Viewer(self.transport, f"rtmp {self.peer} ({protocol})", self._viewer_ended)
        fanout = output.add_viewer("raw", identity, viewer)
        self.play = (output, fanout, viewer)
        log.info("rtmp %s: playing %s as %s", self.peer, key, protocol)

    def _viewer_ended(self, reason: str) -> None:
        """Called by the fan-out: stream ended, or this viewer fell too far behind."""
        play, self.play = self.play, None
        if self.closed or self.conn is None or self.transport is None:
            return
        if play is not None and play[0].stream.ended:
            self.conn.send_status(PLAY_STREAM_ID, "status", "NetStream.Play.UnpublishNotify",
                                  f"{play[0].stream.key} is now unpublished")
            self.conn.send_status(PLAY_STREAM_ID, "status", "NetStream.Play.Stop",
                                  f"stopped playing {play[0].stream.key}")
            self.conn.send_stream_eof(PLAY_STREAM_ID)
            self._flush()
            self._close(abort=False)
        elif reason != "left" and not reason.startswith("connection closed"):
            self._close(abort=True)

    # -- teardown ------------------------------------------------------------------------

    def _stop_publish(self, reason: str) -> None:
        stream, self.stream, self.ingest = self.stream, None, None
        if stream is not None:
            self.hub.unpublish(stream, reason)

    def _stop_play(self, reason: str) -> None:
        if self._settling is not None:  # a play still waiting for the tracks: not any more
            self._settling.cancel()
            self._settling = None
        play, self.play = self.play, None
        if play is not None:
            output, fanout, viewer = play
            viewer.on_end = _ignore
            output.remove_viewer(fanout, viewer, "left")

    def _close(self, abort: bool) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._stop_publish("publisher connection closed")
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


def _ignore(reason: str) -> None:
    pass


async def serve(ctx: Context) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    factory: Callable[[], RtmpSession] = lambda: RtmpSession(ctx)
    return await loop.create_server(factory, ctx.config.host, ctx.config.rtmp_port, backlog=4096)
