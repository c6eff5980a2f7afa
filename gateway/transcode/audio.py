"""Audio transcode step: decode, resample and re-frame, encode — on the source's own timeline.

Timing model (the reason for most of the code here):

* Output pts are counted in samples (``time_base = 1/out_rate``) from an anchor taken at the
  first decoded input frame, never re-derived from rounded per-packet input timestamps, so a
  long stream cannot drift.
* Encoders prime: FFmpeg's AAC encoder returns its first packet at ``pts = -1024``, libopus at
  ``-312`` (the OpusHead pre-skip), MP2 at ``-481``. We prepend just enough silence that a packet
  boundary falls exactly on the first real sample, drop the packets before it and stamp the rest
  as ``anchor + (packet pts - padding)``. The first output packet therefore has the first input
  frame's pts, and every packet maps to the instant of the samples it decodes to (a late-joining
  viewer's decoder starts mid-stream the same way, so dropping the priming packet costs nothing).
  The OpusHead in ``Track.config`` is rewritten with pre-skip 0 because our stream has no priming.
* Input timestamps are checked against the sample count, with half a frame of tolerance for
  rounded container timestamps: a gap (lost packets, a dropped queue) is filled with silence so
  players that clock from audio stay in sync, a frame that lies (mostly) in the past is dropped
  as a duplicate, and a jump of more than ``MAX_FILL`` re-anchors the timeline. At ``flush``
  the encoder's trailing packets that hold only padding are dropped too.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections.abc import Mapping
from fractions import Fraction
from typing import Final

import av
from av.audio.codeccontext import AudioCodecContext
from av.audio.fifo import AudioFifo
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from ..codecs.aac import AacError, build_asc
from ..media import Frame, Track
from .step import FFMPEG_ERRORS, CodecStep, Counters

__all__ = ["DECODERS", "ENCODERS", "MAX_FILL", "AudioTranscoder"]

log = logging.getLogger(__name__)

#: Internal codec name -> FFmpeg encoder / decoder used for it.
ENCODERS: Final[dict[str, str]] = {"aac": "aac", "opus": "libopus", "mp2": "mp2"}
DECODERS: Final[dict[str, str]] = {"aac": "aac", "opus": "opus", "mp2": "mp2"}
#: Encoder priming in samples where FFmpeg does not tell us before the first packet; libopus
#: is read from its OpusHead. A wrong value only costs a few ms of accuracy, never a crash.
_ENCODER_DELAY: Final[dict[str, int]] = {"aac": 1024, "mp2": 481}
#: Largest forward timestamp gap bridged with silence; beyond it the timeline is re-anchored.
MAX_FILL: Final[Fraction] = Fraction(1)
_SAMPLE_FORMATS: Final[tuple[str, ...]] = ("fltp", "flt", "s16p", "s16")


_LAYOUTS: Final[dict[int, str]] = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1",
                                   7: "6.1", 8: "7.1"}  # AAC's channel configurations


def _layout_name(channels: int) -> str:
    """FFmpeg layout name for a channel count (PyAV takes names, not counts)."""
    try:
        return _LAYOUTS[channels]
    except KeyError:
        raise ValueError(f"unsupported channel count {channels}") from None


def _silence(fmt: str, layout: str, rate: int, samples: int) -> AudioFrame:
    """Zeroed frame: gaps and encoder padding are coded as real silence, not skipped."""
    frame = AudioFrame(format=fmt, layout=layout, samples=samples)
    frame.sample_rate = rate
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    return frame


def _round_div(a: int, b: int) -> int:
    """``round(a / b)`` for integers (``b > 0``), exact and half to even like ``round``."""
    q, r = divmod(a, b)
    if 2 * r > b or (2 * r == b and q & 1):
        q += 1
    return q


def _nearest(value: int, allowed: list[int] | None) -> int:
    """Closest rate the encoder supports (ties go up: don't throw samples away)."""
    if not allowed or value in allowed:
        return value
    return min(allowed, key=lambda a: (abs(a - value), -a))


def _opus_head_without_preskip(head: bytes) -> bytes:
    """OpusHead saying pre-skip 0: our first packet already starts at the first real sample."""
    if len(head) >= 12 and head.startswith(b"OpusHead"):
        return head[:10] + b"\x00\x00" + head[12:]
    return head


class AudioTranscoder(CodecStep):
    """One audio track: ``aac``/``opus``/``mp2`` in, ``aac``/``opus``/``mp2`` out (see module doc).

    ``track`` is the output ``Track`` (the same object for every output frame until a
    ``flush()`` ends the segment); ``errors`` counts frames the codecs rejected (logged and
    skipped), ``dropped`` input frames discarded as duplicates, ``filled`` samples of silence
    inserted for timestamp gaps.
    """

    log = log  # the module's logger, for CodecStep's rate-limited errors

    def __init__(self, source: Track, to_codec: str, *, sample_rate: int = 0, channels: int = 0,
                 bitrate: int = 0, options: Mapping[str, str] | None = None,
                 counters: Counters | None = None) -> None:
        self.counters = Counters() if counters is None else counters
        if source.codec not in DECODERS:
            raise ValueError(f"cannot decode audio codec {source.codec!r}")
        if to_codec not in ENCODERS:
            raise ValueError(f"cannot encode audio codec {to_codec!r}")
        self.source = source
        self.to_codec = to_codec
        self.bitrate = bitrate or {"opus": 64_000}.get(to_codec, 128_000)
        self._want_rate = sample_rate or source.sample_rate or 48_000
        self._want_channels = min(channels or source.channels or 2, 8)
        self._options = dict(options or {})
        self.errors = 0
        self.dropped = 0
        self.filled = 0
        self.track: Track | None = None
        # decoder side
        self._dec: AudioCodecContext | None = None
        self._dec_track: Track | None = None
        self._dec_tb: Fraction | None = None
        self._bad_track: Track | None = None
        # encoder side (set up by _open_encoder)
        self._enc: AudioCodecContext | None = None
        self._fifo: AudioFifo | None = None
        self._out_tb = Fraction(1)
        self._frame_size = 0
        self._pad = 0
        self._fed = 0  # samples handed to the encoder, padding included
        self._end_r: int | None = None  # at flush: packets from here on hold only padding
        self._first_packet = True
        self._expected_delay = 0
        self._fmt, self._layout, self._rate = "fltp", "stereo", 48_000  # encoder input format
        # timeline
        self._resampler: AudioResampler | None = None
        self._res_key: tuple[str, str, int] | None = None
        self._res_r0 = 0  # output sample index where the current resampler started
        self._res_in = 0  # input samples fed to the current resampler
        self._written = 0  # real output samples written to the FIFO (padding excluded)
        # input time of the next expected sample, in ticks of 1/_unit s: integers, because
        # Fraction arithmetic cost ~20 us a frame here; _unit only grows (an lcm of the time
        # bases' and sample rates' denominators), so a change rescales exactly
        self._expected: int | None = None
        self._unit = 1
        self._seg_r: list[int] = []  # output sample index where each timeline segment starts
        self._seg_pts: list[int] = []  # output pts of that sample
        self._open_encoder()

    # -- Step -------------------------------------------------------------------------------

    def process(self, frame: Frame) -> list[Frame]:
        """Decode ``frame`` and return every output packet that became ready."""
        if self._enc is None:
            self._open_encoder()
        decoded = self._decode(frame)
        for af in decoded:
            self._ingest(af)
        return self._drain(final=False)

    def flush(self) -> list[Frame]:
        """End of stream: drain every stage; a later ``process`` starts a new segment/Track."""
        out: list[Frame] = []
        if self._enc is None:
            return out
        if self._dec is not None:
            for af in self._decode_packet(None):
                self._ingest(af)
        self._flush_resampler()
        self._end_r = self._written
        out += self._drain(final=True)
        self._reset()
        return out

    def close(self) -> None:
        """Drop the codec contexts (PyAV frees them when unreferenced)."""
        self._reset()

    # -- decoding ---------------------------------------------------------------------------

    def _open_decoder(self, track: Track, time_base: Fraction) -> None:
        ctx = av.CodecContext.create(DECODERS[track.codec], "r")
        assert isinstance(ctx, AudioCodecContext)
        if track.codec == "aac":
            config = track.config
            if not config and track.sample_rate:
                config = build_asc(2, track.sample_rate, track.channels or 2)
            if config:
                ctx.extradata = config
        elif track.codec == "opus":
            if track.config.startswith(b"OpusHead"):
                ctx.extradata = track.config
            else:  # RTP-style Opus: no header, 48 kHz, channels from the track
                ctx.sample_rate = 48_000
                ctx.layout = _layout_name(track.channels or 2)
        ctx.thread_count = 1
        # With the packet time base known, FFmpeg shifts pts when it trims a decoder pre-skip.
        ctx.options = {"pkt_timebase": f"{time_base.numerator}/{time_base.denominator}"}
        ctx.open()
        self.counters.add(decoders_opened=1)
        self._dec, self._dec_track, self._dec_tb = ctx, track, time_base

    def _config_changed(self, track: Track) -> bool:
        """Whether ``track`` needs a new decoder (a new Track object alone does not)."""
        old = self._dec_track
        if old is None or track is old:
            return False
        if track.codec != old.codec or track.config != old.config:
            return True
        return not track.config and (track.sample_rate, track.channels) != (
            old.sample_rate, old.channels)

    def _decode(self, frame: Frame) -> list[AudioFrame]:
        track = frame.track
        if self._dec is not None and self._config_changed(track):
            drained = self._decode_packet(None)  # the old configuration's last samples
            self._dec = None
            for af in drained:
                self._ingest(af)
        if self._dec is None:
            if track is self._bad_track:
                self.dropped += 1
                return []
            try:
                if track.codec not in DECODERS:
                    raise ValueError(f"cannot decode audio codec {track.codec!r}")
                self._open_decoder(track, frame.time_base)
            except (*FFMPEG_ERRORS, AacError) as e:
                self._bad_track = track
                self._error("cannot open the %s decoder: %s", track.codec, e)
                return []
        self._dec_track = track
        tb = self._dec_tb
        assert tb is not None
        packet = av.Packet(frame.data)
        pts = frame.pts if frame.time_base == tb else round(frame.pts * frame.time_base / tb)
        packet.pts = packet.dts = pts
        packet.time_base = tb
        return self._decode_packet(packet)

    # -- timeline and resampling -------------------------------------------------------------

    def _ingest(self, af: AudioFrame) -> None:
        """Place one decoded frame on the output timeline, bridging gaps, then resample it."""
        samples, rate = af.samples, af.sample_rate
        if not samples or not rate:
            return
        pts = af.pts
        tb = af.time_base if pts is not None else None
        unit = math.lcm(self._unit, rate, tb.denominator if tb else 1)
        if unit != self._unit:
            if self._expected is not None:
                self._expected *= unit // self._unit
            self._unit = unit
        t = pts * tb.numerator * (unit // tb.denominator) if pts is not None and tb else None
        duration = samples * (unit // rate)
        key = (af.format.name, af.layout.name, rate)
        if key != self._res_key:
            self._flush_resampler()
            self._resampler = AudioResampler(format=self._fmt, layout=self._layout,
                                             rate=self._rate)
            self._res_key, self._res_r0, self._res_in = key, self._written, 0
        if self._expected is None or t is None:
            if self._expected is None:
                self._anchor(t or 0)
        else:
            delta = t - self._expected
            if 2 * abs(delta) > duration:
                max_fill = MAX_FILL.numerator * unit // MAX_FILL.denominator
                if 0 < delta <= max_fill:
                    gap = _round_div(delta * rate, unit)
                    self.filled += gap
                    self._feed(_silence(*key, gap), gap * (unit // rate))
                elif -max_fill <= delta and 4 * delta <= -3 * duration:
                    self.dropped += 1  # (mostly) already covered: a duplicate or an overlap
                    return
                elif abs(delta) > max_fill:
                    log.info("%saudio timestamps jumped by %.3f s; re-anchoring", self._who,
                             delta / unit)
                    self._anchor(t)
        self._feed(af, duration)

    def _anchor(self, t: int) -> None:
        """Start a timeline segment: input time ``t`` (ticks) is the next output sample."""
        r = self._res_r0 + round(self._res_in * self._rate / self._res_key[2])  # type: ignore[index]
        self._seg_r.append(r)
        self._seg_pts.append(_round_div(t * self._rate, self._unit))
        del self._seg_r[:-16], self._seg_pts[:-16]  # only recent segments can still be pending
        self._expected = t

    def _feed(self, af: AudioFrame, duration: int) -> None:
        """Resample ``af`` into the FIFO; ``duration`` is its length in ticks."""
        assert self._resampler is not None and self._fifo is not None
        af.pts = None  # timing is ours; keep FFmpeg from "correcting" it
        for out in self._resampler.resample(af):
            self._write(out)
        self._res_in += af.samples
        self._expected = (self._expected or 0) + duration

    def _flush_resampler(self) -> None:
        if self._resampler is not None and self._fifo is not None:
            for out in self._resampler.resample(None):
                self._write(out)
        self._resampler, self._res_key = None, None

    def _write(self, out: AudioFrame) -> None:
        """Into the FIFO in the output's time base. A resampler that has nothing to convert
        hands back its input, in the decoder's time base, and PyAV's FIFO refuses a frame in
        another time base than its first: a source switching between such samples and
        resampled ones (AAC to MP2, say) would fail on every frame after the switch."""
        assert self._fifo is not None
        out.pts = None
        out.time_base = self._out_tb
        self._fifo.write(out)
        self._written += out.samples

    # -- encoding ---------------------------------------------------------------------------

    def _open_encoder(self) -> None:
        codec = av.Codec(ENCODERS[self.to_codec], "w")
        rate = _nearest(self._want_rate, codec.audio_rates)
        channels = self._want_channels
        if self.to_codec in ("mp2", "opus"):
            channels = min(channels, 2)
        formats = [f.name for f in codec.audio_formats or ()]
        fmt = next((f for f in _SAMPLE_FORMATS if f in formats), formats[0] if formats else "fltp")
        ctx = av.CodecContext.create(codec, "w")
        assert isinstance(ctx, AudioCodecContext)
        ctx.sample_rate = rate
        ctx.layout = _layout_name(channels)
        ctx.format = fmt
        ctx.bit_rate = self.bitrate
        ctx.time_base = Fraction(1, rate)
        ctx.thread_count = 1
        if self._options:
            ctx.options = dict(self._options)
        ctx.open()
        self.counters.add(encoders_opened=1)
        extradata = ctx.extradata or b""
        if self.to_codec == "opus":
            delay = int.from_bytes(extradata[10:12], "little") if len(extradata) >= 12 else 312
            config = _opus_head_without_preskip(extradata)
        else:
            delay = _ENCODER_DELAY.get(self.to_codec, 0)
            config = extradata if self.to_codec == "aac" else b""
        self._enc = ctx
        self._fmt, self._layout, self._rate = fmt, ctx.layout.name, rate
        self._frame_size = ctx.frame_size or 1024
        self._pad = -delay % self._frame_size
        self._out_tb = Fraction(1, rate)
        self._fifo = AudioFifo()
        if self._pad:
            self._fifo.write(_silence(fmt, self._layout, rate, self._pad))
        self._fed = 0
        self._first_packet = True
        self._expected_delay = delay
        self.track = Track(kind="audio", codec=self.to_codec, config=config, sample_rate=rate,
                           channels=channels, bitrate=self.bitrate)

    def _drain(self, final: bool) -> list[Frame]:
        fifo, size = self._fifo, self._frame_size
        if fifo is None or self._expected is None:
            return []
        out: list[Frame] = []
        if final and fifo.samples % size:
            fifo.write(_silence(self._fmt, self._layout, self._rate, size - fifo.samples % size))
        while fifo.samples >= size:
            frame = fifo.read(size)
            assert frame is not None
            frame.pts = self._fed
            frame.time_base = self._out_tb
            self._fed += size
            out += self._encode(frame)
        if final:
            out += self._encode(None)
        return out

    def _encode(self, frame: AudioFrame | None) -> list[Frame]:
        assert self._enc is not None
        packets = self._encode_packets(frame)
        if not packets:
            return []
        out: list[Frame] = []
        for packet in packets:
            p = packet.pts
            if p is None:
                continue
            if self._first_packet:
                self._first_packet = False
                if p != -self._expected_delay:
                    log.debug("%s%s encoder delay is %d, not %d: output off by %d samples",
                              self._who, self._enc.name, -p, self._expected_delay,
                              p + self._expected_delay)
            if p + (packet.duration or self._frame_size) <= self._pad:
                continue  # priming and padding only
            r = p - self._pad
            if self._end_r is not None and r >= self._end_r:
                continue  # the encoder's tail: padding only
            i = max(bisect_right(self._seg_r, r) - 1, 0)
            pts = self._seg_pts[i] + r - self._seg_r[i]
            out.append(Frame(track=self.track, data=bytes(packet), pts=pts, dts=pts,  # type: ignore[arg-type]
                             time_base=self._out_tb, keyframe=True))
        return out

    # -- housekeeping -----------------------------------------------------------------------

    def _reset(self) -> None:
        self._dec = self._dec_track = self._enc = self._fifo = self._resampler = None
        self._res_key = self._expected = None
        self._unit = 1
        self._res_r0 = self._res_in = self._written = self._fed = 0
        self._end_r = None
        self._seg_r, self._seg_pts = [], []
