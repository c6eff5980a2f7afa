"""Streaming MPEG-TS demuxer for the ``h5`` ingest (TS over HTTP POST / WebSocket): network
bytes in any chunking, ``Frame``\\ s out, with bounded buffers and damage counted, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...media import Frame, Track
from .es import ES_TYPES, SUPPORTED, ElementaryStream
from .packets import (
    PACKET_SIZE,
    PAT_PID,
    SYNC,
    TS_MASK,
    TS_WRAP,
    TsError,
    crc32_mpeg2,
    decode_ts,
)
from .sniff import HEAD_SIZE, guess_not_ts, stream_type_content

__all__ = ["TsDemuxer"]


def _nothing_to_take(unsupported: dict[int, tuple[int, str]]) -> str:
    found = ", ".join(f"{what} (PID {pid})" for pid, (_, what) in unsupported.items())
    return f"no stream the gateway can take: the TS carries {found}; it takes {SUPPORTED}"


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
    es: ElementaryStream
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

    It resyncs on 0x47, reassembles PES with bounded buffers, checks continuity, CRCs PSI, and
    turns elementary streams into ``Frame``\\ s (timestamps in 1/90000 s, unwrapped past 33
    bits), speaking ``gateway.media`` only: H.264 becomes AVCC and ADTS raw AAC frames. Garbage
    in which no sync can be found raises ``TsError``, as does a TS with no stream that can be
    taken; everything else that is malformed is dropped and counted in ``errors``.
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
        if self._head is not None and len(self._head) < HEAD_SIZE:
            self._head += bytes(data[: HEAD_SIZE - len(self._head)])
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
            pts = self._unwrap(decode_ts(data, 9))
            if flags == 3:
                if data[8] < 10:
                    raise TsError("PES header too short for its DTS")
                dts = self._unwrap(decode_ts(data, 14))
        return data[header_end:], pts, dts

    def _unwrap(self, ts: int) -> int:
        """33-bit time stamp -> the nearest value to the previous one, so time keeps growing."""
        last = self._ts_last
        if last is None:
            self._ts_last = ts
            return ts
        delta = (ts - last) & TS_MASK
        if delta >= 1 << 32:
            delta -= TS_WRAP
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
            es_class = ES_TYPES.get(stream_type)
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
                self._pids[pid] = _Pid(stream_type, ES_TYPES[stream_type]())
