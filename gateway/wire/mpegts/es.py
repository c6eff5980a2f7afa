"""Elementary stream decoders for the demuxer: PES payloads in, ``Frame``\\ s out, per codec,
so that TS packet handling never looks inside the media.
"""

from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Final

from ...codecs import aac, h264, mpeg1video, mpegaudio
from ...media import Frame, Track
from .packets import (
    CLOCK,
    STREAM_TYPE_AAC,
    STREAM_TYPE_H264,
    STREAM_TYPE_MPEG1_AUDIO,
    STREAM_TYPE_MPEG1_VIDEO,
    STREAM_TYPE_MPEG2_AUDIO,
    STREAM_TYPE_MPEG2_VIDEO,
    TIME_BASE,
    TsError,
)

__all__ = ["ES_TYPES", "SUPPORTED", "ElementaryStream"]

_DROP_NALS: Final = frozenset({h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD, h264.NAL_FILLER})


class ElementaryStream:
    """An elementary stream decoder: PES payloads in, frames out.

    ``feed`` raises a ``ValueError`` for a damaged PES; ``unsupported`` names what the stream
    turned out to carry when that cannot be taken (MPEG-2 video, MP3).
    """

    kind: ClassVar[str] = "video"

    def __init__(self) -> None:
        self.track: Track | None = None
        self.unsupported = ""  # what the stream turned out to carry, when it cannot be taken

    def feed(self, data: bytes, pts: int | None, dts: int | None) -> list[Frame]:
        raise NotImplementedError


class _MpegVideoEs(ElementaryStream):
    def __init__(self) -> None:
        super().__init__()
        self._seq: mpeg1video.MpegVideoSequence | None = None
        self._last: tuple[int, int] | None = None

    def feed(self, data: bytes, pts: int | None, dts: int | None) -> list[Frame]:
        at = data.find(mpeg1video.SEQUENCE_HEADER_CODE)
        if at >= 0:
            seq = mpeg1video.parse_mpeg_video_sequence(data, at)
            if mpeg1video.is_mpeg2_sequence(data, at):
                self.unsupported = "MPEG-2 video"  # which jsmpeg cannot decode
                return []
            if seq != self._seq:
                self._seq = seq
                self.track = self._track(seq, self.track is not None and self.track.has_b_frames)
        if self.track is None or self._seq is None:
            return []
        coding_type = mpeg1video.find_picture_coding_type(data)
        if coding_type == mpeg1video.PICTURE_B and not self.track.has_b_frames:
            # PTS != DTS does not tell (FFmpeg delays even I/P-only streams): the first B
            # picture does, and changes the track once.
            self.track = self._track(self._seq, True)
        times = _times(pts, dts, self._last)
        if times is None:
            return []
        self._last = times
        keyframe = coding_type == mpeg1video.PICTURE_I
        return [Frame(self.track, data, times[0], times[1], TIME_BASE, keyframe)]

    @staticmethod
    def _track(seq: mpeg1video.MpegVideoSequence, b_frames: bool) -> Track:
        return Track(
            kind="video",
            codec="mpeg1video",
            width=seq.width,
            height=seq.height,
            frame_rate=seq.frame_rate,
            bitrate=seq.bitrate,
            has_b_frames=b_frames,
        )


class _H264Es(ElementaryStream):
    def __init__(self) -> None:
        super().__init__()
        self._sps: list[bytes] = []
        self._pps: list[bytes] = []
        self._last: tuple[int, int] | None = None

    def feed(self, data: bytes, pts: int | None, dts: int | None) -> list[Frame]:
        sps, pps = h264.extract_parameter_sets(data)
        if (sps and sps != self._sps) or (pps and pps != self._pps):
            self._sps = sps or self._sps
            self._pps = pps or self._pps
            if self._sps and self._pps:
                info = h264.parse_sps(self._sps[0])
                self.track = Track(
                    kind="video",
                    codec="h264",
                    config=h264.build_avc_config(self._sps, self._pps),
                    width=info.width,
                    height=info.height,
                    frame_rate=info.frame_rate or 0.0,
                    profile=info.profile,
                    level=info.level,
                    has_b_frames=info.may_have_b_frames,
                )
        if self.track is None:
            return []
        avcc = h264.annexb_to_avcc(data, 4, _DROP_NALS)
        if not avcc:
            return []
        times = _times(pts, dts, self._last)
        if times is None:
            return []
        self._last = times
        keyframe = h264.is_keyframe(avcc)
        return [Frame(self.track, avcc, times[0], times[1], TIME_BASE, keyframe)]


def _times(
    pts: int | None, dts: int | None, last: tuple[int, int] | None
) -> tuple[int, int] | None:
    """(pts, dts) of a video PES; a PES without PTS reuses the previous ones (rare, lossy)."""
    if pts is None:
        return last
    return pts, pts if dts is None else dts


