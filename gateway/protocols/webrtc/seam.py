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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import aioice.ice
import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import H264Encoder, OpusEncoder, Vp8Encoder
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, RtcpSrPacket

from ...wire.rtp.assembler import EncodedFrame, FrameAssembler, FrameCallback

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
                        "update gateway/protocols/webrtc/seam.py") from None


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
                        "update gateway/protocols/webrtc/seam.py")
    if current is not _host_addresses:
        _original_host_addresses = current
        aioice.ice.get_host_addresses = _host_addresses
    conn = aioice.ice.Connection
    received = getattr(conn, "request_received", None)
    if received is None or not hasattr(conn, "__init__"):
        raise SeamError("aioice changed: Connection.request_received is gone; "
                        "update gateway/protocols/webrtc/seam.py")
    if not getattr(received, "__gateway_seam__", False):
        setattr(conn, "request_received", _loopback_only_checks(received))  # noqa: B010 (a patch)


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
