"""RTP publish: datagrams of one session's tracks -> ``Frame``s on one A/V clock, nothing decoded.

Each m-section of the publisher's SDP gets its own port(s); RTP from any host but the
publisher's is dropped and counted, RTCP (muxed or on port + 1) is never taken for RTP, and
its sender reports align audio and video (``wire.rtp.clock``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from fractions import Fraction

from ...codecs import aac as aac_codec
from ...codecs import h264
from ...hub.stream import Stream
from ...media import Frame, Track
from ...planner import Matrix, negotiate_publish
from ...wire.rtp import aac as rtp_aac
from ...wire.rtp import opus as rtp_opus
from ...wire.rtp.clock import RtpClock
from ...wire.rtp.h264 import H264Depacketizer, parse_sprop_parameter_sets
from ...wire.rtp.jitter import JitterBuffer
from ...wire.rtp.packet import (
    Pli,
    RtcpError,
    RtpError,
    RtpPacket,
    SenderReport,
    compound,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
)
from ...wire.rtp.payload import RtpPayloadError
from ...wire.rtp.session import RtpDescription, RtpMedia, aac_mode
from ...wire.sdp import Codec

log = logging.getLogger(__name__)

__all__ = ["RtpTrack", "TrackError", "UdpEndpoint", "choose", "push_to"]


PLI_SSRC = 0x6D677731  # the gateway's SSRC in the feedback it sends a publisher


class TrackError(ValueError):
    """A payload type's parameters the gateway cannot use (the SDP's fault): the reason."""


class RtpTrack:
    """One m-section's payload -> frames of one ``Track``; ``deliver`` gets each frame."""

    def __init__(self, media: RtpMedia, codec: Codec, name: str, clock: RtpClock,
                 deliver: Callable[[Frame], None], label: str) -> None:
        self.kind = media.kind
        self.feedback = media.feedback
        self.codec = codec
        self.name = name
        self.clock = clock
        self.deliver = deliver
        self.label = label
        self.time_base = Fraction(1, codec.clock_rate)
        self.track: Track | None = None
        self.packets = 0
        self.frames = 0
        self.errors = 0  # payloads the depacketizer refused
        self.malformed = 0  # datagrams that were not RTP / RTCP
        self._last_pts: int | None = None
        self._need_key = True
        #: puts reordered packets back in order (bounded: 0.2 s, 1024 packets); a gap it gives
        #: up is seen by the depacketizer as a sequence gap (video waits for a keyframe)
        self.jitter = JitterBuffer()
        #: where the publisher's RTCP comes from, and the socket that got it: PLIs go back there
        self.rtcp_to: tuple[asyncio.DatagramTransport, tuple[str | bytes, int]] | None = None
        self.ssrc = 0  # the publisher's, for feedback
        self.plis = 0
        self._last_pli = 0.0
        clock.add(self.kind, codec.clock_rate)
        if name == "h264":
            self._h264 = H264Depacketizer()
            self._sprop(codec)
        elif name == "aac":
            self._aac = self._aac_depacketizer(codec)
        elif name == "opus":
            self.track = Track("audio", "opus", sample_rate=48000, channels=codec.channels or 2)
        else:
            raise TrackError(f"{self.kind}: no RTP ingest for {name}")

    def _sprop(self, codec: Codec) -> None:
        """SPS/PPS the SDP carries (``sprop-parameter-sets``): the track is known before the
        first in-band ones, which a device may never send."""
        value = codec.fmtp.get("sprop-parameter-sets")
        if not value:
            return
        try:
            nals = parse_sprop_parameter_sets(value)
            sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
            pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
            if sps and pps:
                self.track = _h264_track(sps, pps)
        except (RtpPayloadError, h264.H264Error) as e:
            log.warning("%s: sprop-parameter-sets ignored (%s); waiting for in-band SPS/PPS",
                        self.label, e)

    def _aac_depacketizer(self, codec: Codec) -> rtp_aac.AacHbrDepacketizer | rtp_aac.LatmDepacketizer:
        try:
            if aac_mode(codec) == "hbr":
                asc = rtp_aac.parse_mpeg4_generic_config(codec.fmtp["config"])
                depack: rtp_aac.AacHbrDepacketizer | rtp_aac.LatmDepacketizer = (
                    rtp_aac.AacHbrDepacketizer(
                        size_length=int(codec.fmtp.get("sizelength", "13")),
                        index_length=int(codec.fmtp.get("indexlength", "3")),
                        index_delta_length=int(codec.fmtp.get("indexdeltalength", "3"))))
            else:
                asc = rtp_aac.asc_from_latm_config(codec.fmtp["config"])
                depack = rtp_aac.LatmDepacketizer()
            info = aac_codec.parse_asc(asc)
        except (ValueError, KeyError) as e:
            raise TrackError(f"audio: unusable AAC config {codec.fmtp.get('config')!r}: {e}") \
                from None
        self.track = Track("audio", "aac", asc, sample_rate=info.sample_rate,
                           channels=info.channels or 2)
        return depack

    def datagram(self, data: bytes, arrival: float, transport: asyncio.DatagramTransport,
                 addr: tuple[str | bytes, int], rtp: bool = True) -> bool:
        """One datagram of this track's port(s): RTCP (its sender reports align the clock,
        its source is where PLIs go) or, when ``rtp``, RTP of its payload type. True when an
        RTP packet was taken; malformed ones are dropped and counted."""
        try:
            if is_rtcp(data):  # never taken for RTP, even the first (RFC 5761)
                self.rtcp_to = (transport, addr)
                for p in parse_rtcp(data):
                    if isinstance(p, SenderReport):
                        self.clock.sender_report(self.kind, p.ntp_time, p.rtp_time)
                return False
            if not rtp:
                return False
            packet = parse_rtp(data)
        except (RtpError, RtcpError) as e:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 100 == 0:
                log.warning("%s: malformed datagram dropped (%s; %d so far)", self.label, e,
                            self.malformed)
            return False
        if packet.payload_type != self.codec.pt:
            return False
        self.receive(packet, arrival)
        return True

    def receive(self, packet: RtpPacket, arrival: float) -> None:
        """One RTP packet as it came: through the jitter buffer, then depacketized."""
        self.ssrc = packet.ssrc
        self._release(self.jitter.push(packet, arrival), arrival)

    def request_keyframe(self) -> bool:
        """PLI to the publisher (RFC 4585), at most every 0.5 s; False when it takes no
        feedback or its RTCP address is not known yet."""
        if not self.feedback or self.rtcp_to is None or self.kind != "video":
            return False
        now = time.monotonic()
        if now - self._last_pli >= 0.5:
            self._last_pli = now
            transport, addr = self.rtcp_to
            if not transport.is_closing():
                transport.sendto(compound(Pli(PLI_SSRC, self.ssrc)), addr)
                self.plis += 1
        return True

    def poll(self, now: float) -> None:
        """Release what waited too long for a lost packet (the session calls it on a timer)."""
        if self.jitter.held:
            self._release(self.jitter.poll(now), now)

    def _release(self, packets: list[RtpPacket], arrival: float) -> None:
        for p in packets:
            try:
                self.rtp(p.payload, p.marker, p.timestamp, p.sequence_number, arrival)
            except (RtpPayloadError, h264.H264Error) as e:
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("%s: malformed payload dropped (%s; %d so far)", self.label, e,
                                self.errors)

    def rtp(self, payload: bytes, marker: bool, timestamp: int, seq: int, arrival: float) -> None:
        """One RTP packet of this track, in order (``RtpPayloadError`` for a malformed one)."""
        self.packets += 1
        if self.name == "h264":
            for unit in self._h264.push(payload, marker, timestamp, seq):
                self._video(unit.nals, unit.idr, unit.damaged, unit.timestamp, arrival)
        elif self.name == "aac":
            for f in self._aac.push(payload, marker, timestamp, seq):
                self._out(f.data, f.timestamp, arrival, True)
        else:
            self._out(rtp_opus.depacketize(payload), timestamp, arrival, True)

    def _video(self, nals: tuple[bytes, ...], idr: bool, damaged: bool, ts: int,
               arrival: float) -> None:
        if damaged:
            self._need_key = True
            self.request_keyframe()
            return
        types = [h264.nal_type(n) for n in nals]
        sps = [n for n, t in zip(nals, types, strict=True) if t == h264.NAL_SPS]
        pps = [n for n, t in zip(nals, types, strict=True) if t == h264.NAL_PPS]
        if sps and pps:
            if self.track is None or self.track.config != h264.build_avc_config(sps, pps):
                self.track = _h264_track(sps, pps)
        if self.track is None or (self._need_key and not idr):
            return  # no parameter sets yet, or frames lost: wait for a keyframe
        body = [n for n, t in zip(nals, types, strict=True)
                if t not in (h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD)]
        if not body:
            return
        self._need_key = False
        self._out(h264.join_avcc(body), ts, arrival, idr)

    def _out(self, data: bytes, ts: int, arrival: float, keyframe: bool) -> None:
        """On the session clock, never going back and at least 1 ms after the previous frame
        (millisecond outputs, FLV and RTMP, need strictly increasing times)."""
        assert self.track is not None
        seconds = self.clock.seconds(self.kind, ts, arrival)
        pts = max(0, round(seconds / self.time_base))
        if self._last_pts is not None:
            pts = max(pts, self._last_pts + max(1, self.codec.clock_rate // 1000))
        self._last_pts = pts
        self.frames += 1
        self.deliver(Frame(self.track, data, pts, pts, self.time_base, keyframe))


def _h264_track(sps: list[bytes], pps: list[bytes]) -> Track:
    info = h264.parse_sps(sps[0])
    return Track("video", "h264", h264.build_avc_config(sps, pps), width=info.width,
                 height=info.height, frame_rate=info.frame_rate or 0.0, profile=info.profile,
                 level=info.level)


class UdpEndpoint(asyncio.DatagramProtocol):
    """The socket of one track's RTP (and of its RTCP when muxed), or of its RTCP alone;
    ``peer_host`` (when set) is the only host it takes datagrams from."""

    def __init__(self, track: RtpTrack, peer_host: str, on_packet: Callable[[], None],
                 rtcp_only: bool = False) -> None:
        self.track = track
        self.peer_host = peer_host
        self.on_packet = on_packet
        self.rtcp_only = rtcp_only
        self.transport: asyncio.DatagramTransport | None = None
        self.foreign = 0  # datagrams from another host, dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        if addr[0] != self.peer_host:
            self.foreign += 1
            if self.foreign == 1:
                log.warning("%s: RTP from %s, not the publisher's host %s: dropped (counted)",
                            self.track.label, addr[0], self.peer_host)
            return
        assert self.transport is not None
        if self.track.datagram(data, time.monotonic(), self.transport, addr,
                               rtp=not self.rtcp_only):
            self.on_packet()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def choose(matrix: Matrix, desc: RtpDescription) -> list[tuple[RtpMedia, Codec, str]]:
    """Per kind, the payload type to take: the matrix's order among what the SDP offers;
    ``TrackError`` when there is none."""
    kinds = desc.kinds()
    offers = {k: [name for _, name in m.usable()] for k, m in kinds.items()}
    chosen = negotiate_publish(matrix, "udp", offers)
    out = []
    for kind, m in kinds.items():
        name = chosen.get(kind)
        codec = next((c for c, n in m.usable() if n == name), None)
        if name is not None and codec is not None:
            out.append((m, codec, name))
    if not out:
        offered = {k: [c.name for c in m.codecs] for k, m in kinds.items()}
        raise TrackError(f"no codec the gateway takes over RTP was offered (got {offered}; "
                         "want H264, and Opus or AAC as mpeg4-generic AAC-hbr or MP4A-LATM "
                         "cpresent=0)")
    return out


def push_to(stream: Stream) -> Callable[[Frame], None]:
    """Frames into ``stream`` unless it ended (the publisher was kicked)."""

    def deliver(frame: Frame) -> None:
        if not stream.ended:
            stream.push(frame)

    return deliver
