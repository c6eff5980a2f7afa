"""The only module that touches aiortc / aioice internals; ``tests/test_webrtc_seam.py`` guards it.

aiortc decodes whatever it receives and gathers ICE candidates on every interface (never
loopback) plus a public STUN server. A gateway must do neither: received media goes to the hub
still encoded, and a session offers exactly the addresses it is configured for. The seams, each
checked on install so that an aiortc upgrade fails loudly instead of silently decoding:

* **receive**: ``RTCRtpReceiver.__jitter_buffer`` is replaced by a ``FrameAssembler``. It hands
  every complete encoded frame to a callback the moment its last (marker) packet arrives, and
  always answers aiortc's ``add()`` with "no frame", so aiortc's decoder thread idles and never
  creates a decoder. aiortc's own buffer returns a frame only when the *next* frame starts (one
  frame of latency) and at most one frame per packet.
* **RTCP in**: the receiver's and sender's ``_handle_rtcp_packet`` are wrapped per instance to see
  sender reports (RTP <-> NTP mapping for A/V sync) and a viewer's PLI/FIR; aiortc itself only
  forwards PLI to an *encoder*, which pass-through senders don't have.
* **RTCP out**: ``RTCRtpReceiver._send_rtcp_pli`` asks a publisher for a keyframe.
* **send**: aiortc's contract is relied on: a track whose ``recv()`` returns an ``av.Packet`` is
  packetized, never encoded (``RTCRtpSender._next_encoded_frame``). The packetizer itself
  (``RTCRtpSender.__encoder``) is replaced by a ``SharedPacketizer`` so that a frame sent to N
  viewers is split into RTP payloads once, not N times.
* **ICE**: ``aioice.ice.get_host_addresses`` is replaced by a function that honours the
  ``ice_hosts`` context (set around ``setLocalDescription``), so each peer connection gathers the
  addresses its owner chose, loopback included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aioice.ice
import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import H264Encoder, OpusEncoder, Vp8Encoder
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpSrPacket

log = logging.getLogger(__name__)

__all__ = [
    "EncodedFrame",
    "FrameAssembler",
    "ReceiverTap",
    "SeamError",
    "SharedPacketizer",
    "ice_hosts",
    "share_packetizer",
    "tap_receiver",
    "watch_sender",
]

_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_DECODER_THREAD_ATTR = "_RTCRtpReceiver__decoder_thread"


class SeamError(RuntimeError):
    """aiortc's internals no longer look the way this module expects (likely an upgrade)."""


@dataclass(slots=True)
class EncodedFrame:
    """One depayloaded frame as it came off the wire.

    ``data`` is what aiortc's depayloader produced: Annex B for H.264 (every NAL with a 4-byte
    start code), the raw frame for VP8, the packet for Opus.
    """

    data: bytes
    rtp_timestamp: int  # as sent (32-bit, not unwrapped)
    payload_type: int
    ssrc: int
    arrival: float  # time.monotonic() when its first packet arrived
    discontinuity: bool = False  # frames were lost right before this one
    timestamp: int = 0  # aiortc's JitterFrame field name, kept for duck-typing


FrameCallback = Callable[[EncodedFrame], None]


