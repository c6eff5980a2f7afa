"""The one internal media model: every ingest produces these, every egress consumes them.

The hub never looks at which protocol a frame came from; it only sees ``Track`` and ``Frame``.

Bitstream conventions (so that conversions happen once, at the edges, in shared variants):

* ``h264``: AVCC, i.e. NAL units each prefixed by a 4-byte big-endian length; the codec
  configuration is the AVCDecoderConfigurationRecord (SPS/PPS).
* ``aac``: raw AAC frames (no ADTS); the configuration is the AudioSpecificConfig.
* ``opus``, ``vp8``, ``mpeg1video``, ``mp2``: the codec's own packets; configuration ``b""``
  (MPEG-1 carries its sequence header in keyframes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

Kind = Literal["video", "audio"]

VIDEO_CODECS = frozenset({"h264", "vp8", "mpeg1video"})
AUDIO_CODECS = frozenset({"aac", "opus", "mp2"})

MS = Fraction(1, 1000)


def kind_of(codec: str) -> Kind:
    """Kind of a codec name used in the matrix and in ``Track.codec``."""
    if codec in VIDEO_CODECS:
        return "video"
    if codec in AUDIO_CODECS:
        return "audio"
    raise ValueError(f"unknown codec {codec!r}")


@dataclass(slots=True)
class Track:
    """What a track carries; parameters are what the matrix constraints look at.

    A new ``Track`` object (not a mutation) is made when the publisher changes its codec
    configuration, so consumers can compare by identity.
    """

    kind: Kind
    codec: str
    config: bytes = b""
    # video
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    profile: str = ""  # e.g. "baseline", "main", "high"
    level: float = 0.0
    has_b_frames: bool = False
    # audio
    sample_rate: int = 0
    channels: int = 0
    # both
    bitrate: int = 0  # bit/s, 0 = unknown

    def params(self) -> dict[str, object]:
        """Parameters as the planner's constraint language sees them."""
        return {
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "frame_rate": self.frame_rate,
            "profile": self.profile,
            "level": self.level,
            "b_frames": self.has_b_frames,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "bitrate": self.bitrate,
        }


@dataclass(slots=True)
class Frame:
    """One encoded access unit (video) or packet (audio).

    ``pts``/``dts`` are integers in ``time_base``; ``track`` is the track description in force
    when the frame was produced (its ``config`` is the codec configuration to decode it).
    """

    track: Track
    data: bytes
    pts: int
    dts: int
    time_base: Fraction = MS
    keyframe: bool = False

    @property
    def kind(self) -> Kind:
        return self.track.kind

    @property
    def codec(self) -> str:
        return self.track.codec

    def dts_ms(self) -> int:
        return int(self.dts * self.time_base * 1000)

    def pts_ms(self) -> int:
        return int(self.pts * self.time_base * 1000)


@dataclass(slots=True)
class StreamInfo:
    """Publisher-side description of a live stream: its tracks and free-form metadata."""

    protocol: str  # matrix protocol name the publisher used: rtmp, miniprogram, webrtc, h5, udp, cdn
    tracks: dict[str, Track] = field(default_factory=dict)  # keyed by kind
    metadata: dict[str, object] = field(default_factory=dict)  # e.g. RTMP onMetaData from the publisher
