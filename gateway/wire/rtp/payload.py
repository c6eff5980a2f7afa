"""What every RTP payload format (``h264``, ``aac``, ``opus``) shares: its one error type and
the packetizers' output, a payload with its marker and timestamp (the RTP header is the
caller's, made per viewer where it must differ)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["RtpPayload", "RtpPayloadError"]


class RtpPayloadError(ValueError):
    """A malformed or unsupported RTP payload (the only exception the depacketizers raise)."""


class RtpPayload(NamedTuple):
    """One packet's payload as a packetizer makes it; the RTP header is the caller's."""

    payload: bytes
    marker: bool
    timestamp: int