class FrameAssembler:
    """Drop-in for aiortc's ``JitterBuffer``: reorders by sequence number, emits on completion.

    A video frame is complete when the packets from the expected sequence number up to a marker
    packet (or up to a packet of a later timestamp) are all present. Audio packets are frames on
    their own and are emitted at once (late ones are dropped). If a gap does not fill (NACK/RTX
    had their chance) within ``max_wait`` seconds or ``max_gap`` packets, the missing packets are
    given up: the next frame is flagged ``discontinuity`` and aiortc sends a PLI.
    """

    def __init__(self, is_video: bool, deliver: FrameCallback, *, max_gap: int = 1024,
                 max_wait: float = 0.25) -> None:
        self.is_video = is_video
        self.capacity = 1024  # read by nobody in aiortc 1.16; kept for JitterBuffer parity
        self._deliver = deliver
        self._max_gap = max_gap
        self._max_wait = max_wait
        self._packets: dict[int, tuple[Any, float]] = {}
        self._next: int | None = None
        self._gap_since = 0.0
        self._discontinuity = True  # the first packet seen may be the middle of a frame
        self.ssrc = 0
        self.frames = 0
        self.lost = 0

    def add(self, packet: Any) -> tuple[bool, None]:
        """aiortc's entry point; returns (send a PLI, no frame for aiortc's decoder)."""
        now = time.monotonic()
        seq: int = packet.sequence_number
        self.ssrc = packet.ssrc
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000:
            return False, None  # older than what was already emitted: duplicate or too late
        pli = False
        if ahead >= 2 * self._max_gap:  # a jump (sender restart): start over
            self._packets.clear()
            self._next = seq
            self._discontinuity = True
            pli = self.is_video
        self._packets[seq] = (packet, now)
        if not self.is_video:
            self._emit_audio()
            return False, None
        self._emit_video()
        if self._packets and self._stalled(now):
            self._skip_gap()
            self._emit_video()
            pli = True
        return pli, None

    # -- internals ---------------------------------------------------------------------------

    def _emit_audio(self) -> None:
        assert self._next is not None
        while self._packets:
            seq = self._next if self._next in self._packets else min(
                self._packets, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]
            if seq != self._next:
                self.lost += (seq - self._next) & 0xFFFF
            packet, arrival = self._packets.pop(seq)
            self._next = (seq + 1) & 0xFFFF
            self._out([packet], arrival)

    def _emit_video(self) -> None:
        while True:
            assert self._next is not None
            first = self._packets.get(self._next)
            if first is None:
                return
            ts = first[0].timestamp
            run = [first[0]]
            seq = self._next
            while not run[-1].marker:
                nxt = self._packets.get((seq + 1) & 0xFFFF)
                if nxt is None:
                    return  # incomplete: wait for the rest
                if nxt[0].timestamp != ts:
                    break  # marker lost but the next frame began: this one is complete
                seq = (seq + 1) & 0xFFFF
                run.append(nxt[0])
            for i in range(len(run)):
                del self._packets[(self._next + i) & 0xFFFF]
            self._next = (self._next + len(run)) & 0xFFFF
            self._gap_since = 0.0
            self._out(run, first[1])

    def _stalled(self, now: float) -> bool:
        """A packet is missing and has been for too long (a frame still arriving is not)."""
        assert self._next is not None
        if self._gap_since == 0.0:
            self._gap_since = now
        if len(self._packets) < 32 and now - self._gap_since < self._max_wait:
            return False
        newest = max((s - self._next) & 0xFFFF for s in self._packets)
        hole = len(self._packets) < newest + 1
        return hole and (newest >= self._max_gap or now - self._gap_since >= self._max_wait)

    def _skip_gap(self) -> None:
        """Give up the missing packets: resume at the first buffered packet of a new frame."""
        assert self._next is not None
        order = sorted(self._packets, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]
        start = order[0]
        # packets right after the gap may be the tail of a frame whose head is lost: skip them
        head_ts = self._packets[start][0].timestamp
        for s in order:
            if self._packets[s][0].timestamp != head_ts:
                start = s
                break
        else:
            start = order[0]
        skipped = (start - self._next) & 0xFFFF
        for s in order:
            if (s - self._next) & 0xFFFF < skipped:
                del self._packets[s]
        self.lost += skipped
        self._next = start
        self._gap_since = 0.0
        self._discontinuity = True
        log.debug("gave up %d packets before seq %d", skipped, start)

    def _out(self, packets: list[Any], arrival: float) -> None:
        first = packets[0]
        data = b"".join(p._data for p in packets)  # depayloaded by aiortc
        frame = EncodedFrame(data, first.timestamp, first.payload_type, first.ssrc, arrival,
                             self._discontinuity)
        self._discontinuity = False
        self.frames += 1
        try:
            self._deliver(frame)
        except Exception:  # a broken consumer must not kill aiortc's receive loop
            log.exception("encoded frame consumer failed")


SenderReportCallback = Callable[[int, int, int], None]  # ssrc, ntp timestamp (64-bit), rtp ts


class ReceiverTap:
    """A receiver whose frames go to the gateway encoded; also its RTCP in and PLI out."""

    def __init__(self, receiver: RTCRtpReceiver, assembler: FrameAssembler) -> None:
        self.receiver = receiver
        self.assembler = assembler
        self.plis_sent = 0

    def request_keyframe(self) -> bool:
        """Send a PLI to the remote sender; False before its first packet (SSRC unknown)."""
        ssrc = self.assembler.ssrc
        if not ssrc:
            return False
        self.plis_sent += 1
        send: Callable[[int], Awaitable[None]] = self.receiver._send_rtcp_pli
        asyncio.ensure_future(send(ssrc))
        return True


def _check(obj: object, attr: str, what: str) -> Any:
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise SeamError(f"aiortc changed: {type(obj).__name__} has no {attr} ({what}); "
                        "update gateway/webrtc/seam.py") from None


def tap_receiver(receiver: RTCRtpReceiver, kind: str, on_frame: FrameCallback,
                 on_sender_report: SenderReportCallback | None = None) -> ReceiverTap:
    """Take ``receiver``'s encoded frames instead of letting aiortc decode them.

    Must be called after ``setRemoteDescription`` and before media flows (aiortc starts the
    receiver from a task scheduled there, so right after the ``await`` is in time).
    """
    old = _check(receiver, _JITTER_ATTR, "the jitter buffer that feeds the decoder")
    if not callable(getattr(old, "add", None)):
        raise SeamError("aiortc changed: the receiver's jitter buffer has no add()")
    if _check(receiver, _DECODER_THREAD_ATTR, "the decoder thread") is not None:
        raise SeamError("receiver already started: tap it right after setRemoteDescription")
    if not callable(getattr(receiver, "_send_rtcp_pli", None)):
        raise SeamError("aiortc changed: RTCRtpReceiver._send_rtcp_pli is gone")
    assembler = FrameAssembler(kind == "video", on_frame)
    setattr(receiver, _JITTER_ATTR, assembler)
    if on_sender_report is not None:
        original = _check(receiver, "_handle_rtcp_packet", "RTCP input")

        async def handle_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                try:
                    on_sender_report(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)
                except Exception:
                    log.exception("sender report consumer failed")
            await original(packet)

        receiver._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
    return ReceiverTap(receiver, assembler)