class _AudioEs(ElementaryStream):
    """Audio framed in-band (ADTS, MPEG audio): frames may span PES packets or share one."""

    kind: ClassVar[str] = "audio"
    _MAX_FRAME: ClassVar[int] = 8192

    def __init__(self) -> None:
        super().__init__()
        self._pending = b""
        self._next: Fraction | None = None  # extrapolated pts of the next frame, in 90 kHz

    def _frame_at(self, data: bytes, pos: int) -> tuple[int, int, int] | None:
        """(length, samples, sample_rate) of the frame at ``pos``; None to resync; TsError if
        the header is cut short."""
        raise NotImplementedError

    def _emit(self, data: bytes, pos: int, length: int, pts: int) -> Frame | None:
        raise NotImplementedError

    def feed(self, data: bytes, pts: int | None, dts: int | None) -> list[Frame]:
        carried = len(self._pending)
        buf = self._pending + data if carried else data
        frames: list[Frame] = []
        pos = 0
        size = len(buf)
        pes_pts_used = pts is None
        while size - pos >= 4:
            if buf[pos] != 0xFF:
                nxt = buf.find(b"\xff", pos + 1)
                pos = nxt if nxt >= 0 else size
                continue
            try:
                info = self._frame_at(buf, pos)
            except TsError:
                break  # header cut short: wait for more bytes
            if info is None:
                pos += 1
                continue
            length, samples, rate = info
            if pos + length > size:
                break
            if not pes_pts_used and pos >= carried:
                self._next = Fraction(pts or 0)
                pes_pts_used = True
            if self._next is None:
                pos += length  # no timestamp yet: cannot place this frame
                continue
            frame = self._emit(buf, pos, length, round(self._next))
            if frame is not None:
                frames.append(frame)
            self._next += Fraction(samples * CLOCK, rate)
            pos += length
        rest = buf[pos:]
        self._pending = rest if len(rest) < self._MAX_FRAME else b""
        if not pes_pts_used and pos >= carried:
            self._next = Fraction(pts or 0)  # the frame starting in this PES is still incomplete
        return frames


class _AdtsEs(_AudioEs):
    def __init__(self) -> None:
        super().__init__()
        self._header: tuple[int, int, int] | None = None

    def _frame_at(self, data: bytes, pos: int) -> tuple[int, int, int] | None:
        try:
            header = aac.parse_adts_header(data[pos : pos + aac.ADTS_HEADER_SIZE])
        except aac.AacError as e:
            if len(data) - pos < aac.ADTS_HEADER_SIZE:
                raise TsError("ADTS header truncated") from e
            return None
        return header.frame_length, 1024 * header.raw_data_blocks, header.sample_rate

    def _emit(self, data: bytes, pos: int, length: int, pts: int) -> Frame | None:
        header = aac.parse_adts_header(data[pos : pos + aac.ADTS_HEADER_SIZE])
        key = (header.object_type, header.sample_rate, header.channel_config)
        if key != self._header:
            try:
                asc = aac.asc_from_adts(header)
            except aac.AacError:
                return None
            self._header = key
            self.track = Track(
                kind="audio",
                codec="aac",
                config=asc,
                sample_rate=header.sample_rate,
                channels=header.channels,
            )
        assert self.track is not None
        payload = data[pos + header.header_length : pos + length]
        return Frame(self.track, payload, pts, pts, TIME_BASE, True)


class _MpegAudioEs(_AudioEs):
    def __init__(self) -> None:
        super().__init__()
        self._key: tuple[int, int, int] | None = None

    def _frame_at(self, data: bytes, pos: int) -> tuple[int, int, int] | None:
        try:
            header = mpegaudio.parse_mpeg_audio_header(data, pos)
        except mpegaudio.MpegAudioError as e:
            if len(data) - pos < mpegaudio.HEADER_SIZE:
                raise TsError("MPEG audio header truncated") from e
            return None
        return header.frame_length, header.samples, header.sample_rate

    def _emit(self, data: bytes, pos: int, length: int, pts: int) -> Frame | None:
        header = mpegaudio.parse_mpeg_audio_header(data, pos)
        if header.layer != 2:
            self.unsupported = f"MPEG audio layer {'I' * header.layer}" + (
                " (MP3)" if header.layer == 3 else ""
            )
            return None
        key = (header.sample_rate, header.channels, header.bitrate)
        if key != self._key:
            self._key = key
            self.track = Track(
                kind="audio",
                codec="mp2",
                sample_rate=header.sample_rate,
                channels=header.channels,
                bitrate=header.bitrate,
            )
        assert self.track is not None
        return Frame(self.track, data[pos : pos + length], pts, pts, TIME_BASE, True)


#: PMT stream type -> the decoder of the streams the demuxer takes.
ES_TYPES: Final[dict[int, type[ElementaryStream]]] = {
    STREAM_TYPE_MPEG1_VIDEO: _MpegVideoEs,
    STREAM_TYPE_MPEG2_VIDEO: _MpegVideoEs,
    STREAM_TYPE_H264: _H264Es,
    STREAM_TYPE_MPEG1_AUDIO: _MpegAudioEs,
    STREAM_TYPE_MPEG2_AUDIO: _MpegAudioEs,
    STREAM_TYPE_AAC: _AdtsEs,
}
#: What the demuxer takes, for error messages.
SUPPORTED: Final = "MPEG-1 video, H.264, MP2 and AAC (ADTS)"
