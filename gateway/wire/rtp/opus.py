"""Opus over RTP (RFC 7587): one payload is one Opus packet, sans I/O; the SDP facts that
never vary (the clock is always 48 kHz and the rtpmap always says two channels)."""

from __future__ import annotations

from .payload import RtpPayload, RtpPayloadError

__all__ = [
    "CLOCK_RATE",
    "ENCODING_NAME",
    "FMTP",
    "RTPMAP",
    "depacketize",
    "packet_samples",
    "packetize",
]

CLOCK_RATE = 48000
ENCODING_NAME = "opus"
RTPMAP = "opus/48000/2"
FMTP = "minptime=10;useinbandfec=1"

# frame duration in 48 kHz samples for each TOC configuration (RFC 6716 section 3.1)
_FRAME_SAMPLES = (
    (480, 960, 1920, 2880) * 3  # SILK NB, MB, WB: 10, 20, 40, 60 ms
    + (480, 960) * 2  # hybrid SWB, FB: 10, 20 ms
    + (120, 240, 480, 960) * 4  # CELT NB, WB, SWB, FB: 2.5, 5, 10, 20 ms
)


def depacketize(payload: bytes) -> bytes:
    """The Opus packet of one payload (checked for a TOC byte and, for code 3, a frame count)."""
    packet = bytes(payload)
    packet_samples(packet)
    return packet


def packetize(packet: bytes, timestamp: int, marker: bool = False) -> RtpPayload:
    """The payload of one Opus packet (the marker is for the first packet after DTX)."""
    return RtpPayload(bytes(packet), marker, timestamp)


def packet_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples (how far the RTP timestamp moves)."""
    if not packet:
        raise RtpPayloadError("empty Opus packet")
    toc = packet[0]
    per_frame = _FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            raise RtpPayloadError("Opus code 3 packet without a frame count")
        count = packet[1] & 0x3F
        if count == 0:
            raise RtpPayloadError("Opus code 3 packet with zero frames")
    samples = per_frame * count
    if samples > 5760:
        raise RtpPayloadError(f"Opus packet of {samples} samples exceeds 120 ms")
    return samples
