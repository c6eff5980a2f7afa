"""MPEG-TS (ISO 13818-1): a serialize-once muxer and a streaming demuxer (sans-I/O).

The muxer feeds jsmpeg (MPEG-1 video + MP2 over WebSocket) and any TS player; the demuxer feeds
the ``h5`` ingest (TS over HTTP POST / WebSocket). Both speak ``gateway.media`` only: H.264 is
converted between AVCC and Annex B and AAC between raw frames and ADTS here, at the edge.

**Shared output.** ``TsMuxer.mux(frame)`` is called once per frame and the same bytes go to
every viewer, whichever frame it joined at. So:

* every video keyframe's bytes start with PAT + PMT (in an audio-only stream, the bytes of an
  audio frame every ``psi_interval``), and ``header()`` (PAT + PMT, pure) can go first to anyone;
* continuity counters run per PID over the whole stream, so a viewer that joined late or skipped
  ahead to a keyframe sees a counter jump. To make that legal, the PAT/PMT packets, the first
  packet of each keyframe and the first audio packet after a keyframe (or after PAT/PMT in an
  audio-only stream) carry ``discontinuity_indicator``. FFmpeg then reports no continuity
  error; jsmpeg ignores counters. On the PCR PID that flag formally announces a time-base discontinuity, which is harmless here
  because the PCR carried in the same packet continues the old time base.

**jsmpeg specifics** (it ignores PAT/PMT and finds streams by PES ``stream_id``): video uses
stream_id 0xE0 and audio 0xC0; a PES's header always sits whole in its first TS packet; only the
last TS packet of a PES has an adaptation field besides the first (jsmpeg takes an adaptation
field in a continuation packet as "frame complete", which lets it show a frame at once rather than
when the next one starts); PES_packet_length is set whenever it fits 16 bits.

The demuxer resyncs on 0x47, reassembles PES with bounded buffers, checks continuity, CRCs PSI,
and turns elementary streams into ``Frame``\\ s (timestamps in 1/90000 s, unwrapped past 33 bits).
Garbage in which no sync can be found raises ``TsError``; everything else that is malformed is
dropped and counted in ``TsDemuxer.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

from ..codecs import aac, h264
from ..media import Frame, Track

__all__ = [
    "AUDIO_PID",
    "PACKET_SIZE",
    "PMT_PID",
    "SUPPORTED",
    "STREAM_TYPE_AAC",
    "STREAM_TYPE_H264",
    "STREAM_TYPE_MPEG1_AUDIO",
    "STREAM_TYPE_MPEG1_VIDEO",
    "STREAM_TYPE_MPEG2_AUDIO",
    "STREAM_TYPE_MPEG2_VIDEO",
    "TIME_BASE",
    "VIDEO_PID",
    "MpegAudioHeader",
    "MpegVideoSequence",
    "TsDemuxer",
    "TsError",
    "TsMuxer",
    "crc32_mpeg2",
    "parse_mpeg_audio_header",
    "parse_mpeg_video_sequence",
    "stream_type_content",
    "to_90k",
]


class TsError(ValueError):
    """Bytes that are not MPEG-TS (no sync found), or a frame MPEG-TS cannot carry."""


PACKET_SIZE: Final = 188
_HEAD_SIZE: Final = 4096  # first bytes kept to name a stream that is not TS
SYNC: Final = 0x47
TIME_BASE: Final = Fraction(1, 90000)
CLOCK: Final = 90000
_TS_WRAP: Final = 1 << 33
_TS_MASK: Final = _TS_WRAP - 1

PAT_PID: Final = 0x0000
PMT_PID: Final = 0x1000  # FFmpeg's defaults, so dumps compare easily
VIDEO_PID: Final = 0x0100
AUDIO_PID: Final = 0x0101
NULL_PID: Final = 0x1FFF

STREAM_TYPE_MPEG1_VIDEO: Final = 0x01
STREAM_TYPE_MPEG2_VIDEO: Final = 0x02  # FFmpeg labels MPEG-1 video with this too
STREAM_TYPE_MPEG1_AUDIO: Final = 0x03
STREAM_TYPE_MPEG2_AUDIO: Final = 0x04
STREAM_TYPE_AAC: Final = 0x0F  # ADTS
STREAM_TYPE_H264: Final = 0x1B

_STREAM_ID_VIDEO: Final = 0xE0
_STREAM_ID_AUDIO: Final = 0xC0
_AUD: Final = b"\x00\x00\x00\x01\x09\xf0"  # access unit delimiter, primary_pic_type "any"


# --- CRC-32/MPEG-2 --------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else c << 1
        table.append(c & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC of PSI sections (non-reflected, unlike zlib's); a section including its CRC gives 0."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


# --- timestamps -----------------------------------------------------------------------------

def to_90k(value: int, time_base: Fraction) -> int:
    """``value`` in ``time_base`` as 90 kHz ticks, rounded to nearest (exact for ms and 1/90000)."""
    num = time_base.numerator * CLOCK  # no Fraction arithmetic or hashing: a per-frame path
    den = time_base.denominator
    if den == 1:
        return value * num
    return (2 * value * num + den) // (2 * den)


def _encode_ts(prefix: int, ts: int) -> bytes:
    ts &= _TS_MASK
    return bytes(
        (
            (prefix << 4) | ((ts >> 29) & 0x0E) | 1,
            (ts >> 22) & 0xFF,
            ((ts >> 14) & 0xFE) | 1,
            (ts >> 7) & 0xFF,
            ((ts << 1) & 0xFE) | 1,
        )
    )


def _decode_ts(b: bytes | bytearray | memoryview, i: int) -> int:
    return (
        ((b[i] & 0x0E) << 29)
        | (b[i + 1] << 22)
        | ((b[i + 2] & 0xFE) << 14)
        | (b[i + 3] << 7)
        | (b[i + 4] >> 1)
    )


def _encode_pcr(base: int) -> bytes:
    base &= _TS_MASK
    return bytes(
        (
            (base >> 25) & 0xFF,
            (base >> 17) & 0xFF,
            (base >> 9) & 0xFF,
            (base >> 1) & 0xFF,
            ((base & 1) << 7) | 0x7E,  # 6 reserved bits, extension 0
            0,
        )
    )


# --- packet building ------------------------------------------------------------------------

_Buf = bytes | bytearray | memoryview


def _af_packet(pid: int, pusi: bool, cc: int, af_body: bytes, payload: _Buf) -> bytes:
    """One packet with an adaptation field (``af_body`` = flags + fields) stuffed to 188 bytes."""
    stuffing = 183 - len(af_body) - len(payload)  # 184 minus the length byte
    if stuffing < 0:
        raise AssertionError("adaptation field and payload exceed one packet")
    if not af_body and stuffing:
        af_body = b"\x00"  # flags byte must precede stuffing
        stuffing -= 1
    head = bytes(
        (
            SYNC,
            (0x40 if pusi else 0) | (pid >> 8),
            pid & 0xFF,
            (0x30 if payload else 0x20) | cc,
            len(af_body) + stuffing,
        )
    )
    return b"".join((head, af_body, b"\xff" * stuffing, payload))


def _psi_section(table_id: int, table_ext: int, version: int, body: bytes) -> bytes:
    length = 5 + len(body) + 4  # after section_length: ext, version, numbers, body, CRC
    section = (
        bytes(
            (
                table_id,
                0xB0 | (length >> 8),
                length & 0xFF,
                table_ext >> 8,
                table_ext & 0xFF,
                0xC1 | ((version & 0x1F) << 1),
                0,
                0,
            )
        )
        + body
    )
    return section + crc32_mpeg2(section).to_bytes(4, "big")


def _psi_packet(pid: int, cc: int, section: bytes, discontinuity: bool) -> bytes:
    payload = b"\x00" + section  # pointer_field
    if discontinuity:
        return _af_packet(pid, True, cc, b"\x80", payload)
    head = bytes((SYNC, 0x40 | (pid >> 8), pid & 0xFF, 0x10 | cc))
    return head + payload + b"\xff" * (184 - len(payload))


_MUX_STREAM_TYPES: Final = {
    "mpeg1video": STREAM_TYPE_MPEG1_VIDEO,
    "h264": STREAM_TYPE_H264,
    "mp2": STREAM_TYPE_MPEG1_AUDIO,
    "aac": STREAM_TYPE_AAC,
}


@dataclass(slots=True)
class _MuxStream:
    pid: int
    stream_id: int
    stream_type: int
    track: Track
    avc: h264.AvcConfig | None = None
    asc: aac.AudioSpecificConfig | None = None
    continuity: int = 0
    headers: tuple[bytes, ...] = ()  # plain continuation-packet header for each counter value


def _stream_type(track: Track) -> int:
    try:
        st = _MUX_STREAM_TYPES[track.codec]
    except KeyError:
        raise TsError(f"MPEG-TS output cannot carry {track.codec!r}") from None
    if st == STREAM_TYPE_MPEG1_AUDIO and 0 < track.sample_rate < 32000:
        return STREAM_TYPE_MPEG2_AUDIO  # MPEG-2 low sampling frequency extension
    return st


class TsMuxer:
    """Frames in, whole 188-byte packets out; one program, one video and/or one audio PID.

    Output timestamps are the input's plus ``offset`` (default 1.4 s, as FFmpeg does) so that
    reordered streams never go below zero; the PCR runs ``pcr_delay`` behind the DTS of the PES
    that carries it. In an audio-only stream PAT/PMT are repeated before an audio frame at most
    every ``psi_interval`` seconds.
    """

    def __init__(
        self,
        tracks: dict[str, Track],
        *,
        offset: float = 1.4,
        pcr_delay: float = 0.7,
        psi_interval: float = 0.5,
    ) -> None:
        self._offset = round(offset * CLOCK)
        self._pcr_delay = round(pcr_delay * CLOCK)
        self._psi_interval = round(psi_interval * CLOCK)
        self._streams: dict[str, _MuxStream] = {}
        self._pat_cc = 0
        self._pmt_cc = 0
        self._version = 0
        self._psi_due = True
        self._last_psi: int | None = None
        self._audio_disc = False
        for track in tracks.values():
            self._add(track)
        self._sections = self._build_sections()

    # -- configuration -------------------------------------------------------------------

    def _add(self, track: Track) -> _MuxStream:
        if track.kind in self._streams:
            raise TsError(f"more than one {track.kind} track")
        video = track.kind == "video"
        stream = _MuxStream(
            pid=VIDEO_PID if video else AUDIO_PID,
            stream_id=_STREAM_ID_VIDEO if video else _STREAM_ID_AUDIO,
            stream_type=_stream_type(track),
            track=track,
        )
        pid = stream.pid
        stream.headers = tuple(bytes((SYNC, pid >> 8, pid & 0xFF, 0x10 | cc)) for cc in range(16))
        self._configure(stream, track)
        self._streams[track.kind] = stream
        return stream

    @staticmethod
    def _configure(stream: _MuxStream, track: Track) -> None:
        stream.track = track
        stream.avc = None
        stream.asc = None
        try:
            if track.codec == "h264" and track.config:
                stream.avc = h264.parse_avc_config(track.config)
            elif track.codec == "aac" and track.config:
                stream.asc = aac.parse_asc(track.config)
        except ValueError as e:
            raise TsError(f"bad {track.codec} configuration: {e}") from e

    def _build_sections(self) -> tuple[bytes, bytes]:
        pat = _psi_section(0x00, 1, self._version, bytes((0, 1, 0xE0 | (PMT_PID >> 8), PMT_PID & 0xFF)))
        streams = sorted(self._streams.values(), key=lambda s: s.pid)
        pcr_pid = self._pcr_stream().pid if streams else NULL_PID
        body = bytearray((0xE0 | (pcr_pid >> 8), pcr_pid & 0xFF, 0xF0, 0x00))
        for s in streams:
            body += bytes((s.stream_type, 0xE0 | (s.pid >> 8), s.pid & 0xFF, 0xF0, 0x00))
        pmt = _psi_section(0x02, 1, self._version, bytes(body))
        return pat, pmt

    def _pcr_stream(self) -> _MuxStream:
        return self._streams.get("video") or self._streams["audio"]

    @property
    def tracks(self) -> dict[str, Track]:
        """Track in force per kind (a frame with a new ``Track`` object replaces it)."""
        return {kind: s.track for kind, s in self._streams.items()}

    # -- output --------------------------------------------------------------------------

    def header(self) -> bytes:
        """PAT + PMT for a viewer joining now; does not touch the shared counters."""
        pat, pmt = self._sections
        return _psi_packet(PAT_PID, 0, pat, True) + _psi_packet(PMT_PID, 0, pmt, True)

    def _psi(self) -> bytes:
        pat, pmt = self._sections
        out = _psi_packet(PAT_PID, self._pat_cc, pat, True) + _psi_packet(PMT_PID, self._pmt_cc, pmt, True)
        self._pat_cc = (self._pat_cc + 1) & 15
        self._pmt_cc = (self._pmt_cc + 1) & 15
        return out

    def mux(self, frame: Frame) -> bytes:
        """Packets for one frame, to be shared by all viewers (see the module docstring)."""
        track = frame.track
        stream = self._streams.get(track.kind)
        if stream is None:
            stream = self._add(track)
            self._version = (self._version + 1) & 0x1F
            self._sections = self._build_sections()
            self._psi_due = True
        elif stream.track is not track:
            stream_type = _stream_type(track)
            self._configure(stream, track)
            if stream_type != stream.stream_type:
                stream.stream_type = stream_type
                self._version = (self._version + 1) & 0x1F
                self._sections = self._build_sections()
                self._psi_due = True

        tb = frame.time_base
        dts = to_90k(frame.dts, tb) + self._offset
        pts = to_90k(frame.pts, tb) + self._offset
        video = stream.stream_id == _STREAM_ID_VIDEO
        has_video = "video" in self._streams
        keyframe = frame.keyframe and video
        pcr_stream = self._pcr_stream()

        parts: list[bytes] = []
        discontinuity = False
        if keyframe:
            parts.append(self._psi())
            self._psi_due = False
            discontinuity = True
            self._audio_disc = True
        elif not has_video and (
            self._psi_due or self._last_psi is None or abs(dts - self._last_psi) >= self._psi_interval
        ):
            parts.append(self._psi())
            self._psi_due = False
            self._last_psi = dts
            discontinuity = True
        elif self._psi_due:
            parts.append(self._psi())  # a new PMT; viewers still wait for a keyframe to show
            self._psi_due = False
        if not video and self._audio_disc and has_video:
            discontinuity = True
            self._audio_disc = False

        payload = self._payload(stream, frame)
        parts.append(
            self._packetize(
                stream,
                payload,
                pts,
                dts,
                discontinuity=discontinuity,
                random_access=keyframe or (not has_video and discontinuity),
                pcr=dts - self._pcr_delay if stream is pcr_stream else None,
            )
        )
        return b"".join(parts)

    def _payload(self, stream: _MuxStream, frame: Frame) -> list[_Buf]:
        codec = stream.track.codec
        data = frame.data
        if codec == "h264":
            try:
                annexb = h264.avcc_to_annexb(data, stream.avc)
            except ValueError as e:
                raise TsError(f"bad H.264 access unit: {e}") from e
            if len(annexb) > 4 and annexb[4] & 0x1F == h264.NAL_AUD:
                return [annexb]
            return [_AUD, annexb]
        if codec == "aac":
            try:
                if stream.asc is not None:
                    adts = aac.adts_header_for(stream.asc, len(data))
                else:
                    track = stream.track
                    adts = aac.build_adts_header(aac.AOT_AAC_LC, track.sample_rate, track.channels, len(data))
            except ValueError as e:
                raise TsError(f"cannot frame AAC as ADTS: {e}") from e
            return [adts, data]
        return [data]

    def _packetize(
        self,
        stream: _MuxStream,
        payload: list[_Buf],
        pts: int,
        dts: int,
        *,
        discontinuity: bool,
        random_access: bool,
        pcr: int | None,
    ) -> bytes:
        size = sum(len(p) for p in payload)
        if pts != dts:
            opt = b"\x84\xc0\x0a" + _encode_ts(3, pts) + _encode_ts(1, dts)
        else:
            opt = b"\x84\x80\x05" + _encode_ts(2, pts)
        length = len(opt) + size
        if length > 0xFFFF:
            length = 0  # unbounded: allowed for video only, and audio frames are never this big
        pes_head = bytes((0, 0, 1, stream.stream_id, length >> 8, length & 0xFF))
        pes = memoryview(b"".join((pes_head, opt, *payload)))
        total = len(pes)

        flags = (0x80 if discontinuity else 0) | (0x40 if random_access else 0)
        af_body = b""
        if pcr is not None:
            af_body = bytes((flags | 0x10,)) + _encode_pcr(pcr)
        elif flags:
            af_body = bytes((flags,))
        room = 184 - (len(af_body) + 1 if af_body else 0)

        pid = stream.pid
        cc = stream.continuity
        if total <= room:
            if af_body or total < 184:
                packet = _af_packet(pid, True, cc, af_body, pes)
            else:
                packet = bytes((SYNC, 0x40 | (pid >> 8), pid & 0xFF, 0x10 | cc)) + pes
            stream.continuity = (cc + 1) & 15
            return packet

        take = room
        rest = total - take
        if rest % 184 == 0:
            # Keep an adaptation field in the last packet (jsmpeg's end-of-frame cue); middle
            # packets must stay without one, so the first packet absorbs one stuffing byte.
            take -= 1
            rest += 1
        if af_body or take < 184:
            parts: list[_Buf] = [_af_packet(pid, True, cc, af_body, pes[:take])]
        else:
            parts = [bytes((SYNC, 0x40 | (pid >> 8), pid & 0xFF, 0x10 | cc)), pes[:take]]
        cc = (cc + 1) & 15
        headers = stream.headers
        pos = take
        end = total - (rest % 184)
        append = parts.append
        while pos < end:
            append(headers[cc])
            append(pes[pos : pos + 184])
            pos += 184
            cc = (cc + 1) & 15
        append(_af_packet(pid, False, cc, b"", pes[pos:]))
        stream.continuity = (cc + 1) & 15
        return b"".join(parts)


# --- elementary stream parsing --------------------------------------------------------------

_MPEG_VIDEO_RATES: Final = (
    0.0, 24000 / 1001, 24.0, 25.0, 30000 / 1001, 30.0, 50.0, 60000 / 1001, 60.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MpegVideoSequence:
    """What a track needs from an MPEG-1/2 video sequence header."""

    width: int
    height: int
    frame_rate: float
    bitrate: int  # bit/s, 0 = variable/unknown


def parse_mpeg_video_sequence(data: _Buf, at: int = 0) -> MpegVideoSequence:
    """Parse the sequence header whose start code (00 00 01 B3) is at ``at``."""
    b = bytes(data[at : at + 12])
    if len(b) < 12 or b[:4] != b"\x00\x00\x01\xb3":
        raise TsError("MPEG video sequence header truncated")
    width = (b[4] << 4) | (b[5] >> 4)
    height = ((b[5] & 0x0F) << 8) | b[6]
    rate_code = b[7] & 0x0F
    bitrate = (b[8] << 10) | (b[9] << 2) | (b[10] >> 6)
    if not width or not height or not 0 < rate_code < len(_MPEG_VIDEO_RATES):
        raise TsError("invalid MPEG video sequence header")
    rate = _MPEG_VIDEO_RATES[rate_code]
    return MpegVideoSequence(width, height, rate, 0 if bitrate == 0x3FFFF else bitrate * 400)


# kbit/s by [version is MPEG-1][layer][index]; layer 1 = I, 2 = II, 3 = III
_MPA_BITRATES: Final = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPA_RATES: Final = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True, slots=True)
class MpegAudioHeader:
    """One MPEG-1/2/2.5 audio frame header (layers I-III)."""

    layer: int
    sample_rate: int
    channels: int
    bitrate: int  # bit/s
    frame_length: int  # bytes, header included
    samples: int  # per frame


def parse_mpeg_audio_header(data: _Buf, at: int = 0) -> MpegAudioHeader:
    """Parse the 4-byte MPEG audio header at ``at`` (free-format frames are rejected)."""
    if len(data) - at < 4:
        raise TsError("MPEG audio header truncated")
    b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
    if data[at] != 0xFF or b1 & 0xE0 != 0xE0:
        raise TsError("MPEG audio sync missing")
    version = (b1 >> 3) & 3
    layer = 4 - ((b1 >> 1) & 3)
    index = b2 >> 4
    rate_index = (b2 >> 2) & 3
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:
        raise TsError("reserved or free-format MPEG audio header")
    mpeg1 = version == 3
    sample_rate = _MPA_RATES[version][rate_index]
    kbps = _MPA_BITRATES[(mpeg1, layer)][index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        length = (12000 * kbps // sample_rate + padding) * 4
        samples = 384
    else:
        lsf_layer3 = layer == 3 and not mpeg1
        length = (72000 if lsf_layer3 else 144000) * kbps // sample_rate + padding
        samples = 576 if lsf_layer3 else 1152
    return MpegAudioHeader(
        layer=layer,
        sample_rate=sample_rate,
        channels=1 if b3 >> 6 == 3 else 2,
        bitrate=kbps * 1000,
        frame_length=length,
        samples=samples,
    )


_DROP_NALS: Final = frozenset({h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD, h264.NAL_FILLER})


class _Es:
    """An elementary stream decoder: PES payloads in, frames out."""

    kind = "video"

    def __init__(self) -> None:
        self.track: Track | None = None
        self.unsupported = ""  # what the stream turned out to carry, when it cannot be taken

    def feed(self, data: bytes, pts: int | None, dts: int | None) -> list[Frame]:
        raise NotImplementedError


class _MpegVideoEs(_Es):
    def __init__(self) -> None:
        super().__init__()
        self._seq: MpegVideoSequence | None = None
        self._last: tuple[int, int] | None = None

    def feed(self, data: bytes, pts: int | None, dts: int | None) -> list[Frame]:
        at = data.find(b"\x00\x00\x01\xb3")
        if at >= 0:
            seq = parse_mpeg_video_sequence(data, at)
            ext = data.find(b"\x00\x00\x01\xb5", at + 12)
            pic0 = data.find(b"\x00\x00\x01\x00", at + 12)
            if ext >= 0 and (pic0 < 0 or ext < pic0):
                # a sequence_extension: MPEG-2, which jsmpeg cannot decode
                self.unsupported = "MPEG-2 video"
                return []
            if seq != self._seq:
                self._seq = seq
                self.track = self._track(seq, self.track is not None and self.track.has_b_frames)
        if self.track is None or self._seq is None:
            return []
        pic = data.find(b"\x00\x00\x01\x00")
        if pic < 0 or pic + 6 > len(data):
            raise TsError("PES without an MPEG video picture header")
        coding_type = (data[pic + 5] >> 3) & 7
        if coding_type == 3 and not self.track.has_b_frames:
            # PTS != DTS does not tell (FFmpeg delays even I/P-only streams): the first B
            # picture does, and changes the track once.
            self.track = self._track(self._seq, True)
        times = _times(pts, dts, self._last)
        if times is None:
            return []
        self._last = times
        return [Frame(self.track, data, times[0], times[1], TIME_BASE, coding_type == 1)]

    @staticmethod
    def _track(seq: MpegVideoSequence, b_frames: bool) -> Track:
        return Track(
            kind="video",
            codec="mpeg1video",
            width=seq.width,
            height=seq.height,
            frame_rate=seq.frame_rate,
            bitrate=seq.bitrate,
            has_b_frames=b_frames,
        )


class _H264Es(_Es):
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


def _times(pts: int | None, dts: int | None, last: tuple[int, int] | None) -> tuple[int, int] | None:
    """(pts, dts) of a video PES; a PES without PTS reuses the previous ones (rare, lossy)."""
    if pts is None:
        return last
    return pts, pts if dts is None else dts


class _AudioEs(_Es):
    """Audio framed in-band (ADTS, MPEG audio): frames may span PES packets or share one."""

    kind = "audio"
    _MAX_FRAME = 8192

    def __init__(self) -> None:
        super().__init__()
        self._pending = b""
        self._next: Fraction | None = None  # extrapolated pts of the next frame, in 90 kHz

    def _frame_at(self, data: bytes, pos: int) -> tuple[int, int, int] | None:
        """(length, samples, sample_rate) of the frame at ``pos``; None to resync; TsError if short."""
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
            header = parse_mpeg_audio_header(data, pos)
        except TsError:
            if len(data) - pos < 4:
                raise
            return None
        return header.frame_length, header.samples, header.sample_rate

    def _emit(self, data: bytes, pos: int, length: int, pts: int) -> Frame | None:
        header = parse_mpeg_audio_header(data, pos)
        if header.layer != 2:
            self.unsupported = f"MPEG audio layer {'I' * header.layer}" + (
                " (MP3)" if header.layer == 3 else "")
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


_ES_TYPES: Final = {
    STREAM_TYPE_MPEG1_VIDEO: _MpegVideoEs,
    STREAM_TYPE_MPEG2_VIDEO: _MpegVideoEs,
    STREAM_TYPE_H264: _H264Es,
    STREAM_TYPE_MPEG1_AUDIO: _MpegAudioEs,
    STREAM_TYPE_MPEG2_AUDIO: _MpegAudioEs,
    STREAM_TYPE_AAC: _AdtsEs,
}
#: What the demuxer takes, for error messages.
SUPPORTED: Final = "MPEG-1 video, H.264, MP2 and AAC (ADTS)"
_STREAM_TYPE_NAMES: Final = {
    0x01: "MPEG-1 video", 0x02: "MPEG-2 video", 0x03: "MPEG-1 audio", 0x04: "MPEG-2 audio",
    0x06: "private data (e.g. Opus, AC-3 or subtitles)", 0x0F: "AAC", 0x10: "MPEG-4 Part 2 video",
    0x11: "AAC in LATM", 0x1B: "H.264 video", 0x15: "metadata", 0x24: "HEVC video", 0x33: "VVC video",
    0x42: "AVS video", 0x81: "AC-3 audio", 0x82: "DTS audio", 0x83: "TrueHD audio",
    0x86: "SCTE-35 cues", 0x87: "E-AC-3 audio", 0xD1: "Dirac video", 0xEA: "VC-1 video",
}


def stream_type_content(stream_type: int) -> str:
    """What a PMT stream type carries, in an operator's words (``HEVC video``)."""
    return _STREAM_TYPE_NAMES.get(stream_type) or f"stream type 0x{stream_type:02x}"


