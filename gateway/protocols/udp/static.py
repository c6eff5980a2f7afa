"""Static UDP ingest, configured instead of set up over HTTP: RTP described by an inline SDP
(MediaMTX's ``udp+rtp://`` source) and MPEG-TS over UDP (hardware encoders, SRS's
``mpegts_over_udp``). A stream starts with its first datagram and ends when they stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ...config import Config, ConfigError
from ...hub.sessions import Publisher, Refusal, Sessions
from ...wire.mpegts import TsDemuxer, TsError
from ...wire.rtp.clock import RtpClock
from ...wire.rtp.packet import is_rtcp
from ...wire.rtp.session import RtpMedia, parse
from ...wire.sdp import Codec, SdpError
from .ingest import RtpTrack, TrackError, choose, push_to
from .ports import open_endpoint

log = logging.getLogger(__name__)

__all__ = ["StaticInputs"]

PENDING_MAX = 1000  # datagrams kept while the publish is decided


def _entries(config: Config, name: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for i, entry in enumerate(getattr(config, name)):
        where = f"{name}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table with {', '.join(keys)}")
        missing = [k for k in keys if k not in entry]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(entry["port"], int) or not 0 < entry["port"] < 65536:
            raise ConfigError(f"{where}.port: expected a UDP port, got {entry['port']!r}")
        if not isinstance(entry["key"], str) or entry["key"].count("/") != 1:
            raise ConfigError(f"{where}.key: expected app/stream, got {entry['key']!r}")
        out.append(entry)
    return out


class _Input:
    """One configured key: publishes on the first datagram, again after its stream ended."""

    def __init__(self, sessions: Sessions, key: str, protocol: str, label: str) -> None:
        self.sessions = sessions
        self.key = key
        self.protocol = protocol
        self.label = label
        self.publisher: Publisher | None = None
        self._starting: asyncio.Task[None] | None = None
        self._pending: list[tuple[Callable[[], None], float]] = []
        self.dropped = 0

    @property
    def live(self) -> bool:
        p = self.publisher
        return p is not None and not p.closed and p.stream is not None and not p.stream.ended

    def datagram(self, handle: Callable[[], None], peer: str) -> None:
        """Run ``handle`` now if the stream is live, once it is otherwise."""
        if self.live:
            assert self.publisher is not None
            self.publisher.touch()
            handle()
            return
        if len(self._pending) < PENDING_MAX:
            self._pending.append((handle, time.monotonic()))
        else:
            self.dropped += 1
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start(peer))

    async def _start(self, peer: str) -> None:
        try:
            self.publisher = await self.sessions.publish(self.key, self.protocol, peer, {},
                                                         kick=self._kicked)
        except Refusal as e:
            log.warning("%s: publish refused: %s (datagrams dropped)", self.label, e)
            self._pending.clear()
            await asyncio.sleep(1.0)  # at most one attempt a second while datagrams come
            return
        finally:
            self._starting = None
        log.info("%s: publishing %s (first datagram from %s)", self.label, self.key, peer)
        self.started()
        pending, self._pending = self._pending, []
        for handle, _ in pending:
            handle()

    def started(self) -> None:
        """The publisher is live: fresh per-stream state (subclasses)."""

    def _kicked(self, reason: str) -> None:
        self.stop(reason)

    def stop(self, reason: str) -> None:
        publisher, self.publisher = self.publisher, None
        if publisher is not None:
            self.sessions.unpublish(publisher, reason)


class _TsInput(_Input, asyncio.DatagramProtocol):
    """MPEG-TS over UDP: each datagram (7 x 188 bytes, as the FFmpeg CLI sends) demuxed."""

    def __init__(self, sessions: Sessions, key: str, port: int) -> None:
        super().__init__(sessions, key, "udp", f"mpegts udp:{port}")
        self.demuxer: TsDemuxer | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def started(self) -> None:
        self.demuxer = TsDemuxer()

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.datagram(lambda: self._feed(data), f"{addr[0]!s}:{addr[1]}")

    def _feed(self, data: bytes) -> None:
        """Demuxed here: a datagram is small (the loop only moves its bytes to the hub)."""
        if self.demuxer is None or self.publisher is None or self.publisher.stream is None:
            return
        stream = self.publisher.stream
        try:
            frames = self.demuxer.receive_data(data)
        except TsError as e:
            log.warning("%s: bad MPEG-TS: %s; stream ended", self.label, e)
            self.stop(f"bad MPEG-TS: {e}")
            return
        if stream.announced != self.demuxer.announced:
            stream.expect(self.demuxer.announced)
        for f in frames:
            if not stream.ended:
                stream.push(f)

    def stop(self, reason: str) -> None:
        self.demuxer = None
        super().stop(reason)


class _RtpInput(_Input):
    """RTP of the m-sections of one configured SDP, each on its own port (RTCP on + 1)."""

    def __init__(self, sessions: Sessions, key: str, chosen: list[tuple[RtpMedia, Codec, str]]
                 ) -> None:
        super().__init__(sessions, key, "udp", f"rtp {key}")
        self.chosen = chosen
        self.tracks: dict[str, RtpTrack] = {}

    def started(self) -> None:
        assert self.publisher is not None and self.publisher.stream is not None
        clock = RtpClock()
        deliver = push_to(self.publisher.stream)
        self.tracks = {m.kind: RtpTrack(m, codec, name, clock, deliver,
                                        f"{self.label} {m.kind}")
                       for m, codec, name in self.chosen}

    def received(self, kind: str, data: bytes, transport: asyncio.DatagramTransport,
                 addr: tuple[str | bytes, int]) -> None:
        if is_rtcp(data) and not self.live:
            return  # RTCP alone never starts a stream
        arrival = time.monotonic()

        def handle() -> None:
            track = self.tracks.get(kind)
            if track is not None:
                track.datagram(data, arrival, transport, addr)

        self.datagram(handle, f"{addr[0]!s}:{addr[1]}")

    def poll(self) -> None:
        now = time.monotonic()
        for t in self.tracks.values():
            t.poll(now)


class _RtpPort(asyncio.DatagramProtocol):
    def __init__(self, owner: _RtpInput, kind: str) -> None:
        self.owner = owner
        self.kind = kind
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        assert self.transport is not None
        self.owner.received(self.kind, data, self.transport, addr)


class StaticInputs:
    """The configured UDP inputs of one gateway, bound at start, closed with it."""

    def __init__(self) -> None:
        self.transports: list[asyncio.BaseTransport] = []
        self.inputs: list[_Input] = []
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def start(cls, config: Config, sessions: Sessions) -> StaticInputs:
        self = cls()
        loop = asyncio.get_running_loop()
        try:
            for entry in _entries(config, "mpegts_inputs", ("port", "key")):
                ts = _TsInput(sessions, entry["key"], entry["port"])
                self.transports.append(
                    await open_endpoint(ts, local_addr=(config.host, entry["port"])))
                self.inputs.append(ts)
            for i, entry in enumerate(_entries(config, "rtp_inputs", ("port", "key", "sdp"))):
                await self._rtp(config, sessions, entry, f"rtp_inputs[{i}]")
        except OSError as e:
            self.close()
            raise ConfigError(f"cannot bind a configured UDP input: {e}") from None
        except BaseException:
            self.close()
            raise
        if any(isinstance(i, _RtpInput) for i in self.inputs):
            self._timer = loop.call_later(0.05, self._poll)
        return self

    async def _rtp(self, config: Config, sessions: Sessions, entry: dict[str, Any],
                   where: str) -> None:
        try:
            desc = parse(str(entry["sdp"]))
        except SdpError as e:
            raise ConfigError(f"{where}.sdp: {e}") from None
        try:
            chosen = choose(sessions.matrix, desc)
        except TrackError as e:
            raise ConfigError(f"{where}.sdp: {e}") from None
        rtp = _RtpInput(sessions, entry["key"], chosen)
        for m, _, _ in chosen:
            for port in sorted({m.port, m.rtcp_port}):
                self.transports.append(await open_endpoint(
                    _RtpPort(rtp, m.kind), local_addr=(config.host, port)))
        self.inputs.append(rtp)

    def _poll(self) -> None:
        for i in self.inputs:
            if isinstance(i, _RtpInput) and i.live:
                i.poll()
        self._timer = asyncio.get_running_loop().call_later(0.05, self._poll)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for t in self.transports:
            t.close()
        for i in self.inputs:
            i.stop("gateway shutting down")