def watch_sender(sender: RTCRtpSender, on_keyframe_request: Callable[[], None]) -> None:
    """Call ``on_keyframe_request`` when the viewer sends PLI or FIR for this sender."""
    original = _check(sender, "_handle_rtcp_packet", "RTCP input")

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            try:
                on_keyframe_request()
            except Exception:
                log.exception("keyframe request consumer failed")
        await original(packet)

    sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


# -- shared packetization ------------------------------------------------------------------------

_ENCODER_ATTR = "_RTCRtpSender__encoder"


class SharedPacketizer:
    """Packetizes each ``av.Packet`` once for every sender it is shared with.

    Stands in for aiortc's per-sender encoder object, of which a pass-through sender only ever
    calls ``pack()``; keyed by packet identity (the shared output hands the very same packet
    object to every viewer), so per-viewer packets (a joiner's GOP) simply miss the cache.
    """

    def __init__(self, codec: str, size: int = 32) -> None:
        factories: dict[str, Callable[[], Any]] = {
            "h264": H264Encoder, "vp8": Vp8Encoder, "opus": OpusEncoder}
        if codec not in factories:
            raise ValueError(f"no packetizer for {codec}")
        self.codec = codec
        self._packer = factories[codec]()
        self._size = size
        self._cache: dict[int, tuple[av.Packet, list[bytes], int]] = {}
        self.hits = 0
        self.misses = 0

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        hit = self._cache.get(id(packet))
        if hit is not None and hit[0] is packet:
            self.hits += 1
            return hit[1], hit[2]
        self.misses += 1
        payloads, timestamp = self._packer.pack(packet)
        if len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]  # oldest first (insertion order)
        self._cache[id(packet)] = (packet, payloads, timestamp)
        return payloads, timestamp

    def encode(self, frame: object, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise SeamError("a pass-through sender was given a raw frame to encode")


def share_packetizer(sender: RTCRtpSender, packetizer: SharedPacketizer) -> None:
    """Make ``sender`` use ``packetizer`` (call before the connection starts sending)."""
    current = _check(sender, _ENCODER_ATTR, "the sender's encoder/packetizer")
    if current is not None:
        raise SeamError("sender already has an encoder: share the packetizer before it starts")
    setattr(sender, _ENCODER_ATTR, packetizer)


# -- ICE host addresses ----------------------------------------------------------------------

_ICE_HOSTS: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "gateway_ice_hosts", default=None)
_original_host_addresses: Callable[[bool, bool], list[str]] | None = None


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    hosts = _ICE_HOSTS.get()
    if hosts is None:
        assert _original_host_addresses is not None
        return _original_host_addresses(use_ipv4, use_ipv6)
    return [h for h in hosts if (":" in h and use_ipv6) or (":" not in h and use_ipv4)]


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host == "::1"


def _loopback_only_checks(original: Callable[..., None]) -> Callable[..., None]:
    """A connection whose own candidates are all loopback answers checks from loopback only,
    so a peer that also sends from a LAN address (Chromium does) is never answered there."""

    def request_received(self: Any, message: Any, addr: tuple[str, int], *args: Any) -> None:
        local = self._local_candidates
        if local and all(_is_loopback(c.host) for c in local) and not _is_loopback(addr[0]):
            return
        original(self, message, addr, *args)

    request_received.__gateway_seam__ = True  # type: ignore[attr-defined]
    return request_received


def _install_ice_hook() -> None:
    global _original_host_addresses
    current = getattr(aioice.ice, "get_host_addresses", None)
    if current is None:
        raise SeamError("aioice changed: aioice.ice.get_host_addresses is gone; "
                        "update gateway/webrtc/seam.py")
    if current is not _host_addresses:
        _original_host_addresses = current
        aioice.ice.get_host_addresses = _host_addresses
    conn = aioice.ice.Connection
    received = getattr(conn, "request_received", None)
    if received is None or not hasattr(conn, "__init__"):
        raise SeamError("aioice changed: Connection.request_received is gone; "
                        "update gateway/webrtc/seam.py")
    if not getattr(received, "__gateway_seam__", False):
        conn.request_received = _loopback_only_checks(received)


@contextlib.contextmanager
def ice_hosts(hosts: Sequence[str] | None) -> Iterator[None]:
    """Gather host candidates on exactly ``hosts`` inside this block (None: aioice's default).

    Wrap ``setLocalDescription``; tasks started inside (aiortc's gathering) inherit the context.
    """
    _install_ice_hook()
    token = _ICE_HOSTS.set(tuple(hosts) if hosts is not None else None)
    try:
        yield
    finally:
        _ICE_HOSTS.reset(token)