#: Leading bytes of what is sent by mistake where MPEG-TS belongs (``-f flv``, ``-f mp4``, a
#: file through ``curl -T``, the old jsmpeg's ``-f mpeg1video``), and what to call it.
_NOT_TS_SIGNATURES: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0, b"FLV\x01", "FLV"),
    (4, b"ftyp", "MP4 / MOV"), (4, b"moov", "MP4 / MOV"), (4, b"moof", "fragmented MP4"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska / WebM"),
    (0, b"OggS", "Ogg"),
    (0, b"RIFF", "RIFF (WAV / AVI)"),
    (0, b"ID3", "MP3 (ID3 tag)"),
    (0, b"\x00\x00\x01\xba", "MPEG program stream (-f mpeg / .mpg)"),
    (0, b"\x00\x00\x01\xb3", "raw MPEG-1/2 video (-f mpeg1video, the old jsmpeg format)"),
    (0, b"\x00\x00\x00\x01", "raw H.264 / HEVC (Annex B)"),
    (0, b"\x00\x00\x01", "a raw elementary stream (no container)"),
)


def guess_not_ts(head: bytes) -> str:
    """What the first bytes of a stream that has no TS sync look like, or ``""``.

    So that the refusal tells a publisher what it sent instead ("looks like FLV"), not only
    what it did not.
    """
    for at, magic, what in _NOT_TS_SIGNATURES:
        if head[at:at + len(magic)] == magic:
            return what
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "raw AAC (ADTS)"
    for size, what in ((192, "192-byte packets (M2TS / BDAV)"),
                       (204, "204-byte packets (TS with Reed-Solomon parity)")):
        for first in range(size):  # a sync byte every ``size`` bytes, five times over
            if len(head) < first + 4 * size + 1:
                break
            if all(head[first + k * size] == SYNC for k in range(5)):
                return what
    return ""


