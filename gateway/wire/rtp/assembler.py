"""Encoded frames from depayloaded RTP packets: reordered by sequence number, emitted on the
marker packet, gaps given up after a bound (see ``FrameAssembler``). Sans I/O: packets are
duck-typed (``sequence_number``, ``timestamp``, ``marker``, ``payload_type``, ``ssrc``, ``_data``:
the depayloaded payload, as aiortc's ``RtpPacket`` has them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["EncodedFrame", "FrameAssembler", "FrameCallback"]


@dataclass(slots=True)
class EncodedFrame:
    """One depayloaded frame as it came off the wire.

    ``data`` is what aiortc's depayloader produced: Annex B for H.264 (every NAL with a 4-byte
    start code), the raw frame for VP8, the packet for Opus.
    """

    data: bytes
    rtp_timestamp: int  # as sent (32-bit, not unwrapped)
    payload_type: int
    ssrc: int
    arrival: float  # time.monotonic() when its first packet arrived
    discontinuity: bool = False  # frames were lost right before this one
    timestamp: int = 0  # aiortc's JitterFrame field name, kept for duck-typing


FrameCallback = Callable[[EncodedFrame], None]


class FrameAssembler:
    """Drop-in for aiortc's ``JitterBuffer``: reorders by sequence number, emits on completion.

    A video frame is complete when the packets from the expected sequence number up to a marker
    packet (or up to a packet of a later timestamp) are all present. Audio packets are frames on
    their own and are emitted at once (late ones are dropped). If a gap does not fill (NACK/RTX
    had their chance) within ``max_wait`` seconds or ``max_gap`` packets, the missing packets are
    given up: the next frame is flagged ``discontinuity`` and aiortc sends a PLI.
    """

    def __init__(self, is_video: bool, deliver: FrameCallback, *, max_gap: int = 1024,
                 max_wait: float = 0.25) -> None:
        self.is_video = is_video
        self.capacity = 1024  # read by nobody in aiortc 1.16; kept for JitterBuffer parity
        self._deliver = deliver
        self._max_gap = max_gap
        self._max_wait = max_wait
        self._packets: dict[int, tuple[Any, float]] = {}
        self._next: int | None = None
        self._gap_since = 0.0
        self._discontinuity = True  # the first packet seen may be the middle of a frame
        self.ssrc = 0
        self.frames = 0
        self.lost = 0

    def add(self, packet: Any) -> tuple[bool, None]:
        """aiortc's entry point; returns (send a PLI, no frame for aiortc's decoder)."""
        now = time.monotonic()
        seq: int = packet.sequence_number
        self.ssrc = packet.ssrc
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000:
            return False, None  # older than what was already emitted: duplicate or too late
        pli = False
        if ahead >= 2 * self._max_gap:  # a jump (sender restart): start over
            self._packets.clear()
            self._next = seq
            self._discontinuity = True
            pli = self.is_video
        self._packets[seq] = (packet, now)
        if not self.is_video:
            self._emit_audio()
            return False, None
        self._emit_video()
        if self._packets and self._stalled(now):
            self._skip_gap()
            self._emit_video()
            pli = True
        return pli, None

    # -- internals ---------------------------------------------------------------------------

    def _emit_audio(self) -> None:
        assert self._next is not None
        while self._packets:
            seq = self._next if self._next in self._packets else min(
                self._packets, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]
            if seq != self._next:
                self.lost += (seq - self._next) & 0xFFFF
            packet, arrival = self._packets.pop(seq)
            self._next = (seq + 1) & 0xFFFF
            self._out([packet], arrival)

    def _emit_video(self) -> None:
        while True:
            assert self._next is not None
            first = self._packets.get(self._next)
            if first is None:
                return
            ts = first[0].timestamp
            run = [first[0]]
            seq = self._next
            while not run[-1].marker:
                nxt = self._packets.get((seq + 1) & 0xFFFF)
                if nxt is None:
                    return  # incomplete: wait for the rest
                if nxt[0].timestamp != ts:
                    break  # marker lost but the next frame began: this one is complete
                seq = (seq + 1) & 0xFFFF
                run.append(nxt[0])
            for i in range(len(run)):
                del self._packets[(self._next + i) & 0xFFFF]
            self._next = (self._next + len(run)) & 0xFFFF
            self._gap_since = 0.0
            self._out(run, first[1])

    def _stalled(self, now: float) -> bool:
        """A packet is missing and has been for too long (a frame still arriving is not)."""
        assert self._next is not None
        if self._gap_since == 0.0:
            self._gap_since = now
        if len(self._packets) < 32 and now - self._gap_since < self._max_wait:
            return False
        newest = max((s - self._next) & 0xFFFF for s in self._packets)
        hole = len(self._packets) < newest + 1
        return hole and (newest >= self._max_gap or now - self._gap_since >= self._max_wait)

    def _skip_gap(self) -> None:
        """Give up the missing packets: resume at the first buffered packet of a new frame."""
        assert self._next is not None
        order = sorted(self._packets, key=lambda s: (s - self._next) & 0xFFFF)  # type: ignore[operator]
        start = order[0]
        # packets right after the gap may be the tail of a frame whose head is lost: skip them
        head_ts = self._packets[start][0].timestamp
        for s in order:
            if self._packets[s][0].timestamp != head_ts:
                start = s
                break
        else:
            start = order[0]
        skipped = (start - self._next) & 0xFFFF
        for s in order:
            if (s - self._next) & 0xFFFF < skipped:
                del self._packets[s]
        self.lost += skipped
        self._next = start
        self._gap_since = 0.0
        self._discontinuity = True
        log.debug("gave up %d packets before seq %d", skipped, start)

    def _out(self, packets: list[Any], arrival: float) -> None:
        first = packets[0]
        data = b"".join(p._data for p in packets)  # depayloaded by aiortc
        frame = EncodedFrame(data, first.timestamp, first.payload_type, first.ssrc, arrival,
                             self._discontinuity)
        self._discontinuity = False
        self.frames += 1
        try:
            self._deliver(frame)
        except Exception:  # a broken consumer must not kill aiortc's receive loop
            log.exception("encoded frame consumer failed")
