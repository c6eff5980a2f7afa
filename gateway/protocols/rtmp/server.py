"""RTMP server sessions (``rtmp`` and ``miniprogram``): asyncio transport around the sans-I/O core.

One ``RtmpSession`` per TCP connection. Publish and play go through the session service
(``hub.sessions``); publishing feeds the hub through ``FlvIngest``, playing attaches the
connection's transport to the stream's shared ``RtmpOutput`` fan-out, so the bytes a player
receives were chunked once for all players.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from ...context import Context
from ...hub.fanout import Fanout, Viewer, identity
from ...hub.sessions import Code, Player, Publisher, Refusal
from ...wire.rtmp import connection as rc
from ...wire.rtmp.messages import AUDIO as MSG_AUDIO
from ...wire.rtmp.messages import VIDEO as MSG_VIDEO
from ...wire.rtmp.messages import RtmpError
from .ingest import FlvIngest, IngestError
from .rtmp_output import CHUNK_SIZE, PLAY_STREAM_ID, RtmpOutput

log = logging.getLogger(__name__)

#: RTMP status codes of a refused publish / play, by refusal (the description says why)
PUBLISH_REFUSED = {Code.BUSY: "NetStream.Publish.BadName",
                   Code.FORBIDDEN: "NetStream.Publish.Unauthorized"}
PLAY_REFUSED = {Code.NOT_FOUND: "NetStream.Play.StreamNotFound",
                Code.FORBIDDEN: "NetStream.Play.Unauthorized"}


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
        self.sessions = ctx.sessions
        self.limits = ctx.config.limits
        self.miniprogram_apps = ctx.config.miniprogram_apps
        self.max_message_size = ctx.config.max_message_size
        self.publish_timeout = ctx.config.publish_timeout
        self.transport: asyncio.Transport | None = None
        self.conn: rc.ServerConnection | None = None
        self.peer = "?"
        self.app = ""
        self.query: dict[str, str] = {}
        self.publisher: Publisher | None = None
        self.ingest: FlvIngest | None = None
        self.publish_id = 0
        self.play: tuple[Player[RtmpOutput], Fanout, Viewer] | None = None
        #: a publish / a play being decided (authorize, waiting for the tracks)
        self._deciding: dict[str, asyncio.Task[None]] = {}
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
        if not self.closed and self.publisher is None and self.play is None and not self._deciding:
            log.info("rtmp %s: no publish or play within %.0f s; closing", self.peer,
                     self.publish_timeout)
            self._close(abort=True)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.conn is None:
            return
        if self.publisher is not None:
            self.publisher.touch()
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
            self._stop_play("replaced by a new play")
            self._decide("play", self._play(ev))
        elif isinstance(ev, rc.PublishStopped):
            if ev.stream_id == self.publish_id:
                self._stop_publish("publisher stopped")
        elif isinstance(ev, rc.PlayStopped):
            self._stop_play("player stopped")

    def _decide(self, what: str, decide: Coroutine[Any, Any, None]) -> None:
        """Run a publish or play decision; it usually completes at once (no hook to wait for,
        tracks known), and flushes its answer when it does."""
        task = asyncio.get_running_loop().create_task(decide)
        self._deciding[what] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._deciding.get(what) is t:
                del self._deciding[what]
            if not t.cancelled() and t.exception() is not None:
                log.error("rtmp %s: %s", self.peer, t.exception())
                self._close(abort=True)

        task.add_done_callback(done)

    def _publish(self, ev: rc.PublishRequested) -> None:
        assert self.conn is not None
        if not ev.name or self.publisher is not None or "publish" in self._deciding:
            self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName",
                                     "empty stream name" if not ev.name else "already publishing")
            return
        self._decide("publish", self._publish_async(ev))

    async def _publish_async(self, ev: rc.PublishRequested) -> None:
        key = stream_key(self.app, ev.name)
        query = {**self.query, **ev.query}
        protocol = classify(self.app, query, self.miniprogram_apps)
        try:
            publisher = await self.sessions.publish(key, protocol, self.peer, query,
                                                    kick=self._kicked)
        except Refusal as e:
            if self.closed or self.conn is None:
                return
            log.warning("rtmp %s: publish %s refused: %s", self.peer, key, e)
            self.conn.reject_publish(ev.stream_id,
                                     PUBLISH_REFUSED.get(e.code, "NetStream.Publish.Failed"),
                                     str(e))
            self._flush()
            return
        if self.closed or self.conn is None:  # gone while it was decided
            self.sessions.unpublish(publisher, "publisher disconnected")
            return
        assert publisher.stream is not None
        self.publisher = publisher
        self.publish_id = ev.stream_id
        self.ingest = FlvIngest(publisher.stream)
        self.conn.accept_publish(ev.stream_id)
        self._flush()

    def _kicked(self, reason: str) -> None:
        """The session service ends this publisher (idle, kicked): drop the connection."""
        self._stop_publish(reason)
        self._close(abort=True)

    async def _play(self, ev: rc.PlayRequested) -> None:
        key = stream_key(self.app, ev.name)
        query = {**self.query, **ev.query}
        protocol = classify(self.app, query, self.miniprogram_apps)
        limits = self.limits
        try:
            player = await self.sessions.play(
                key, protocol, self.peer, query, lambda s: RtmpOutput(s, "rtmp", limits),
                sink_key="rtmp")
        except Refusal as e:
            if self.closed or self.conn is None:
                return
            log.info("rtmp %s: play %s: %s", self.peer, key, e)
            self.conn.reject_play(ev.stream_id, PLAY_REFUSED.get(e.code, "NetStream.Play.Failed"),
                                  str(e))
            self._flush()
            return
        if self.closed or self.conn is None or self.transport is None:
            self.sessions.stop(player)
            return
        output = player.sink
        assert output is not None
        self.conn.accept_play(ev.stream_id)
        self._flush()  # status messages must precede the media
        viewer = Viewer(self.transport, f"rtmp {self.peer} ({protocol})", self._viewer_ended)
        fanout = output.add_viewer("raw", identity, viewer)
        player.counters = lambda: viewer.stats(fanout)
        player.kick = lambda reason: self._close(abort=True)
        self.play = (player, fanout, viewer)
        log.info("rtmp %s: playing %s as %s", self.peer, key, protocol)

    def _viewer_ended(self, reason: str) -> None:
        """Called by the fan-out: stream ended, or this viewer fell too far behind."""
        play, self.play = self.play, None
        if play is not None:
            self.sessions.stop(play[0])
        if self.closed or self.conn is None or self.transport is None:
            return
        if play is not None and play[0].sink is not None and play[0].sink.stream.ended:
            stream = play[0].sink.stream
            self.conn.send_status(PLAY_STREAM_ID, "status", "NetStream.Play.UnpublishNotify",
                                  f"{stream.key} is now unpublished")
            self.conn.send_status(PLAY_STREAM_ID, "status", "NetStream.Play.Stop",
                                  f"stopped playing {stream.key}")
            self.conn.send_stream_eof(PLAY_STREAM_ID)
            self._flush()
            self._close(abort=False)
        elif reason != "left" and not reason.startswith("connection closed"):
            self._close(abort=True)

    # -- teardown ------------------------------------------------------------------------

    def _stop_publish(self, reason: str) -> None:
        publisher, self.publisher, self.ingest = self.publisher, None, None
        if publisher is not None:
            self.sessions.unpublish(publisher, reason)

    def _stop_play(self, reason: str) -> None:
        deciding = self._deciding.pop("play", None)
        if deciding is not None:
            deciding.cancel()  # a play still being decided: not any more
        play, self.play = self.play, None
        if play is not None:
            player, fanout, viewer = play
            viewer.on_end = _ignore
            self.sessions.stop(player)
            assert player.sink is not None
            player.sink.remove_viewer(fanout, viewer, "left")

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