def _nothing_to_take(unsupported: dict[int, tuple[int, str]]) -> str:
    found = ", ".join(f"{what} (PID {pid})" for pid, (_, what) in unsupported.items())
    return f"no stream the gateway can take: the TS carries {found}; it takes {SUPPORTED}"


# --- demuxer --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Section:
    """PSI section reassembly for one PID."""

    buf: bytearray = field(default_factory=bytearray)
    active: bool = False
    cc: int = -1


@dataclass(slots=True)
class _Pid:
    """PES reassembly for one elementary stream PID."""

    stream_type: int
    es: _Es
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    expected: int = 0  # whole PES size from PES_packet_length, 0 = until the next start
    cc: int = -1
    active: bool = False


class TsDemuxer:
    """Streaming MPEG-TS demuxer: ``receive_data`` returns the frames completed so far.

    Uses the first program of the PAT and, in it, the first supported video and audio streams;
    ``tracks`` holds the current ``Track`` per kind (a new object when the configuration
    changes, so frames can be compared by identity). A video PES without a length ends only when
    the next one starts, so the last such frame comes out of ``flush()``.
    """

    def __init__(self, *, max_pes_size: int = 16 << 20, max_garbage: int = 64 << 10) -> None:
        self.max_pes_size = max_pes_size
        self.max_garbage = max_garbage
        self.tracks: dict[str, Track] = {}
        self.errors = 0  # dropped PES / frames / packets (corruption), for diagnostics
        self.program_number: int | None = None
        self._buf = b""
        self._synced = False
        self._garbage = 0
        self._head: bytes | None = b""  # first bytes until the first sync: to name a non-TS
        self._pmt_pid: int | None = None
        self._sections: dict[int, _Section] = {}
        self._last_section: dict[int, bytes] = {}
        self._pids: dict[int, _Pid] = {}
        self._ts_last: int | None = None
        #: PID -> (stream type, what it carries) of the streams skipped: a stream type of the
        #: current PMT that this demuxer does not take, or a taken type whose content it cannot
        #: (MPEG-2 video, MP3); a second stream of a kind already taken is not listed
        self.unsupported: dict[int, tuple[int, str]] = {}
        #: the kinds of the streams taken from the PMT, less those found to carry what cannot
        #: be taken: what the publisher will send, before its first frames say so
        self.announced: frozenset[str] = frozenset()

    # -- public --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Feed bytes (any chunking); returns frames whose data is complete."""
        buf = self._buf + bytes(data) if self._buf else bytes(data)
        if self._head is not None and len(self._head) < _HEAD_SIZE:
            self._head += bytes(data[:_HEAD_SIZE - len(self._head)])
        out: list[Frame] = []
        pos = 0
        size = len(buf)
        while size - pos >= PACKET_SIZE:
            if not self._synced:
                pos, found = self._find_sync(buf, pos)
                if not found:
                    break
                self._synced = True
                self._head = None
            if buf[pos] != SYNC:
                self._synced = False
                self.errors += 1
                continue
            self._packet(buf, pos, out)
            pos += PACKET_SIZE
            self._garbage = 0
        self._buf = buf[pos:]
        return out

    def flush(self) -> list[Frame]:
        """End of input: packets held back for sync confirmation, then open PES packets."""
        out: list[Frame] = []
        buf, self._buf = self._buf, b""
        pos = 0
        while len(buf) - pos >= PACKET_SIZE and buf[pos] == SYNC:
            self._packet(buf, pos, out)
            pos += PACKET_SIZE
        for state in self._pids.values():
            self._finish(state, out)
        return out

    # -- packets -------------------------------------------------------------------------

    def _find_sync(self, buf: bytes, pos: int) -> tuple[int, bool]:
        """(offset, confirmed): three sync bytes 188 apart, or where to wait for more data."""
        size = len(buf)
        start = pos
        while True:
            cand = buf.find(b"\x47", start)
            if cand < 0 or size - cand <= 2 * PACKET_SIZE:
                stop = size if cand < 0 else cand
                self._count_garbage(stop - pos)
                return stop, False
            if buf[cand + PACKET_SIZE] == SYNC and buf[cand + 2 * PACKET_SIZE] == SYNC:
                self._count_garbage(cand - pos)
                if cand != pos:
                    self.errors += 1
                return cand, True
            start = cand + 1

    def _count_garbage(self, skipped: int) -> None:
        self._garbage += skipped
        if self._garbage > self.max_garbage:
            what = guess_not_ts(self._head or b"")
            raise TsError(f"no MPEG-TS sync in {self._garbage} bytes"
                          + (f"; the data looks like {what}: send MPEG-TS (FFmpeg: -f mpegts)"
                             if what else ""))

    def _packet(self, buf: bytes, pos: int, out: list[Frame]) -> None:
        b1 = buf[pos + 1]
        if b1 & 0x80:  # transport_error_indicator
            self.errors += 1
            return
        pid = ((b1 & 0x1F) << 8) | buf[pos + 2]
        b3 = buf[pos + 3]
        afc = (b3 >> 4) & 3
        if not afc & 1:
            return  # adaptation field only (or reserved): no payload
        start = pos + 4
        discontinuity = False
        if afc == 3:
            af_len = buf[pos + 4]
            if af_len > 182:
                self.errors += 1
                return
            discontinuity = af_len > 0 and bool(buf[pos + 5] & 0x80)
            start += 1 + af_len
        end = pos + PACKET_SIZE
        pusi = bool(b1 & 0x40)
        cc = b3 & 0x0F
        state = self._pids.get(pid)
        if state is not None:
            self._pes_packet(state, buf, start, end, pusi, cc, discontinuity, out)
        elif pid == PAT_PID or pid == self._pmt_pid:
            self._psi_packet(pid, buf[start:end], pusi, cc, discontinuity, out)

    def _pes_packet(
        self,
        state: _Pid,
        buf: bytes,
        start: int,
        end: int,
        pusi: bool,
        cc: int,
        discontinuity: bool,
        out: list[Frame],
    ) -> None:
        last = state.cc
        state.cc = cc
        if last >= 0 and not discontinuity and cc != (last + 1) & 15:
            if cc == last:
                return  # duplicate packet
            if state.active:
                self.errors += 1  # lost packets: this PES is damaged
                state.active = False
                state.parts = []
                state.size = 0
        if pusi:
            self._finish(state, out)
            state.active = True
            if end - start >= 6 and buf[start : start + 3] == b"\x00\x00\x01":
                length = (buf[start + 4] << 8) | buf[start + 5]
                state.expected = length + 6 if length else 0
            else:
                state.expected = 0
        elif not state.active:
            return
        state.parts.append(buf[start:end])
        state.size += end - start
        if state.expected and state.size >= state.expected:
            self._finish(state, out)
        elif state.size > self.max_pes_size:
            self.errors += 1
            state.active = False
            state.parts = []
            state.size = 0

    def _finish(self, state: _Pid, out: list[Frame]) -> None:
        if not state.active:
            return
        data = b"".join(state.parts)
        state.parts = []
        state.size = 0
        state.active = False
        if state.expected:
            if len(data) < state.expected:
                self.errors += 1  # cut short by the next PES start: packets were lost
                return
            data = data[: state.expected]
        if state.es.unsupported:
            return
        try:
            parsed = self._parse_pes(data)
            if parsed is None:
                return
            payload, pts, dts = parsed
            frames = state.es.feed(payload, pts, dts)
        except ValueError:  # TsError, H264Error, AacError: a damaged PES
            self.errors += 1
            return
        if state.es.unsupported:
            self._content_unsupported(state)
            return
        if state.es.track is not None:
            self.tracks[state.es.kind] = state.es.track
        out.extend(frames)

    def _parse_pes(self, data: bytes) -> tuple[bytes, int | None, int | None] | None:
        if len(data) < 9 or data[:3] != b"\x00\x00\x01":
            raise TsError("PES start code missing")
        stream_id = data[3]
        if stream_id in (0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF):
            return None  # no optional header: not audio/video
        if data[6] & 0xC0 != 0x80:
            raise TsError("MPEG-1 system PES header in a transport stream")
        flags = data[7] >> 6
        header_end = 9 + data[8]
        if header_end > len(data):
            raise TsError("PES header truncated")
        pts = dts = None
        if flags & 2:
            if data[8] < 5:
                raise TsError("PES header too short for its PTS")
            pts = self._unwrap(_decode_ts(data, 9))
            if flags == 3:
                if data[8] < 10:
                    raise TsError("PES header too short for its DTS")
                dts = self._unwrap(_decode_ts(data, 14))
        return data[header_end:], pts, dts

    def _unwrap(self, ts: int) -> int:
        """33-bit time stamp -> the nearest value to the previous one, so time keeps growing."""
        last = self._ts_last
        if last is None:
            self._ts_last = ts
            return ts
        delta = (ts - last) & _TS_MASK
        if delta >= 1 << 32:
            delta -= _TS_WRAP
        value = last + delta
        self._ts_last = value
        return value

    # -- PSI -----------------------------------------------------------------------------

    def _psi_packet(
        self, pid: int, payload: bytes, pusi: bool, cc: int, discontinuity: bool, out: list[Frame]
    ) -> None:
        sec = self._sections.setdefault(pid, _Section())
        last = sec.cc
        sec.cc = cc
        if last >= 0 and not discontinuity and cc != (last + 1) & 15:
            if cc == last:
                return
            sec.active = False
            sec.buf.clear()
        if pusi:
            if not payload:
                return
            pointer = payload[0]
            if sec.active:
                sec.buf += payload[1 : 1 + pointer]
                self._sections_done(pid, sec, out)
            sec.buf = bytearray(payload[1 + pointer :])
            sec.active = True
        elif sec.active:
            sec.buf += payload
        else:
            return
        self._sections_done(pid, sec, out)

    def _sections_done(self, pid: int, sec: _Section, out: list[Frame]) -> None:
        buf = sec.buf
        while buf and buf[0] != 0xFF:
            if len(buf) < 3:
                return
            length = ((buf[1] & 0x0F) << 8) | buf[2]
            if len(buf) < 3 + length:
                if length > 1021:
                    break
                return
            section = bytes(buf[: 3 + length])
            del buf[: 3 + length]
            self._section(pid, section, out)
        sec.active = False
        buf.clear()

    def _section(self, pid: int, section: bytes, out: list[Frame]) -> None:
        if self._last_section.get(pid) == section:
            return
        if len(section) < 12 or not section[1] & 0x80 or crc32_mpeg2(section) != 0:
            self.errors += 1
            return
        if not section[5] & 1:
            return  # current_next_indicator 0: not yet applicable
        self._last_section[pid] = section
        body = section[8:-4]
        if pid == PAT_PID and section[0] == 0x00:
            for i in range(0, len(body) - 3, 4):
                program = (body[i] << 8) | body[i + 1]
                if program:
                    pmt_pid = ((body[i + 2] & 0x1F) << 8) | body[i + 3]
                    if pmt_pid != self._pmt_pid:
                        if self._pmt_pid is not None:
                            self._sections.pop(self._pmt_pid, None)
                            self._last_section.pop(self._pmt_pid, None)
                        self._pmt_pid = pmt_pid
                        self.program_number = program
                    return
        elif pid == self._pmt_pid and section[0] == 0x02:
            self._pmt(body, out)

    def _content_unsupported(self, state: _Pid) -> None:
        """A taken stream type turned out to carry what cannot be taken: listed, and when no
        stream is left, the publish is refused."""
        pid = next((p for p, s in self._pids.items() if s is state), None)
        if pid is None:
            return  # its last PES, of a stream the new PMT dropped
        self.unsupported[pid] = (state.stream_type, state.es.unsupported)
        self.announced = self.announced - {state.es.kind}
        if all(s.es.unsupported for s in self._pids.values()):
            raise TsError(_nothing_to_take(self.unsupported))

    def _pmt(self, body: bytes, out: list[Frame]) -> None:
        if len(body) < 4:
            return
        info_len = ((body[2] & 0x0F) << 8) | body[3]
        pos = 4 + info_len
        chosen: dict[int, int] = {}  # pid -> stream_type
        unsupported: dict[int, tuple[int, str]] = {}
        kinds: set[str] = set()
        while pos + 5 <= len(body):
            stream_type = body[pos]
            pid = ((body[pos + 1] & 0x1F) << 8) | body[pos + 2]
            es_len = ((body[pos + 3] & 0x0F) << 8) | body[pos + 4]
            pos += 5 + es_len
            es_class = _ES_TYPES.get(stream_type)
            if es_class is None:
                unsupported[pid] = (stream_type, stream_type_content(stream_type))
                continue
            if es_class.kind in kinds:
                continue
            kinds.add(es_class.kind)
            chosen[pid] = stream_type
        if unsupported and not chosen:
            raise TsError(_nothing_to_take(unsupported))
        self.unsupported = unsupported
        self.announced = frozenset(kinds)
        for pid in list(self._pids):
            if chosen.get(pid) != self._pids[pid].stream_type:
                state = self._pids.pop(pid)
                self._finish(state, out)
                if state.es.track is not None and self.tracks.get(state.es.kind) is state.es.track:
                    del self.tracks[state.es.kind]
        for pid, stream_type in chosen.items():
            if pid not in self._pids:
                self._pids[pid] = _Pid(stream_type, _ES_TYPES[stream_type]())
