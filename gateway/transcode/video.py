"""Video transcode step: decode, scale if needed, re-encode without B-frames, keep source timing.

Timing: the encoder is fed a frame counter at the *nominal* rate (``time_base = 1/rate``) and
every output packet gets back the pts of the source frame it encodes (a FIFO keyed by that
counter). Why: MPEG-1 can only signal eight standard rates, so the encoder needs one of them in
its header, yet we must neither duplicate nor drop frames (a 15 fps source stays 15 pictures a
second, each at its own source instant). Since no output has B-frames, ``dts == pts``. The
encoders' rate control thinks in nominal frames, so bitrate and GOP from the params are scaled
by ``source rate / nominal rate`` when the source rate is known to differ: the stream then
really has the requested bits per second and keyframe interval in seconds.

Efficiency: one decoder and one encoder per step, reused; no numpy; ``frame.reformat`` through
one cached ``VideoReformatter`` and only when size or pixel format differ; thread counts are
explicit (default 1 each: a variant already runs every step in its own thread).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import av
from av.codec.context import Flags
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import VideoReformatter

from ..codecs import h264
from ..media import Frame, Track
from .step import FFMPEG_ERRORS, CodecStep, Counters

__all__ = [
    "DECODERS",
    "ENCODERS",
    "MPEG1_RATES",
    "Threading",
    "VideoTranscoder",
    "nominal_rate",
]

log = logging.getLogger(__name__)

#: Internal codec name -> FFmpeg decoder / encoder used for it.
DECODERS: Final[dict[str, str]] = {"h264": "h264", "vp8": "vp8", "mpeg1video": "mpeg1video"}
ENCODERS: Final[dict[str, str]] = {"h264": "libx264", "vp8": "libvpx", "mpeg1video": "mpeg1video"}
#: The frame rates an MPEG-1 sequence header can code, as exact fractions.
MPEG1_RATES: Final[tuple[Fraction, ...]] = (
    Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
    Fraction(50), Fraction(60000, 1001), Fraction(60),
)
_SEQUENCE_HEADER: Final = b"\x00\x00\x01\xb3"
_DROP_NALS: Final = frozenset({h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD})
_X264_PROFILES: Final[dict[str, str]] = {
    "baseline": "baseline", "constrained-baseline": "baseline", "main": "main",
    "high": "high", "constrained-high": "high", "progressive-high": "high",
}


@dataclass(frozen=True, slots=True)
class Threading:
    """Codec threads of one step. ``0`` lets FFmpeg pick (one per core).

    ``"SLICE"`` adds no latency; ``"FRAME"`` (decoders) scales better but delays output by
    ``threads - 1`` frames; ``"AUTO"`` lets FFmpeg choose.
    """

    decoder_threads: int = 1
    encoder_threads: int = 1
    thread_type: str = "SLICE"


def nominal_rate(fps: float) -> Fraction:
    """Exact rate for a float one: 29.97 means 30000/1001, not 2997/100."""
    if fps <= 0:
        raise ValueError(f"invalid frame rate {fps}")
    for base in (24, 30, 60, 48, 120):
        ntsc = Fraction(base * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.005:
            return ntsc
    return Fraction(fps).limit_denominator(1001)


def _even(value: int) -> int:
    return max(2, value - value % 2)


class VideoTranscoder(CodecStep):
    """One video track: ``h264``/``vp8``/``mpeg1video`` in, same set out, never B-frames.

    ``track`` is the output ``Track`` once the encoder is open (after the first decoded
    picture; the same object until ``flush()`` ends the segment). ``errors`` counts frames the
    codecs rejected (logged and skipped), ``skipped`` input frames before the first keyframe.
    """

    log = log  # the module's logger, for CodecStep's rate-limited errors

    def __init__(self, source: Track, to_codec: str, *, width: int = 0, height: int = 0,
                 frame_rate: float = 0.0, bitrate: int = 0, gop: int = 0, profile: str = "",
                 preset: str = "", threading: Threading | None = None,
                 options: Mapping[str, str] | None = None,
                 counters: Counters | None = None) -> None:
        self.counters = Counters() if counters is None else counters
        if source.codec not in DECODERS:
            raise ValueError(f"cannot decode video codec {source.codec!r}")
        if to_codec not in ENCODERS:
            raise ValueError(f"cannot encode video codec {to_codec!r}")
        self.source = source
        self.to_codec = to_codec
        self.width = _even(width) if width else 0
        self.height = _even(height) if height else 0
        self.frame_rate = frame_rate or source.frame_rate or 25.0
        rate = nominal_rate(self.frame_rate)
        if to_codec == "mpeg1video" and rate not in MPEG1_RATES:
            rate = min(MPEG1_RATES, key=lambda r: (abs(r - rate), -r))
            self.frame_rate = round(float(rate), 3)
        self.rate = rate
        self.bitrate = bitrate or 1_500_000
        self.gop = gop or round(float(rate))
        self.profile = profile
        self.preset = preset or "veryfast"
        self.threading = threading or Threading()
        self._options = dict(options or {})
        self.errors = 0
        self.skipped = 0
        self.track: Track | None = None
        self._dec: VideoCodecContext | None = None
        self._dec_track: Track | None = None
        self._dec_tb: Fraction | None = None
        self._bad_track: Track | None = None
        self._annexb_input = False  # source h264 without avcC: parameter sets are in-band
        self._need_key = True
        self._enc: VideoCodecContext | None = None
        self._enc_tb = 1 / rate
        self._scaler = VideoReformatter()
        self._counter = 0
        self._pending: deque[tuple[int, int]] = deque()  # (encoder pts, source pts)
        self._out_tb: Fraction | None = None
        self._last_pts: int | None = None
        self._need_out_key = True

    # -- Step -------------------------------------------------------------------------------

    def process(self, frame: Frame) -> list[Frame]:
        """Decode ``frame``; return the encoded frames that became ready."""
        return self._process(frame, encode=True)

    def catch_up(self, frame: Frame) -> None:
        """Decode ``frame`` and drop the pictures: what a new variant's decoder needs of the
        GOP before the picture its viewers start at (``step.catch_up``)."""
        self._process(frame, encode=False)

    def _process(self, frame: Frame, encode: bool) -> list[Frame]:
        out: list[Frame] = []
        track = frame.track
        if self._dec is not None and self._config_changed(track):
            out += self._encode_all(self._decode_packet(None))  # the old configuration's tail
            self._dec = None
            self._need_key = True
        if self._need_key and not self._is_key(frame):
            self.skipped += 1
            return out
        if self._dec is None:
            if track is self._bad_track:
                self.skipped += 1
                return out
            try:
                if track.codec not in DECODERS:
                    raise ValueError(f"cannot decode video codec {track.codec!r}")
                self._open_decoder(track, frame.time_base)
            except (*FFMPEG_ERRORS, h264.H264Error) as e:
                self._bad_track = track  # don't retry (and log) on every frame of this track
                self._error("cannot open the %s decoder: %s", track.codec, e)
                return out
        self._dec_track = track
        self._need_key = False
        if self._out_tb is None:
            self._out_tb = frame.time_base
        try:
            data = frame.data
            if self._annexb_input:
                data = h264.avcc_to_annexb(data, nal_length_size=4)
            packet = av.Packet(data)
        except h264.H264Error as e:
            self._error("malformed h264 access unit: %s", e)
            return out
        tb = self._dec_tb
        assert tb is not None
        pts, dts = frame.pts, frame.dts
        if frame.time_base != tb:
            pts = round(pts * frame.time_base / tb)
            dts = round(dts * frame.time_base / tb)
        packet.pts, packet.dts = pts, dts
        packet.time_base = tb
        if frame.keyframe:
            packet.is_keyframe = True
        pictures = self._decode_packet(packet)
        if encode:
            out += self._encode_all(pictures)
        return out

    def flush(self) -> list[Frame]:
        """End of stream: drain decoder and encoder; a later ``process`` starts a new segment."""
        out: list[Frame] = []
        if self._dec is not None:
            out += self._encode_all(self._decode_packet(None))
        if self._enc is not None:
            out += self._encode(None)
        self._reset()
        return out

    def close(self) -> None:
        """Drop the codec contexts (PyAV frees them when unreferenced)."""
        self._reset()

    # -- decoding ---------------------------------------------------------------------------

    def _config_changed(self, track: Track) -> bool:
        """Whether ``track`` needs a new decoder (a new Track object alone does not)."""
        old = self._dec_track
        return old is not None and track is not old and (
            track.codec != old.codec or track.config != old.config)

    def _is_key(self, frame: Frame) -> bool:
        """Keyframe flag, or the bitstream's word for it when an ingest did not set the flag."""
        if frame.keyframe:
            return True
        data = frame.data
        codec = frame.track.codec
        if codec == "vp8":
            return bool(data) and not data[0] & 1
        if codec == "mpeg1video":
            return _SEQUENCE_HEADER in data[:64]
        if codec == "h264":
            try:
                size = h264.nal_length_size(frame.track.config)
                return h264.NAL_IDR in h264.avcc_nal_types(data, size)
            except h264.H264Error:
                return False
        return False

    def _open_decoder(self, track: Track, time_base: Fraction) -> None:
        ctx = av.CodecContext.create(DECODERS[track.codec], "r")
        assert isinstance(ctx, VideoCodecContext)
        self._annexb_input = False
        if track.codec == "h264":
            if track.config:
                ctx.extradata = track.config  # FFmpeg then reads AVCC packets as they are
            else:
                self._annexb_input = True
        ctx.thread_count = self.threading.decoder_threads
        ctx.thread_type = self.threading.thread_type
        ctx.options = {"pkt_timebase": f"{time_base.numerator}/{time_base.denominator}"}
        ctx.open()
        self.counters.add(decoders_opened=1)
        self._dec, self._dec_track, self._dec_tb = ctx, track, time_base

    # -- encoding ---------------------------------------------------------------------------

    def _open_encoder(self, first: VideoFrame) -> None:
        width = self.width or _even(first.width)
        height = self.height or _even(first.height)
        scale = Fraction(1)
        if self.source.frame_rate > 0:
            ratio = self.rate / Fraction(self.source.frame_rate).limit_denominator(1001)
            if abs(ratio - 1) > Fraction(1, 100):
                scale = ratio  # encoder counts nominal frames; make bits and GOP real-time
        ctx = av.CodecContext.create(ENCODERS[self.to_codec], "w")
        assert isinstance(ctx, VideoCodecContext)
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = self._enc_tb
        ctx.framerate = self.rate
        ctx.bit_rate = round(self.bitrate * scale)
        ctx.gop_size = max(1, round(self.gop * scale))
        ctx.max_b_frames = 0
        ctx.thread_count = self.threading.encoder_threads
        ctx.thread_type = self.threading.thread_type
        options: dict[str, str] = {}
        if self.to_codec == "h264":
            ctx.flags |= Flags.global_header  # SPS/PPS in extradata -> the avcC config
            options = {"preset": self.preset, "tune": "zerolatency",
                       "maxrate": str(ctx.bit_rate), "bufsize": str(ctx.bit_rate)}
            x264_profile = _X264_PROFILES.get(self.profile)
            if x264_profile:
                options["profile"] = x264_profile
        elif self.to_codec == "vp8":
            options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                       "auto-alt-ref": "0", "error-resilient": "1"}
        ctx.options = {**options, **self._options}
        ctx.open()
        self.counters.add(encoders_opened=1)
        self._enc = ctx
        self._counter = 0
        self._pending.clear()
        self._need_out_key = True
        config = b""
        profile, level = "", 0.0
        if self.to_codec == "h264":
            sps, pps = h264.extract_parameter_sets(bytes(ctx.extradata or b""))
            config = h264.build_avc_config(sps, pps)
            info = h264.parse_sps(sps[0])
            profile, level = info.profile, info.level
        self.track = Track(kind="video", codec=self.to_codec, config=config, width=width,
                           height=height, frame_rate=self.frame_rate, profile=profile,
                           level=level, has_b_frames=False, bitrate=self.bitrate)

    def _encode_all(self, frames: list[VideoFrame]) -> list[Frame]:
        out: list[Frame] = []
        for vf in frames:
            out += self._encode(vf)
        return out

    def _encode(self, vf: VideoFrame | None) -> list[Frame]:
        if vf is not None:
            if self._enc is None:
                try:
                    self._open_encoder(vf)
                except (*FFMPEG_ERRORS, h264.H264Error, IndexError) as e:
                    self._error("cannot open the %s encoder: %s", ENCODERS[self.to_codec], e)
                    return []
            out_tb = self._out_tb or self._enc_tb
            src = vf.pts
            if src is None:  # the decoder lost the timestamp: continue at the nominal cadence
                src = (self._last_pts or 0) + max(1, round(self._enc_tb / out_tb))
            elif self._dec_tb is not None and self._dec_tb != out_tb:
                src = round(src * self._dec_tb / out_tb)
            last = self._last_pts
            if last is not None and src <= last and (last - src) * out_tb < 1:
                src = last + 1  # jitter: keep output strictly increasing (dts == pts)
            self._last_pts = src
            assert self._enc is not None
            if (vf.width, vf.height, vf.format.name) != (
                    self._enc.width, self._enc.height, "yuv420p"):
                vf = self._scaler.reformat(vf, self._enc.width, self._enc.height, "yuv420p",
                                           threads=self.threading.encoder_threads)
            vf.pict_type = PictureType.NONE  # the source's I/P/B choice is not ours
            vf.pts = self._counter
            vf.time_base = self._enc_tb
            self._pending.append((self._counter, src))
            self._counter += 1
        if self._enc is None:
            return []
        packets = self._encode_packets(vf)
        if not packets:
            return []
        out: list[Frame] = []
        pending = self._pending
        for packet in packets:
            n = packet.pts
            while pending and n is not None and pending[0][0] < n:
                pending.popleft()  # the encoder dropped these pictures
            if not pending:
                continue
            _, src = pending.popleft()
            key = packet.is_keyframe
            if self._need_out_key:
                if not key:
                    continue
                self._need_out_key = False
            data = bytes(packet)
            if self.to_codec == "h264":
                try:
                    data = h264.annexb_to_avcc(data, drop=_DROP_NALS)
                except h264.H264Error as e:
                    self._error("unexpected x264 output: %s", e)
                    continue
            out.append(Frame(track=self.track, data=data, pts=src, dts=src,  # type: ignore[arg-type]
                             time_base=self._out_tb, keyframe=key))  # type: ignore[arg-type]
        return out

    # -- housekeeping -----------------------------------------------------------------------

    def _reset(self) -> None:
        self._dec = self._dec_track = self._enc = None
        self._need_key = True
        self._pending.clear()
        self._last_pts = None
