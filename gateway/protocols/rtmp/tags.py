"""FLV tag bodies of frames: the payload shared by RTMP messages and FLV tags.

RTMP audio/video messages carry exactly FLV tag bodies, so a stream's RTMP and FLV outputs
share one body per frame: a one-slot memo (``Bodies``) works because every sink of a stream
sees the same ``Frame`` object in turn. The memo belongs to the outputs of one published
stream (``SharedBodies``), never to this module, so two gateways in a process share nothing.
"""

from __future__ import annotations

from dataclasses import replace

from ...hub.stream import Stream
from ...media import Frame, Track
from ...wire import flv

FLV_CODECS = frozenset({"h264", "aac"})


def carries(track: Track) -> bool:
    return track.codec in FLV_CODECS


def frame_body(frame: Frame) -> bytes:
    """The FLV tag body of ``frame`` (built anew; outputs go through their ``Bodies``)."""
    if frame.track.kind == "video":
        cts = frame.pts_ms() - frame.dts_ms()
        return flv.video_body_avc(frame.keyframe, 1, cts, frame.data)
    t = frame.track
    return flv.audio_body_aac(1, frame.data, t.sample_rate, t.channels)


class Bodies:
    """The body of the last frame asked for: the next output of the same frame takes it as is
    instead of copying the frame's data into a new body (a keyframe: tens of kilobytes)."""

    __slots__ = ("_body", "_frame")

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._body = b""

    def body(self, frame: Frame) -> bytes:
        if self._frame is frame:
            return self._body
        body = frame_body(frame)
        self._frame, self._body = frame, body
        return body


def _published(stream: Stream) -> Stream:
    """The published stream behind a variant: its pass-through frames are the very same
    objects, so the source's outputs and its variants' can share one memo."""
    while isinstance(source := getattr(stream, "source", None), Stream):
        stream = source
    return stream


def _memo_in(stream: Stream) -> Bodies | None:
    """The memo an output of ``stream``, or of one of its variants, already has."""
    for sink in list(stream.sinks.values()):
        memo = getattr(sink, "_bodies", None)
        if isinstance(memo, Bodies):
            return memo
        if isinstance(sink, Stream) and (memo := _memo_in(sink)) is not None:
            return memo
    return None


class SharedBodies:
    """For an output whose frames are FLV tag bodies (RTMP, FLV): ``body_of`` builds each body
    once for all such outputs of a published stream and its variants, through the memo the
    first of them made (looked up once per output, when it first needs a body)."""

    stream: Stream
    _bodies: Bodies | None = None

    def body_of(self, frame: Frame) -> bytes:
        memo = self._bodies
        if memo is None:
            memo = self._bodies = _memo_in(_published(self.stream)) or Bodies()
        return memo.body(frame)


def config_body(track: Track) -> bytes:
    """Sequence header body of a track (AVC decoder configuration / AudioSpecificConfig)."""
    if not track.config:
        return b""
    if track.kind == "video":
        return flv.video_seq_header_avc(track.config)
    return flv.audio_seq_header_aac(track.config)


def metadata(stream: Stream) -> dict[str, object]:
    """Complete onMetaData for egress: size, frame rate, sample rate, channels and data rates
    (measured when the publisher did not say), whatever the publisher sent."""
    tracks = {}
    for kind, t in stream.tracks.items():
        if carries(t):
            tracks[kind] = t if t.bitrate else replace(t, bitrate=stream.bitrate(kind))
    return flv.on_metadata(tracks, stream.info.metadata)
