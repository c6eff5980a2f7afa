"""MPEG-TS muxer: frames serialized once into 188-byte packets shared by every viewer, shaped
for jsmpeg (MPEG-1 video + MP2 over WebSocket) and any other TS player.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ...codecs import aac, h264
from ...media import Frame, Track
from .packets import (
    AUDIO_PID,
    CLOCK,
    NULL_PID,
    PAT_PID,
    PMT_PID,
    STREAM_TYPE_AAC,
    STREAM_TYPE_H264,
    STREAM_TYPE_MPEG1_AUDIO,
    STREAM_TYPE_MPEG1_VIDEO,
    STREAM_TYPE_MPEG2_AUDIO,
    SYNC,
    TS_MASK,
    VIDEO_PID,
    Buf,
    TsError,
    crc32_mpeg2,
    encode_ts,
    to_90k,
)

__all__ = ["TsMuxer"]

_STREAM_ID_VIDEO: Final = 0xE0
_STREAM_ID_AUDIO: Final = 0xC0
_AUD: Final = b"\x00\x00\x00\x01\x09\xf0"  # access unit delimiter, primary_pic_type "any"

_MUX_STREAM_TYPES: Final = {
    "mpeg1video": STREAM_TYPE_MPEG1_VIDEO,
    "h264": STREAM_TYPE_H264,
    "mp2": STREAM_TYPE_MPEG1_AUDIO,
    "aac": STREAM_TYPE_AAC,
}


# --- packet building ------------------------------------------------------------------------


def _encode_pcr(base: int) -> bytes:
    base &= TS_MASK
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


def _af_packet(pid: int, pusi: bool, cc: int, af_body: bytes, payload: Buf) -> bytes:
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

    Speaks ``gateway.media`` only: H.264 is converted from AVCC to Annex B (with an access unit
    delimiter) and AAC from raw frames to ADTS here, at the edge.

    Output timestamps are the input's plus ``offset`` (default 1.4 s, as FFmpeg does) so that
    reordered streams never go below zero; the PCR runs ``pcr_delay`` behind the DTS of the PES
    that carries it. In an audio-only stream PAT/PMT are repeated before an audio frame at most
    every ``psi_interval`` seconds.

    **Shared output.** ``mux(frame)`` is called once per frame and the same bytes go to every
    viewer, whichever frame it joined at. So:

    * every video keyframe's bytes start with PAT + PMT (in an audio-only stream, the bytes of an
      audio frame every ``psi_interval``), and ``header()`` (PAT + PMT, pure) can go first to
      anyone;
    * continuity counters run per PID over the whole stream, so a viewer that joined late or
      skipped ahead to a keyframe sees a counter jump. To make that legal, the PAT/PMT packets,
      the first packet of each keyframe and the first audio packet after a keyframe (or after
      PAT/PMT in an audio-only stream) carry ``discontinuity_indicator``. FFmpeg then reports no
      continuity error; jsmpeg ignores counters. On the PCR PID that flag formally announces a
      time-base discontinuity, which is harmless here because the PCR carried in the same packet
      continues the old time base.

    **jsmpeg specifics** (it ignores PAT/PMT and finds streams by PES ``stream_id``): video uses
    stream_id 0xE0 and audio 0xC0; a PES's header always sits whole in its first TS packet; only
    the last TS packet of a PES has an adaptation field besides the first (jsmpeg takes an
    adaptation field in a continuation packet as "frame complete", which lets it show a frame at
    once rather than when the next one starts); PES_packet_length is set whenever it fits 16 bits.
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
        pat_body = bytes((0, 1, 0xE0 | (PMT_PID >> 8), PMT_PID & 0xFF))
        pat = _psi_section(0x00, 1, self._version, pat_body)
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
        out = _psi_packet(PAT_PID, self._pat_cc, pat, True)
        out += _psi_packet(PMT_PID, self._pmt_cc, pmt, True)
        self._pat_cc = (self._pat_cc + 1) & 15
        self._pmt_cc = (self._pmt_cc + 1) & 15
        return out

    def mux(self, frame: Frame) -> bytes:
        """Packets for one frame, to be shared by all viewers (see the class docstring)."""
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
            self._psi_due
            or self._last_psi is None
            or abs(dts - self._last_psi) >= self._psi_interval
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

    def _payload(self, stream: _MuxStream, frame: Frame) -> list[Buf]:
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
                    adts = aac.build_adts_header(
                        aac.AOT_AAC_LC, track.sample_rate, track.channels, len(data)
                    )
            except ValueError as e:
                raise TsError(f"cannot frame AAC as ADTS: {e}") from e
            return [adts, data]
        return [data]

    def _packetize(
        self,
        stream: _MuxStream,
        payload: list[Buf],
        pts: int,
        dts: int,
        *,
        discontinuity: bool,
        random_access: bool,
        pcr: int | None,
    ) -> bytes:
        size = sum(len(p) for p in payload)
        if pts != dts:
            opt = b"\x84\xc0\x0a" + encode_ts(3, pts) + encode_ts(1, dts)
        else:
            opt = b"\x84\x80\x05" + encode_ts(2, pts)
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
            parts: list[Buf] = [_af_packet(pid, True, cc, af_body, pes[:take])]
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
