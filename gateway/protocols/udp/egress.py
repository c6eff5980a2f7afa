"""RTP play: each frame packetized once per stream and payload format, shared by every viewer;
per viewer only the 12-byte header differs (its SSRC, sequence numbers, timestamp offset).

A viewer's sockets also take its RTCP: a NACK is answered from the packets it was last sent, a
PLI asks the publisher for a keyframe where it can make one. Sender reports go out every
second. A viewer whose socket buffer fills drops to the next keyframe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable

from ...codecs import h264
from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire.rtp import aac as rtp_aac
from ...wire.rtp import opus as rtp_opus
from ...wire.rtp.h264 import H264Packetizer
from ...wire.rtp.packet import (
    Nack,
    Pli,
    RtcpError,
    SenderReport,
    compound,
    is_rtcp,
    ntp_from_unix,
    parse_rtcp,
    rtp_header,
)
from ...wire.rtp.payload import RtpPayload

log = logging.getLogger(__name__)

__all__ = ["RtcpIn", "RtpOutput", "RtpViewer", "ViewerTrack", "clock_rate"]

MTU = 1200  # default payload size; ``Config.rtp_mtu``
HISTORY = 512  # packets kept per viewer track to answer NACKs (~2.5 s of 2 Mbit/s video)
SOFT_LIMIT = 1 << 20  # bytes queued in a viewer's socket before it drops to the next keyframe
SR_INTERVAL = 1.0


def queued(transport: asyncio.DatagramTransport) -> int:
    """Bytes waiting in the transport (asyncio's and uvloop's have it; typeshed does not)."""
    return int(getattr(transport, "get_write_buffer_size")())  # noqa: B009


def clock_rate(track: Track) -> int:
    """The RTP clock of a track: 90 kHz video, Opus 48 kHz, AAC its sample rate."""
    if track.kind == "video":
        return 90000
    if track.codec == "opus":
        return 48000
    return track.sample_rate or 48000


class ViewerTrack(asyncio.DatagramProtocol):
    """One kind sent to one viewer: its socket, destination, header fields and history."""

    def __init__(self, kind: str, pt: int, dest: tuple[str, int], rtcp_dest: tuple[str, int],
                 rate: int, label: str, on_pli: Callable[[ViewerTrack], object]) -> None:
        self.kind = kind
        self.pt = pt
        self.dest = dest
        self.rtcp_dest = rtcp_dest
        self.rate = rate
        self.label = label
        self.on_pli = on_pli
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts_offset = random.getrandbits(32)
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp: RtcpIn | None = None  # its RTCP port, unless muxed
        self.waiting_key = kind == "video"
        self.history: OrderedDict[int, bytes] = OrderedDict()
        self.packets = 0
        self.octets = 0
        self.drops = 0
        self.nacks = 0
        self.resent = 0
        self.plis = 0
        self._last_ts = 0
        self.last_timestamp = 0  # the shared timestamp (before this viewer's offset) last sent
        self._last_at = 0.0
        self._last_pli = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, payloads: list[RtpPayload], keyframe: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.waiting_key:
            if not keyframe:
                return
            self.waiting_key = False
        if queued(t) > SOFT_LIMIT:
            self.drops += 1
            self.waiting_key = self.kind == "video"
            return
        for p in payloads:
            ts = (p.timestamp + self.ts_offset) & 0xFFFFFFFF
            packet = rtp_header(p.marker, self.pt, self.seq, ts, self.ssrc) + p.payload
            self.transmit(packet)
            self.history[self.seq] = packet
            if len(self.history) > HISTORY:
                self.history.popitem(last=False)
            self.seq = (self.seq + 1) & 0xFFFF
            self.packets += 1
            self.octets += len(p.payload)
            self._last_ts = ts
            self.last_timestamp = p.timestamp
        self._last_at = time.monotonic()

    def transmit(self, packet: bytes) -> None:
        """Put one packet on the wire: the only per-viewer step after the header. A WebRTC
        viewer of this egress would protect it (SRTP) and send it on its ICE pair here."""
        assert self.transport is not None
        self.transport.sendto(packet, self.dest)

    def sender_report(self) -> None:
        """RTP time <-> wall clock for the receiver's A/V sync (RFC 3550 6.4.1)."""
        t = self.rtcp.transport if self.rtcp is not None else self.transport
        if t is None or t.is_closing() or not self.packets:
            return
        rtp_now = self._last_ts + round((time.monotonic() - self._last_at) * self.rate)
        sr = SenderReport(self.ssrc, ntp_from_unix(time.time()), rtp_now & 0xFFFFFFFF,
                          self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF)
        t.sendto(compound(sr), self.rtcp_dest)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        if addr[0] != self.dest[0] or not is_rtcp(data):
            return
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            return
        for p in packets:
            if isinstance(p, Nack) and self.transport is not None:
                self.nacks += 1
                for seq in p.lost:
                    packet = self.history.get(seq)
                    if packet is not None:
                        self.transport.sendto(packet, self.dest)
                        self.resent += 1
            elif isinstance(p, Pli):
                self.plis += 1
                now = time.monotonic()
                if now - self._last_pli >= 0.5:  # one answer per 0.5 s, however many PLIs
                    self._last_pli = now
                    self.on_pli(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.rtcp is not None:
            self.rtcp.close()


class RtcpIn(asyncio.DatagramProtocol):
    """A viewer track's RTCP port (not muxed): feedback in, sender reports out."""

    def __init__(self, track: ViewerTrack) -> None:
        self.track = track
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        self.track.datagram_received(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RtpViewer:
    """One RTP viewer: a ``ViewerTrack`` per kind it takes."""

    def __init__(self, tracks: dict[str, ViewerTrack], on_end: Callable[[str], None]) -> None:
        self.tracks = tracks
        self.on_end = on_end

    def stats(self) -> dict[str, object]:
        ts = self.tracks.values()
        return {"bytes_out": sum(t.octets for t in ts), "packets": sum(t.packets for t in ts),
                "drops": sum(t.drops for t in ts), "nacks": sum(t.nacks for t in ts),
                "resent": sum(t.resent for t in ts), "plis": sum(t.plis for t in ts),
                "queue_bytes": sum(queued(t.transport) for t in ts
                                   if t.transport is not None and not t.transport.is_closing())}


class RtpOutput:
    """Shared sink of one stream (or variant) for one AAC payload format (``hbr``/``latm``)."""

    def __init__(self, stream: Stream, aac_mode: str = "hbr", mtu: int = MTU) -> None:
        self.stream = stream
        self.aac_mode = aac_mode
        self.viewers: list[RtpViewer] = []
        self._h264 = H264Packetizer(mtu=mtu)
        self._hbr = rtp_aac.AacHbrPacketizer(mtu=mtu)
        self._latm = rtp_aac.LatmPacketizer(mtu=mtu)
        self._sets: dict[bytes, tuple[int, list[bytes]]] = {}  # avcC -> NAL length, SPS + PPS
        #: packetized since the latest video keyframe (audio only: the latest packet), for a
        #: joining viewer: made once, like every packet
        self.gop: list[tuple[str, list[RtpPayload], bool]] = []
        self._timer: asyncio.TimerHandle | None = None
        for frame in stream.gop:
            self._remember(frame)

    # -- sink interface ------------------------------------------------------------------

    def on_track(self, track: Track) -> None:
        pass

    def on_metadata(self, metadata: dict[str, object]) -> None:
        pass

    def on_frame(self, frame: Frame) -> None:
        made = self._remember(frame)
        if made is None or not self.viewers:
            return
        kind, payloads, key = made
        for v in self.viewers:
            t = v.tracks.get(kind)
            if t is not None:
                t.send(payloads, key)

    def on_end(self, reason: str) -> None:
        viewers, self.viewers = self.viewers, []
        for v in viewers:
            v.on_end(f"stream ended: {reason}")
        if self._timer is not None:
            self._timer.cancel()

    # -- viewers -------------------------------------------------------------------------

    def add(self, viewer: RtpViewer) -> None:
        """Start a viewer at the cached GOP (its first picture at once), then live packets."""
        self.viewers.append(viewer)
        for kind, payloads, key in self.gop:
            t = viewer.tracks.get(kind)
            if t is not None:
                t.send(payloads, key)
        video = viewer.tracks.get("video")
        if video is not None and video.waiting_key:
            self.stream.request_keyframe()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SR_INTERVAL, self._reports)

    def keyframe_for(self, track: ViewerTrack) -> None:
        """A viewer's PLI: the publisher makes a keyframe if it can (WebRTC, RTP with
        feedback); else the cached GOP is sent to that viewer again, its timestamps squeezed
        just after what it last got, so its picture comes back at once and time goes on."""
        if track.kind != "video" or self.stream.request_keyframe():
            return
        video = [(payloads, key) for kind, payloads, key in self.gop if kind == "video"]
        base = track.last_timestamp
        for i, (payloads, key) in enumerate(video):
            ts = (base + i + 1) & 0xFFFFFFFF
            track.send([RtpPayload(p.payload, p.marker, ts) for p in payloads], key)

    def remove(self, viewer: RtpViewer) -> None:
        if viewer in self.viewers:
            self.viewers.remove(viewer)
        if not self.viewers:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.stream.drop_sink(("rtp", self.aac_mode))

    def _reports(self) -> None:
        for v in self.viewers:
            for t in v.tracks.values():
                t.sender_report()
        self._timer = asyncio.get_running_loop().call_later(SR_INTERVAL, self._reports)

    # -- packetizing ---------------------------------------------------------------------

    def _remember(self, frame: Frame) -> tuple[str, list[RtpPayload], bool] | None:
        made = self._packetize(frame)
        if made is None:
            return None
        kind, _, key = made
        if kind == "video" and key:
            self.gop = [made]
        elif not self.stream.has_video:
            self.gop = [made]
        elif self.gop and len(self.gop) < 3000:
            self.gop.append(made)
        return made

    def _packetize(self, frame: Frame) -> tuple[str, list[RtpPayload], bool] | None:
        track = frame.track
        ts = round(frame.pts * frame.time_base * clock_rate(track)) & 0xFFFFFFFF
        if track.codec == "h264":
            length, sets = self._parameter_sets(track)
            try:
                nals = h264.split_avcc(frame.data, length)
            except h264.H264Error as e:
                log.warning("%s: malformed H.264 frame not sent over RTP (%s)", self.stream.key, e)
                return None
            return "video", self._h264.packetize(nals, ts, sets if frame.keyframe else ()), \
                frame.keyframe
        if track.codec == "aac":
            if self.aac_mode == "latm":
                return "audio", self._latm.packetize(frame.data, ts), True
            return "audio", self._hbr.packetize([frame.data], ts), True
        if track.codec == "opus":
            return "audio", [rtp_opus.packetize(frame.data, ts, marker=False)], True
        return None

    def _parameter_sets(self, track: Track) -> tuple[int, list[bytes]]:
        got = self._sets.get(track.config)
        if got is None:
            try:
                cfg = h264.parse_avc_config(track.config)
                got = (cfg.nal_length_size, [*cfg.sps, *cfg.pps])
            except h264.H264Error:
                got = (4, [])
            if len(self._sets) > 8:
                self._sets.clear()
            self._sets[track.config] = got
        return got
